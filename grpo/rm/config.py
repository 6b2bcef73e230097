"""The `grpo rm` recipe: YAML over these dataclasses, read by grpo.recipe's reader (unknown keys with a "did you
mean", wrong types, bad choices, all reported together), then checked by rm_rules. The model and checkpoint
sections are grpo train's own (grpo.config), so `model.dtype` or `checkpoint.resume` mean one thing everywhere.

    name: rm-tiny
    output_dir: runs/rm-tiny
    model: {path: demo:tiny-arith, dtype: float32}
    data: {path: prefs.jsonl}                      # columns prompt, chosen, rejected
    train: {steps: 200, batch_size: 16, lr: 1.0e-4, eval_every: 25}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from grpo.config import CheckpointConfig, ModelConfig
from grpo.errors import ConfigError


@dataclass
class RmDataConfig:
    path: str = ""  # local .jsonl/.json/.parquet/.csv file, or a `datasets` hub name
    split: str = "train"  # hub split (ignored for local files)
    subset: str | None = None  # hub configuration name
    limit: int | None = None  # use only the first N rows
    prompt_column: str = "prompt"
    chosen_column: str = "chosen"  # the preferred completion of the prompt
    rejected_column: str = "rejected"
    # Held-out pairs: a file (or hub name, split eval_split) of their own, or else this share of data.path's rows
    # (a fixed draw, the same for every seed, so runs with different seeds are measured on the same pairs).
    eval_path: str | None = None
    eval_split: str = "test"
    eval_fraction: float = 0.1
    # A pair whose longer text passes this many tokens is skipped (and counted), never truncated: a cut text
    # would lose the very part that tells chosen from rejected.
    max_tokens: int = 512
    shuffle: bool = True
    on_bad_row: Literal["skip", "error"] = "skip"  # rows with an empty or non-text column, or chosen == rejected


@dataclass
class RmTrainConfig:
    steps: int = 200  # optimizer steps
    batch_size: int = 16  # pairs per step
    micro_batch_size: int = 16  # pairs per forward/backward (two rows each); the loss is exactly the batch's
    lr: float = 1.0e-5
    lr_schedule: Literal["constant", "linear", "cosine"] = "linear"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    max_grad_norm: float = 1.0  # 0: no clipping
    eval_every: int = 50  # held-out pairwise accuracy every N steps (and always after the last)
    eval_batch_size: int = 32  # pairs per forward when evaluating


@dataclass
class RmRecipe:
    name: str = "rm"
    output_dir: str = "runs/rm"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: RmDataConfig = field(default_factory=RmDataConfig)
    train: RmTrainConfig = field(default_factory=RmTrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


def load_rm_recipe(path: str | Path | None, overrides: list[str] = ()) -> RmRecipe:
    """Read a recipe (or start from defaults when path is None), apply `a.b=value` overrides, check everything;
    every problem is raised together as one ConfigError (a UserError: exit 2)."""
    # grpo.recipe's reader, pointed at this schema: one reader for every recipe.
    from grpo.recipe import read_structure

    cfg, problems = read_structure(path, overrides, schema=RmRecipe)
    problems += rm_rules(cfg)
    if problems:
        raise ConfigError(problems, str(path) if path else "defaults")
    return cfg


def rm_rules(cfg: RmRecipe) -> list[str]:
    """Value rules and combinations, cheap: nothing is loaded."""
    p: list[str] = []
    t, d = cfg.train, cfg.data
    for where, value in [("train.steps", t.steps), ("train.batch_size", t.batch_size),
                         ("train.micro_batch_size", t.micro_batch_size), ("train.lr", t.lr),
                         ("train.eval_every", t.eval_every), ("train.eval_batch_size", t.eval_batch_size),
                         ("data.max_tokens", d.max_tokens), ("data.limit", d.limit)]:
        if value is not None and value <= 0:
            p.append(f"{where}: must be > 0, got {value}")
    if t.warmup_steps < 0 or t.weight_decay < 0 or t.max_grad_norm < 0:
        p.append(f"train.warmup_steps, train.weight_decay, train.max_grad_norm: must be >= 0, got "
                 f"{t.warmup_steps}, {t.weight_decay}, {t.max_grad_norm}")
    if len(t.adam_betas) != 2 or not all(0 <= b < 1 for b in t.adam_betas):
        p.append(f"train.adam_betas: two numbers in [0, 1), got {t.adam_betas}")
    if not d.path:
        p.append("data.path: required; give a file of preference pairs (columns prompt, chosen, rejected) or a "
                 "`datasets` hub name")
    if d.eval_path is None and not 0 < d.eval_fraction < 1:
        p.append(f"data.eval_fraction: must be in (0, 1) when data.eval_path is not set, got {d.eval_fraction}")
    columns = [d.prompt_column, d.chosen_column, d.rejected_column]
    if len(set(columns)) != 3:
        p.append(f"data.prompt_column, data.chosen_column, data.rejected_column: must be three different columns, "
                 f"got {', '.join(columns)}")
    if cfg.model.lora.enabled:
        p.append("model.lora.enabled: grpo rm trains every weight; LoRA is not supported here. Set "
                 "model.lora.enabled=false.")
    if cfg.checkpoint.keep_last < 1:
        p.append(f"checkpoint.keep_last: must be >= 1, got {cfg.checkpoint.keep_last}")
    if cfg.checkpoint.every < 0:
        p.append(f"checkpoint.every: steps between checkpoints, or 0 for the end only; got {cfg.checkpoint.every}")
    return p
