"""The objective: what a micro-batch's loss is made of, picked once at setup from the tables in this package
(grpo.train.update.build_objective reads the recipe), and the one pure function that assembles the loss from the
per-token batch.

Shapes: n episodes in a micro-batch, C positions after the prompt. `mask` [n, C] is the loss mask: 1.0 on model
tokens, 0.0 on environment tokens (context only) and padding. Everything below reads tokens through it, so a
masked token moves neither the loss nor its gradient nor any figure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from grpo.objectives.correction import Weights
from grpo.objectives.kl import KlEstimator, kl_reward_advantages
from grpo.objectives.loss import SurrogateOut
from grpo.objectives.surrogates import Surrogate

# (per_token [n, C], mask [n, C], batch_sequences, batch_tokens) -> this micro-batch's share of the batch loss
Aggregate = Callable[..., torch.Tensor]
# (old_logp, sampler_logp, mask) [n, C] -> the sampler correction's weights
Correction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Weights]


@dataclass(frozen=True)
class Objective:
    """The loss's parts, each already bound to its settings; built once per run."""

    surrogate: Surrogate  # (logp, old_logp, advantages, mask) -> SurrogateOut
    aggregate: Aggregate
    kl: KlEstimator | None  # None: beta = 0 (no reference model)
    beta: float
    kl_in_reward: bool  # the KL is a per-token reward folded into the advantages, not a loss term
    entropy_coef: float
    correction: str  # none | tis | mis: named in the metrics
    weights: Correction | None  # None: no sampler correction
    mu: int  # optimisation passes over the batch
    old_from_trainer: bool  # mu > 1: the ratio's old policy is the trainer's pre-update log-probs, not the sampler's
    # Episodes may come from an older policy (train.max_staleness > 0): the ratio's old policy is the sampling
    # policy's log-probs on every pass, mu = 1 included
    off_policy: bool = False


@dataclass
class BeforeUpdate:
    """What the first pass fixes, from the policy before this step's update, for every pass."""

    advantages: torch.Tensor  # [n, C]: the batch's, less the KL penalty when it is a reward
    trainer_old: torch.Tensor | None  # [n, C] the ratio's old policy when it is the trainer's (mu > 1)
    weights: Weights | None  # the sampler correction


def before_update(objective: Objective, logp: torch.Tensor, sampler_logp: torch.Tensor,
                  ref_logp: torch.Tensor | None, advantages: torch.Tensor, mask: torch.Tensor) -> BeforeUpdate:
    """logp [n, C]: the policy's log-probs before the update (no gradient); the rest [n, C] as in the batch."""
    if objective.kl_in_reward and ref_logp is not None:
        ref = torch.where(mask > 0, ref_logp, logp)  # [n, C] masked positions: KL 0 (see assemble_loss)
        advantages = kl_reward_advantages(advantages, objective.kl(logp, ref), mask, objective.beta)
    trainer_old = logp if objective.mu > 1 and objective.old_from_trainer else None
    weights = objective.weights(logp, sampler_logp, mask) if objective.weights is not None else None
    return BeforeUpdate(advantages, trainer_old, weights)


@dataclass
class LossInputs:
    """One micro-batch's per-token tensors [n, C] as the loss reads them."""

    logp: torch.Tensor  # the policy's, with gradient
    entropy: torch.Tensor | None  # with gradient when the objective has an entropy bonus
    old_logp: torch.Tensor  # the ratio's old policy (no gradient)
    advantages: torch.Tensor
    ref_logp: torch.Tensor | None  # the frozen reference's; None when beta = 0
    weight: torch.Tensor | None  # the sampler correction's; None without one
    mask: torch.Tensor  # the loss mask
    batch_sequences: int  # the global batch's episodes and model tokens: micro-batches then sum to its loss
    batch_tokens: int


@dataclass
class LossTerms:
    loss: torch.Tensor  # scalar: this micro-batch's share of the batch loss
    surrogate: SurrogateOut  # per token [n, C]: the ratio and where the clip was active
    kl: torch.Tensor | None  # [n, C] per-token KL estimate, no gradient (for the figures); None when beta = 0


def assemble_loss(objective: Objective, x: LossInputs) -> LossTerms:
    """The surrogate, weighted by the sampler correction, plus beta * KL (unless the KL is in the reward), minus the
    entropy bonus, aggregated. Pure: the same inputs give the same loss and gradient."""
    held = x.logp.detach()
    # Masked positions compare the policy with itself (ratio 1, KL 0): an environment token the policy finds very
    # unlikely must not make an inf there, whose product with a zero mask (or its gradient's) would be NaN.
    on = x.mask > 0  # [n, C]
    old = torch.where(on, x.old_logp, held)  # [n, C]
    out = objective.surrogate(x.logp, old, x.advantages, x.mask)
    per_token = out.loss  # [n, C]
    if x.weight is not None:
        per_token = per_token * x.weight
    kl = None  # [n, C]
    if x.ref_logp is not None:
        ref = torch.where(on, x.ref_logp, held)  # [n, C]
        if objective.kl_in_reward:  # already in the advantages: measured only
            kl = objective.kl(held, ref)
        else:
            kl = objective.kl(x.logp, ref)
            per_token = per_token + objective.beta * kl
    if objective.entropy_coef:
        per_token = per_token - objective.entropy_coef * x.entropy
    loss = objective.aggregate(per_token, x.mask, batch_sequences=x.batch_sequences, batch_tokens=x.batch_tokens)
    return LossTerms(loss, out, kl.detach() if kl is not None else None)
