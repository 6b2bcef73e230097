"""Policy-gradient surrogates, one pure function each, picked once at setup from SURROGATES by `train.loss`.

Shapes as in loss.py: N sequences, T completion positions. logp (with gradient) and old_logp [N, T]; advantages
[N] (one per sequence, broadcast over its tokens) or [N, T] (per token, e.g. with the KL penalty in the reward);
mask [N, T]. Each returns a per-token loss to minimise, which loss.aggregate reduces as usual, so micro-batching
stays exact: every quantity here is per token or per sequence, never across sequences.
"""

from __future__ import annotations

from typing import Callable

import torch

from grpo.objectives.loss import SurrogateOut, clipped_surrogate

Surrogate = Callable[..., SurrogateOut]


def _per_token(advantages: torch.Tensor) -> torch.Tensor:
    return advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages  # [N, 1] or [N, T]


def sequence_log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GSPO's log s_i = mean over the sequence's tokens of (logp - old_logp), with gradient. [N, T] -> [N, 1]."""
    lengths = mask.sum(-1, keepdim=True).clamp(min=1.0)  # [N, 1]
    return ((logp - old_logp) * mask).sum(-1, keepdim=True) / lengths  # [N, 1]


def clip_surrogate(logp, old_logp, advantages, mask, *, clip_low: float, clip_high: float,
                   clip_ratio_c: float | None = None) -> SurrogateOut:
    """PPO / GRPO / DAPO: -min(r A, clip(r, 1 - clip_low, 1 + clip_high) A) per token, r = pi / pi_old;
    with clip_ratio_c (dual clip, Ye et al. 2020) the loss of a negative advantage is also capped at -c A."""
    return clipped_surrogate(logp, old_logp, advantages, clip_low, clip_high, clip_ratio_c)


def gspo(logp, old_logp, advantages, mask, *, clip_low: float, clip_high: float,
         clip_ratio_c: float | None = None) -> SurrogateOut:
    """GSPO (Zheng et al. 2025, Qwen): the sequence ratio s_i = exp(mean_t log(pi / pi_old)) replaces the token
    ratio and is clipped at the sequence level: -min(s_i A_i, clip(s_i, 1 - low, 1 + high) A_i) on every token of
    sequence i (use loss_aggregation=sequence_mean for the paper's 1/G sum over sequences). The gradient of s_i
    is s_i * mean_t grad log pi_t; a clipped sequence contributes none."""
    log_s = sequence_log_ratio(logp, old_logp, mask).expand_as(logp)  # [N, T], the same on every token
    return _clip_from_log_ratio(log_s, advantages, clip_low, clip_high, clip_ratio_c)


def gspo_token(logp, old_logp, advantages, mask, *, clip_low: float, clip_high: float,
               clip_ratio_c: float | None = None) -> SurrogateOut:
    """GSPO-token: s_i,t = sg[s_i] * pi_t / sg[pi_t]. Its value is s_i on every token (so the clip decision is
    GSPO's), its gradient s_i * grad log pi_t, so per-token advantages A_i,t can differ along a sequence; with
    one advantage per sequence it gives GSPO's gradient exactly."""
    log_s = sequence_log_ratio(logp.detach(), old_logp, mask)  # [N, 1] no gradient
    log_ratio = log_s + logp - logp.detach()  # [N, T] value log s_i, gradient d logp
    return _clip_from_log_ratio(log_ratio, advantages, clip_low, clip_high, clip_ratio_c)


def cispo(logp, old_logp, advantages, mask, *, clip_low: float, clip_high: float,
          clip_ratio_c: float | None = None) -> SurrogateOut:
    """CISPO (MiniMax-M1, 2025): -sg(min(r, 1 + clip_high)) * A * logp per token. The IS weight is clipped, not
    the objective, so every token keeps a gradient (sg(w) A grad log pi); only the upper bound is used (the paper
    sets no lower one), so clip_low is ignored. `clipped` marks tokens whose weight hit the bound."""
    ratio = torch.exp(logp.detach() - old_logp)  # [N, T]
    weight = torch.clamp(ratio, max=1.0 + clip_high)  # [N, T] no gradient
    loss = -weight * _per_token(advantages) * logp  # [N, T]
    return SurrogateOut(loss=loss, clipped=ratio > 1.0 + clip_high, ratio=ratio)


def _clip_from_log_ratio(log_ratio, advantages, clip_low, clip_high, clip_ratio_c) -> SurrogateOut:
    # clipped_surrogate computes exp(logp - old_logp): hand it the log-ratio against a zero "old".
    return clipped_surrogate(log_ratio, torch.zeros_like(log_ratio), advantages, clip_low, clip_high, clip_ratio_c)


SURROGATES: dict[str, Surrogate] = {
    "clip": clip_surrogate,
    "gspo": gspo,
    "gspo_token": gspo_token,
    "cispo": cispo,
}
