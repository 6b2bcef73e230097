"""Where a run keeps its files: the layout of OUTPUT_DIR/checkpoints/ that training writes and evaluation, the
report and resume read. Below both train and eval, so neither imports the other to find a checkpoint."""

from __future__ import annotations

import time
from pathlib import Path

STATE_FILE = "trainer_state.pt"  # a checkpoint is complete when this is in it (written last)
MANIFEST_FILE = "manifest.json"  # every file of a checkpoint with its size and checksum (grpo/train/checkpoint.py)
ATTEMPTS = "attempts"  # earlier runs in this output_dir that could not be resumed, each in a folder of its own
LOCK_FILE = ".lock"  # rank 0 holds an exclusive lock on it for the whole run (grpo/lock.py)
KEEP_IN_PLACE = (LOCK_FILE, ATTEMPTS)  # the lock is held by the run that sets the others aside


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


def set_aside(output_dir: Path) -> Path:
    """Move everything an earlier run wrote in output_dir into output_dir/attempts/<UTC time>/ (renames on one
    file system: nothing is copied or deleted) and return that folder."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    target = output_dir / ATTEMPTS / stamp
    n = 1
    while target.exists():
        n += 1
        target = output_dir / ATTEMPTS / f"{stamp}-{n}"
    target.mkdir(parents=True)
    for entry in sorted(output_dir.iterdir()):
        if entry.name not in KEEP_IN_PLACE:
            entry.rename(target / entry.name)
    return target
