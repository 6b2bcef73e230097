"""Where a run keeps its files: the layout of OUTPUT_DIR/checkpoints/ that training writes and evaluation, the
report and resume read. Below both train and eval, so neither imports the other to find a checkpoint."""

from __future__ import annotations

from pathlib import Path

STATE_FILE = "trainer_state.pt"  # a checkpoint is complete when this is in it (written last)


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return output_dir / "checkpoints" / f"step-{step:06d}"


def latest_checkpoint(output_dir: Path) -> Path | None:
    pointer = output_dir / "checkpoints" / "latest"
    if pointer.is_file():
        candidate = output_dir / "checkpoints" / pointer.read_text().strip()
        if (candidate / STATE_FILE).is_file():
            return candidate
    complete = sorted(p for p in (output_dir / "checkpoints").glob("step-??????") if (p / STATE_FILE).is_file())
    return complete[-1] if complete else None
