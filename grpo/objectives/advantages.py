"""Group-relative advantages: pure functions of the rewards of each prompt's G completions.

Each takes rewards [B*G] laid out group by group (the G completions of prompt 0, then of prompt 1, ...) and
returns one advantage per completion [B*G]. The trainer picks one of them once, at setup.
"""

from __future__ import annotations

from typing import Callable

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


ADVANTAGES: dict[str, AdvantageFn] = {
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
    "rloo": rloo_advantages,
}


def zero_variance_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[B] bool: groups whose rewards are all equal; their advantages are 0 and teach nothing."""
    grouped = rewards.view(-1, group_size)  # [B, G]
    return (grouped.max(dim=1).values - grouped.min(dim=1).values).abs() < 1e-9  # [B]
