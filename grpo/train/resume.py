"""A resumed run keeps its recipe. The checkpoint holds the config it was trained with; the new recipe is compared
key by key. Changes that keep the run exact from here on (how long, how it logs, the learning rate) are applied
and written to `recipe.changes.jsonl`; changes that would make the resumed run a different run than the one it
claims to continue (seed, data, group size, rewards, model, the objective) are an error unless the recipe sets
checkpoint.allow_changes=true. Either way recipe.resolved.json then says what the run really uses."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from grpo import io
from grpo.config import RecipeConfig, RewardConfig
from grpo.errors import UserError
from grpo.recipe import to_dict

CHANGES_FILE = "recipe.changes.jsonl"
# Keys (or key prefixes ending in ".") a resume may change without breaking exactness.
SAFE = ("name", "output_dir", "train.steps", "train.lr", "logging.", "checkpoint.every", "checkpoint.keep_last",
        "checkpoint.resume", "checkpoint.allow_changes", "eval.", "distributed.timeout_s", "guard.",
        "sampler.max_logprob_gap", "sampler.worker.")
# Per-reward settings that only decide when a failure is reported or stops the run, not any score of a
# reward that works.
REWARD_SAFE = ("timeout_s", "max_error_fraction", "max_error_steps")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "args":
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _rewards(specs: list[dict]) -> list[dict]:
    """What of each reward decides scores, filled with today's defaults (older checkpoints lack newer keys)."""
    defaults = to_dict(RewardConfig())
    return [{k: v for k, v in {**defaults, **spec}.items() if k not in REWARD_SAFE} for spec in specs]


def recipe_changes(saved: dict[str, Any], new: RecipeConfig) -> list[dict[str, Any]]:
    """[{key, old, new, safe}] for every setting that differs between the checkpoint's recipe and this one."""
    defaults = flatten(to_dict(RecipeConfig()))
    old_flat = flatten({k: v for k, v in saved.items() if k != "rewards"})
    new_flat = flatten({k: v for k, v in to_dict(new).items() if k != "rewards"})
    changes = []
    for key in sorted(new_flat):
        before = old_flat.get(key, defaults.get(key))  # a key newer than the checkpoint had its default then
        if before != new_flat[key]:
            safe = any(key == s or (s.endswith(".") and key.startswith(s)) for s in SAFE)
            changes.append({"key": key, "old": before, "new": new_flat[key], "safe": safe})
    old_rewards, new_rewards = _rewards(saved.get("rewards", [])), _rewards(to_dict(new)["rewards"])
    if old_rewards != new_rewards:
        changes.append({"key": "rewards", "old": old_rewards, "new": new_rewards, "safe": False})
    return changes


def check_resume(saved: dict[str, Any], new: RecipeConfig, data_changed: str | None, checkpoint: Path,
                 output_dir: Path, write: bool) -> list[dict[str, Any]]:
    """Raise on unsafe changes (unless allowed); otherwise note them and return them. `data_changed`: a
    description when the data file's rows differ from those the checkpoint was trained on."""
    changes = recipe_changes(saved, new)
    if data_changed:
        changes.append({"key": "data (rows)", "old": "as trained", "new": data_changed, "safe": False})
    unsafe = [c for c in changes if not c["safe"]]
    if unsafe and not new.checkpoint.allow_changes:
        listing = "\n".join(f"  - {c['key']}: {_short(c['old'])} -> {_short(c['new'])}" for c in unsafe)
        raise UserError(
            f"resuming from {checkpoint}: the recipe differs from the one this run was trained with, in settings "
            f"that would make the rest of the run silently different from the run it continues:\n{listing}\n"
            f"Undo the change(s) to resume exactly; or choose another output_dir to start a new run; or set "
            f"checkpoint.allow_changes=true to continue with them (they are recorded in {CHANGES_FILE}).")
    for c in changes if write else []:  # rank 0 speaks for the run
        if c["key"] == "train.lr":
            print(f"note: train.lr {c['old']} -> {c['new']}: the learning-rate schedule continues from step "
                  f"{checkpoint.name.removeprefix('step-').lstrip('0') or 0} with the new base rate")
        else:
            print(f"note: resumed with {c['key']}: {_short(c['old'])} -> {_short(c['new'])}"
                  f"{'' if c['safe'] else ' (allowed by checkpoint.allow_changes; not an exact continuation)'}")
    if changes and write:
        path = output_dir / CHANGES_FILE
        lines = path.read_text().splitlines() if path.is_file() else []
        lines.append(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "from": str(checkpoint),
                                 "changes": changes}, default=str))
        io.write_lines(path, lines)
    return changes


def rows_fingerprint(rows: list[dict]) -> str:
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, sort_keys=True, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 120 else text[:117] + "..."
