"""Group-relative advantages: pure functions of the rewards of each prompt's G completions.

Each takes rewards [B*G] laid out group by group (the G completions of prompt 0, then of prompt 1, ...) and
returns one advantage per completion [B*G]. The trainer picks one of them once, at setup.

The REINFORCE++ ones normalise over the whole batch, which on N ranks is the global batch: they are marked
`batch_level` and take `total`, an element-wise sum over ranks (World.sum; the identity on one process).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

AdvantageFn = Callable[[torch.Tensor, int], torch.Tensor]


def grpo_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """DeepSeekMath GRPO: (r - group mean) / (group std + eps), std with Bessel's correction."""
    grouped = rewards.view(-1, group_size)  # [B, G]
    mean = grouped.mean(dim=1, keepdim=True)  # [B, 1]
    std = grouped.std(dim=1, keepdim=True)  # [B, 1]
    return ((grouped - mean) / (std + eps)).reshape(-1)  # [B*G]


def dr_grpo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Dr. GRPO: r - group mean. Dividing by the std favours too-easy and too-hard prompts (Liu et al. 2025)."""
    grouped = rewards.view(-1, group_size)  # [B, G]
    return (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1)  # [B*G]


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO: r minus the mean of the other G-1 rewards of its group, = G/(G-1) * (r - group mean)."""
    grouped = rewards.view(-1, group_size)  # [B, G]
    others_mean = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)  # [B, G]
    return (grouped - others_mean).reshape(-1)  # [B*G]


Total = Callable[[Sequence[float]], Sequence[float]]


def _one_process(values: Sequence[float]) -> Sequence[float]:
    return values


def batch_normalise(x: torch.Tensor, total: Total = _one_process, eps: float = 1e-4) -> torch.Tensor:
    """(x - batch mean) / (batch std + eps) over the global batch, std with Bessel's correction. [M] -> [M].
    Two passes (mean, then squared deviations), summed in float64 across ranks."""
    n, s = total([float(x.numel()), float(x.double().sum())])
    mean = s / max(n, 1.0)
    (sq,) = total([float(((x.double() - mean) ** 2).sum())])
    std = (sq / max(n - 1.0, 1.0)) ** 0.5
    return ((x.double() - mean) / (std + eps)).to(x.dtype)  # [M]


def reinforce_pp_advantages(rewards: torch.Tensor, group_size: int, total: Total = _one_process) -> torch.Tensor:
    """REINFORCE++ (Hu et al. 2025): no group baseline; the rewards normalised over the whole (global) batch,
    (r - batch mean) / (batch std + eps)."""
    return batch_normalise(rewards, total)  # [B*G]


def reinforce_pp_baseline_advantages(rewards: torch.Tensor, group_size: int,
                                     total: Total = _one_process) -> torch.Tensor:
    """REINFORCE++-baseline: subtract the group mean first (as Dr. GRPO), then normalise over the whole batch:
    c = r - group mean, A = (c - batch mean of c) / (batch std of c + eps). TRL's scale_rewards=batch divides by
    the batch std of r instead of c."""
    return batch_normalise(dr_grpo_advantages(rewards, group_size), total)  # [B*G]


reinforce_pp_advantages.batch_level = True  # type: ignore[attr-defined]
reinforce_pp_baseline_advantages.batch_level = True  # type: ignore[attr-defined]


def compute_advantages(fn: AdvantageFn, rewards: torch.Tensor, group_size: int,
                       total: Total = _one_process) -> torch.Tensor:
    """fn(rewards, group_size), handing batch-level functions the cross-rank sum. [B*G] -> [B*G]."""
    if getattr(fn, "batch_level", False):
        return fn(rewards, group_size, total=total)
    return fn(rewards, group_size)


ADVANTAGES: dict[str, AdvantageFn] = {
    "grpo": grpo_advantages,  # TRL scale_rewards=group
    "dr_grpo": dr_grpo_advantages,  # scale_rewards=none
    "rloo": rloo_advantages,
    "reinforce_pp": reinforce_pp_advantages,
    "reinforce_pp_baseline": reinforce_pp_baseline_advantages,  # ~ scale_rewards=batch
}


def zero_variance_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[B] bool: groups whose rewards are all equal; their advantages are 0 and teach nothing."""
    grouped = rewards.view(-1, group_size)  # [B, G]
    return (grouped.max(dim=1).values - grouped.min(dim=1).values).abs() < 1e-9  # [B]
