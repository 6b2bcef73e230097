"""KL(pi || ref) estimators per token (Schulman, "Approximating KL divergence", 2020), and the KL penalty as a
per-token reward. All [N, T] -> [N, T]; picked once at setup from KL_ESTIMATORS by `train.kl_estimator`.

With x = ref_logp - logp (log of ref / pi at the sampled token, tokens drawn from pi):
    k1 = -x                    unbiased, can be negative; as a loss term its expected gradient is zero on-policy
    k2 = x^2 / 2               biased, >= 0; its gradient is the gradient of KL (the usual choice in the loss)
    k3 = exp(x) - x - 1        unbiased, >= 0, low variance (GRPO's, and our default)
`clamp` (train.kl_clamp) bounds x to [-clamp, clamp] first, so one token whose log-ratio runs away cannot blow
up the estimate (k3 is exponential in x).
"""

from __future__ import annotations

from typing import Callable

import torch

KlEstimator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """logp - ref_logp. [N, T] -> [N, T]."""
    return logp - ref_logp  # [N, T]


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """(logp - ref_logp)^2 / 2. [N, T] -> [N, T]."""
    return 0.5 * (logp - ref_logp) ** 2  # [N, T]


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || ref): exp(ref - logp) - (ref - logp) - 1 >= 0. [N, T] -> [N, T]."""
    delta = ref_logp - logp  # [N, T]
    return torch.exp(delta) - delta - 1.0  # [N, T]


KL_ESTIMATORS: dict[str, KlEstimator] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def clamped(estimator: KlEstimator, clamp: float | None) -> KlEstimator:
    """The estimator applied to a log-ratio clamped to [-clamp, clamp] (None: the estimator itself)."""
    if clamp is None:
        return estimator

    def estimate(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
        delta = torch.clamp(logp - ref_logp, -clamp, clamp)  # [N, T]
        return estimator(ref_logp + delta, ref_logp)  # [N, T]

    return estimate


def kl_reward_advantages(advantages: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor,
                         beta: float) -> torch.Tensor:
    """The KL penalty as a per-token reward (`train.kl_in: reward`, as in PPO / REINFORCE++): token t is charged
    -beta * kl_t, and with no discount its return adds the penalties still to come, so
        A_t = A - beta * sum_{s >= t} kl_s
    (A is the sequence's advantage from its outcome reward). advantages [N] (or already per token, [N, T]), kl and
    mask [N, T] -> [N, T]; zero where the mask is. No gradient flows through kl (it is a reward)."""
    penalty = (kl.detach() * mask).flip(-1).cumsum(-1).flip(-1)  # [N, T] sum over s >= t
    per_token = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages  # [N, 1] or [N, T]
    return (per_token - beta * penalty) * mask  # [N, T]
