"""Checkpoints of a `grpo rm` run, laid out like grpo train's (grpo.rundir: OUTPUT_DIR/checkpoints/step-NNNNNN and
a `latest` pointer): the model in Hugging Face format (it loads with AutoModelForSequenceClassification as it
is), the tokenizer, the optimizer, the LR schedule, the data position, the torch RNG and the recipe. Each is
written to a temporary directory renamed into place only when whole (grpo.io.atomic_dir), and the trainer state
is written last, so a checkpoint with a state file is complete."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import torch

from grpo.errors import UserError
from grpo.io import atomic_dir, write_text
from grpo.rundir import STATE_FILE, checkpoint_dir, latest_checkpoint

OPTIMIZER_FILE = "optimizer.pt"
# Recipe keys a resumed run may change without losing exactness: how long it runs and how often it reports.
SAFE_CHANGES = {"name", "output_dir", "train.steps", "train.eval_every", "train.eval_batch_size", "checkpoint.every",
                "checkpoint.keep_last", "checkpoint.resume", "checkpoint.allow_changes", "device"}


def save_checkpoint(output_dir: Path, step: int, model, tokenizer, optimizer, scheduler, stream_state: dict,
                    recipe: dict, keep_last: int) -> Path:
    final = checkpoint_dir(output_dir, step)
    with atomic_dir(final, replace=True) as tmp:  # replace: a re-run of the same step, swapped in only when whole
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        torch.save({"step": step, "scheduler": scheduler.state_dict(), "data": stream_state, "recipe": recipe,
                    "torch_rng": torch.random.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                   tmp / STATE_FILE)  # last: its presence marks the checkpoint complete
    write_text(output_dir / "checkpoints" / "latest", final.name)
    complete = sorted(p for p in (output_dir / "checkpoints").glob("step-??????") if (p / STATE_FILE).is_file())
    for old in complete[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def resume_path(output_dir: Path, resume: str) -> Path | None:
    """checkpoint.resume resolved: auto (the newest complete checkpoint in output_dir, if any), never, or a
    checkpoint directory (which must be complete)."""
    if resume == "never":
        return None
    if resume == "auto":
        return latest_checkpoint(output_dir)
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise UserError(f"checkpoint.resume: {resume} is not a complete checkpoint (no {STATE_FILE} in it). Give a "
                        f"directory OUTPUT_DIR/checkpoints/step-NNNNNN of a grpo rm run, or auto, or never.")
    return path


def load_state(path: Path) -> dict[str, Any]:
    return torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)


def load_optimizer(path: Path) -> dict[str, Any]:
    return torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=False)


def restore_rng(state: dict[str, Any]) -> None:
    torch.random.set_rng_state(state["torch_rng"])
    if torch.cuda.is_available() and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state_all(state["cuda_rng"])


def changed_keys(saved: dict, now: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two recipe dicts (dataclasses.asdict of RmRecipe)."""
    out = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def check_changes(path: Path, saved: dict, recipe: Any) -> None:
    """A resumed run continues exactly only under the recipe it was saved with (up to SAFE_CHANGES)."""
    now = dataclasses.asdict(recipe)
    unsafe = [k for k in changed_keys(saved, now) if k not in SAFE_CHANGES]
    if unsafe and not recipe.checkpoint.allow_changes:
        shown = ", ".join(f"{k} ({_get(saved, k)!r} -> {_get(now, k)!r})" for k in unsafe[:6])
        raise UserError(f"checkpoint.resume: {path} was saved under another recipe: {shown}. Resuming would not "
                        f"continue that run exactly. Restore those values, start a new output_dir (or "
                        f"checkpoint.resume=never), or set checkpoint.allow_changes=true to resume anyway.")


def _get(d: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d
