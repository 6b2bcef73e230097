"""Checkpoints: Hugging Face weights that transformers loads as they are, plus the trainer state (optimizer,
scheduler, RNG, data position) for an exact resume. Every write goes to a temporary directory that is renamed
into place only when complete, so a crash never leaves a half-written checkpoint behind."""

from __future__ import annotations

import json
import random
import shutil
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grpo.errors import UserError
from grpo.io import atomic_dir, temp_path, write_text
from grpo.modeling import save_merged
from grpo.rundir import MANIFEST_FILE, STATE_FILE, checkpoint_dir, latest_checkpoint
from grpo.train.disk import SLACK, DiskFull, check_free_space, free_bytes, is_disk_full, mb

# The optimizer's moments, in a file of their own: only rank 0 reads it on resume (and broadcasts), while every
# rank reads the small trainer state.
OPTIMIZER_FILE = "optimizer.pt"


def save_checkpoint(output_dir: Path, step: int, policy, tokenizer, trainer_state: dict[str, Any],
                    keep_last: int, weights: dict[str, torch.Tensor] | None = None) -> Path:
    """`weights`: the whole state dict when the live policy is sharded (gathered by every rank beforehand);
    None saves the policy's own weights."""
    final = checkpoint_dir(output_dir, step)
    previous = latest_checkpoint(output_dir)
    hint = (f"rerun the same command: it resumes from {previous}" if previous is not None else
            "rerun the same command")
    needed = int(estimate_bytes(policy, weights, trainer_state) * SLACK) + 2**20
    check_free_space(final.parent, needed, f"checkpoint {final.name}", hint)  # before writing, not halfway
    pointer = output_dir / "checkpoints" / "latest"
    try:
        # replace=True: a re-run of the same step replaces the old copy, but only once the new one is whole.
        # On any error atomic_dir removes its temporary folder, so a full disk leaves no half checkpoint.
        with atomic_dir(final, replace=True) as tmp:
            if hasattr(policy, "peft_config"):
                policy.save_pretrained(tmp / "adapter")  # exact trainable state for resume
                save_merged(policy, tmp)  # a merged copy that transformers loads as it is
            else:
                policy.save_pretrained(tmp, **({"state_dict": weights} if weights is not None else {}))
            tokenizer.save_pretrained(tmp)
            state = dict(trainer_state, step=step, rng=rng_state())
            torch.save(state.pop("optimizer"), tmp / OPTIMIZER_FILE)
            torch.save(state, tmp / STATE_FILE)
            write_manifest(tmp)  # last: the sizes and checksums of everything above
        write_text(pointer, final.name)
    except Exception as exc:
        temp_path(pointer).unlink(missing_ok=True)
        if is_disk_full(exc):
            raise DiskFull(f"checkpoint {final.name}: the disk filled while writing it to {final.parent} (needed "
                           f"about {mb(needed)}, {mb(free_bytes(final.parent))} free now; the partial copy was "
                           f"removed). Free some space, then {hint}") from exc
        raise
    _prune(output_dir, keep_last)
    return final


def estimate_bytes(policy, weights: dict[str, torch.Tensor] | None, trainer_state: dict[str, Any]) -> int:
    """What a checkpoint will take: the weights (twice with LoRA: adapter and merged copy are small and whole),
    plus every tensor of the trainer state (the optimizer's moments dominate)."""
    tensors = weights if weights is not None else policy.state_dict()
    total = sum(t.numel() * t.element_size() for t in tensors.values() if isinstance(t, torch.Tensor))
    return total + _tensor_bytes(trainer_state)


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def write_manifest(folder: Path) -> None:
    """Every file's size and CRC-32 (zlib's, about 1 GB/s on one core: it keeps up with the disk at 30 GB), so that
    "complete" is checked on resume, not assumed."""
    files = {f.relative_to(folder).as_posix(): {"bytes": f.stat().st_size, "crc32": _crc32(f)}
             for f in sorted(folder.rglob("*")) if f.is_file() and f.name != MANIFEST_FILE}
    (folder / MANIFEST_FILE).write_text(json.dumps({"files": files}, indent=1))


