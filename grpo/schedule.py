"""The learning-rate schedule, for `grpo train` and `grpo sft` alike: a factor on the base lr per optimizer step."""

from __future__ import annotations

import math


def lr_factor(done: int, total: int, warmup: int, kind: str, decay_from_start: bool = False) -> float:
    """`done` optimizer steps taken so far, of `total`. A linear warm-up over `warmup` steps, then `kind`:
    constant, linear or cosine decay to zero at the last step.

    decay_from_start=False (RL): the decay runs over the steps after the warm-up. True (SFT): the decay runs
    over all steps and the warm-up ramp multiplies it, the shape the shipped demo model was trained with."""
    ramp = min(1.0, (done + 1) / warmup) if warmup else 1.0
    if kind == "constant":
        return ramp
    if decay_from_start:
        angle = math.pi * done / max(total, 1)
        progress = done / max(total, 1)
    elif done < warmup:
        return ramp
    else:
        progress = min(1.0, (done - warmup) / max(1, total - warmup))
        angle = math.pi * progress
    if kind == "linear":
        return ramp * (1.0 - progress)
    return ramp * 0.5 * (1.0 + math.cos(angle))
