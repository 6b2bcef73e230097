"""Sampler/trainer mismatch correction (`train.sampler_correction`): importance weights that turn samples
drawn by the sampler (vLLM: other kernels, often bf16) into an estimate under the trainer's policy.

    log w_t = old_logp_t - sampler_logp_t          (old: the trainer's log-probs before the update, no gradient)
    level token       w_t per token
    level sequence    W_i = exp(sum_t log w_t) on every token of sequence i (the product of the token ratios)
    level geometric   W_i = exp(mean_t log w_t) (their geometric mean: no blow-up with length)
    tis  (truncated IS; Yao et al. 2025, TRL's default with vLLM)   w <- min(w, C)
    mis  (masked IS; IcePop, verl's rejection mode)                 w <- w if 1/C <= w <= C, else 0
The per-token policy-gradient loss is multiplied by w. Every function is [N, T] -> [N, T] and acts within a
sequence only, so it is exact under micro-batching. Picked once at setup from CORRECTIONS / LEVELS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class Weights:
    weight: torch.Tensor  # [N, T] multiplies the per-token loss; no gradient
    flagged: torch.Tensor  # [N, T] bool: truncated (tis) or masked (mis)


def token_level(log_w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[N, T] -> [N, T]: each token its own log-weight."""
    return log_w * mask  # [N, T]


def sequence_level(log_w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[N, T] -> [N, T]: the sequence's summed log-weight (log of the product) on each of its tokens."""
    return (log_w * mask).sum(-1, keepdim=True).expand_as(log_w)  # [N, T]


def geometric_level(log_w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[N, T] -> [N, T]: the sequence's mean log-weight (log of the geometric mean) on each of its tokens."""
    lengths = mask.sum(-1, keepdim=True).clamp(min=1.0)  # [N, 1]
    return ((log_w * mask).sum(-1, keepdim=True) / lengths).expand_as(log_w)  # [N, T]


def no_correction(log_w: torch.Tensor, cap: float) -> Weights:
    return Weights(torch.ones_like(log_w), torch.zeros_like(log_w, dtype=torch.bool))


def truncated(log_w: torch.Tensor, cap: float) -> Weights:
    """TIS: min(w, C). [N, T] -> weights [N, T]."""
    w = torch.exp(log_w)  # [N, T]
    return Weights(torch.clamp(w, max=cap), w > cap)


def masked(log_w: torch.Tensor, cap: float) -> Weights:
    """MIS: w where 1/C <= w <= C, else 0. [N, T] -> weights [N, T]."""
    w = torch.exp(log_w)  # [N, T]
    outside = (w < 1.0 / cap) | (w > cap)  # [N, T]
    return Weights(torch.where(outside, torch.zeros_like(w), w), outside)


CORRECTIONS: dict[str, Callable[[torch.Tensor, float], Weights]] = {
    "none": no_correction, "tis": truncated, "mis": masked}
LEVELS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "token": token_level, "sequence": sequence_level, "geometric": geometric_level}


def correction_weights(old_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor, mode: str,
                       level: str, cap: float) -> Weights:
    """The weights of one micro-batch. old_logp, sampler_logp, mask [N, T] -> Weights [N, T] (zero on padding)."""
    log_w = LEVELS[level](old_logp.detach() - sampler_logp, mask)  # [N, T]
    out = CORRECTIONS[mode](log_w, cap)
    return Weights(out.weight * mask, out.flagged & (mask > 0))