def damage(folder: Path, checksums: bool = True) -> str | None:
    """Why `folder` is not a complete checkpoint, or None when it is: every file its manifest lists is there with
    its size and (with `checksums`) its checksum; a checkpoint written before manifests is trusted when its state
    file is there."""
    if not (folder / STATE_FILE).is_file():
        return f"it has no {STATE_FILE}"
    manifest = folder / MANIFEST_FILE
    if not manifest.is_file():
        return None
    try:
        files = {str(name): (int(v["bytes"]), int(v["crc32"]))
                 for name, v in json.loads(manifest.read_text())["files"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"its {MANIFEST_FILE} is unreadable"
    for name, (size, _) in files.items():  # sizes first: a truncated file is found without reading anything
        found = (folder / name).stat().st_size if (folder / name).is_file() else None
        if found is None:
            return f"{name} is missing"
        if found != size:
            return f"{name} holds {found:,} bytes where {size:,} were written (truncated or overwritten)"
    for name, (_, crc) in files.items() if checksums else ():
        if _crc32(folder / name) != crc:
            return f"{name} does not match the checksum written with it (its bytes changed)"
    return None


def newest_complete(output_dir: Path, checksums: bool = True) -> tuple[Path | None, dict[str, Any] | None, list[str]]:
    """The newest checkpoint that is complete and whose trainer state loads, that state, and one line for each
    newer one passed over (damaged, or unreadable), newest first. `checksums`: read every byte to check them
    (rank 0 does; the other ranks check sizes and take rank 0's choice, see grpo.train.trainer.resume_point)."""
    folder = output_dir / "checkpoints"
    candidates = sorted(folder.glob("step-??????"), reverse=True) if folder.is_dir() else []
    skipped: list[str] = []
    for candidate in candidates:
        why = damage(candidate, checksums)
        if why is None:
            try:
                return candidate, _load_state(candidate), skipped
            except Exception as exc:  # noqa: BLE001 - a garbled pickle raises anything; it means "not usable"
                why = f"its {STATE_FILE} cannot be read ({type(exc).__name__}: {str(exc)[:120]})"
        skipped.append(f"{candidate}: {why}")
    return None, None, skipped


def load_trainer_state(path: Path, checksums: bool = True) -> dict[str, Any]:
    """The trainer state without the optimizer's (see load_optimizer_state), from a checkpoint the user named:
    a damaged one is refused with what is wrong and where a complete one is."""
    why = damage(path, checksums) if path.is_dir() else "it is not a directory"
    if why is None:
        try:
            return _load_state(path)
        except Exception as exc:  # noqa: BLE001 - a garbled pickle raises anything
            why = f"its {STATE_FILE} cannot be read ({type(exc).__name__}: {str(exc)[:120]})"
    complete, _, _ = newest_complete(path.parent.parent) if path.parent.name == "checkpoints" else (None, None, [])
    other = f"; {complete} is complete: resume from it with checkpoint.resume={complete}" if complete else ""
    raise UserError(f"checkpoint.resume: {path} cannot be resumed: {why}{other}.")


def _load_state(path: Path) -> dict[str, Any]:
    return torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)


def _crc32(path: Path) -> int:
    crc = 0
    with path.open("rb") as f:
        for block in iter(lambda: f.read(16 << 20), b""):
            crc = zlib.crc32(block, crc)
    return crc


def load_optimizer_state(path: Path, trainer_state: dict[str, Any]) -> dict[str, Any]:
    """The optimizer state saved beside the trainer state (checkpoints written before the split hold it inside)."""
    if "optimizer" in trainer_state:
        return trainer_state["optimizer"]
    optimizer_file = path / OPTIMIZER_FILE
    if not optimizer_file.is_file():
        raise UserError(f"checkpoint.resume: {path} has no {OPTIMIZER_FILE}, so its optimizer state is lost and the "
                        f"run cannot resume exactly. Resume from another checkpoint (checkpoint.resume=DIR).")
    return torch.load(optimizer_file, map_location="cpu", weights_only=False)


def restore_policy_weights(policy, path: Path) -> None:
    """Load a checkpoint's trainable weights into an already built policy."""
    if hasattr(policy, "peft_config"):
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(policy, load_file(str(path / "adapter" / "adapter_model.safetensors")))
        return
    from transformers import AutoModelForCausalLM

    try:
        saved = AutoModelForCausalLM.from_pretrained(path, dtype=next(policy.parameters()).dtype)
        policy.load_state_dict(saved.state_dict())
    except (RuntimeError, ValueError, OSError) as exc:  # another architecture's weights, or unreadable ones
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise UserError(f"checkpoint {path}: its weights do not fit the model being trained ({first}). Resume with "
                        f"the model.path the checkpoint was trained from, or start a new output_dir.") from None


def restore_rng(state: dict[str, Any], rank: int = 0, world_size: int = 1) -> None:
    """Each rank's own generators when the run resumes on as many ranks as it was saved on; otherwise every
    rank takes rank 0's (sampling seeds come from the step and the rank, not from these)."""
    per_rank = state.get("rng_per_rank")
    rng = per_rank[rank] if per_rank is not None and len(per_rank) == world_size else state["rng"]
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.random.set_rng_state(rng["torch"])
    if torch.cuda.is_available() and rng.get("cuda") is not None:
        torch.cuda.set_rng_state_all(rng["cuda"])


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.random.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _prune(output_dir: Path, keep_last: int) -> None:
    complete = sorted(p for p in (output_dir / "checkpoints").glob("step-??????") if (p / STATE_FILE).is_file())
    for old in complete[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


