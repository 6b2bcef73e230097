"""The policy update: mu passes of micro-batched policy-gradient steps over one step's experience. The
objective (surrogate, KL estimator and where it applies, sampler correction, entropy bonus) is chosen once per
call from the tables in grpo/objectives, by build_objective."""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass
from typing import Callable

import torch

from grpo.config import TrainConfig
from grpo.objectives.correction import Weights, correction_weights, resolve_correction
from grpo.objectives.kl import KL_ESTIMATORS, KlEstimator, clamped, kl_reward_advantages
from grpo.objectives.loss import SurrogateOut, aggregate, token_entropy, token_logprobs
from grpo.objectives.surrogates import SURROGATES
from grpo.parallel import World
from grpo.train.rollouts import Rollout
from grpo.train.sharding import unwrap


@dataclass
class UpdateStats:
    loss: float = 0.0
    kl: float = 0.0
    clip_fraction: float = 0.0
    entropy: float = 0.0
    grad_norm: float = 0.0
    ratio_mean: float = 0.0
    logprob_gap: float = 0.0  # mean |sampler - trainer| log-prob on the first pass (before any update)
    rank_logprob_gap: float = 0.0  # the same over this rank's tokens only (each rank checks its own sync)
    tokens: int = 0
    correction: str = "none"  # the sampler correction applied (train.sampler_correction, auto resolved)
    correction_weight_mean: float = 1.0  # mean importance weight per token (after truncation / masking)
    correction_flagged_fraction: float = 0.0  # tokens truncated (tis) or masked (mis)
    skipped: bool = False  # a pass had a non-finite gradient and its optimizer step was not taken
    padded_fraction: float = 0.0  # share of the forward pass's positions that are padding (prompt + completion)


@dataclass
class Objective:
    """What the loss is made of, picked once from the tables in grpo/objectives."""

    surrogate: Callable[..., SurrogateOut]  # (logp, old_logp, advantages, mask) -> SurrogateOut
    kl: KlEstimator | None  # None: beta = 0
    kl_in_reward: bool
    correction: str  # none | tis | mis
    old_from_trainer: bool  # mu > 1: the ratio's old policy is the trainer's pre-update log-probs


def build_objective(s: TrainConfig, sampler_backend: str = "hf") -> Objective:
    surrogate = functools.partial(SURROGATES[s.loss], clip_low=s.clip_low, clip_high=s.clip_high,
                                  clip_ratio_c=s.clip_ratio_c)
    kl = clamped(KL_ESTIMATORS[s.kl_estimator], s.kl_clamp) if s.beta > 0 else None
    return Objective(surrogate=surrogate, kl=kl, kl_in_reward=kl is not None and s.kl_in == "reward",
                     correction=resolve_correction(s.sampler_correction, sampler_backend, s.mu, s.old_logprobs),
                     old_from_trainer=s.old_logprobs == "trainer")


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # [n, P+C] prompts left-padded to P, completions right-padded to C
    attention_mask: torch.Tensor  # [n, P+C]
    position_ids: torch.Tensor  # [n, P+C] count only real tokens, as generation did
    targets: torch.Tensor  # [n, C] completion token ids
    mask: torch.Tensor  # [n, C] 1.0 on completion tokens
    sampler_logprobs: torch.Tensor  # [n, C]
    advantages: torch.Tensor  # [n]


def make_micro_batch(rollouts: list[Rollout], pad_id: int, device: torch.device) -> MicroBatch:
    n = len(rollouts)
    P = max(len(r.prompt_ids) for r in rollouts)
    C = max(max(len(r.completion.token_ids) for r in rollouts), 1)
    input_ids = torch.full((n, P + C), pad_id, dtype=torch.long)  # [n, P+C]
    attention = torch.zeros((n, P + C), dtype=torch.long)  # [n, P+C]
    targets = torch.full((n, C), pad_id, dtype=torch.long)  # [n, C]
    mask = torch.zeros((n, C))  # [n, C]
    sampler_lp = torch.zeros((n, C))  # [n, C]
    for i, r in enumerate(rollouts):
        p, c = r.prompt_ids, r.completion.token_ids
        input_ids[i, P - len(p):P] = torch.tensor(p)
        attention[i, P - len(p):P] = 1
        if c:
            input_ids[i, P:P + len(c)] = torch.tensor(c)
            attention[i, P:P + len(c)] = 1
            targets[i, :len(c)] = torch.tensor(c)
            mask[i, :len(c)] = 1.0
            sampler_lp[i, :len(c)] = torch.tensor(r.completion.logprobs, dtype=torch.float32)
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)  # [n, P+C]
    advantages = torch.tensor([r.advantage for r in rollouts], dtype=torch.float32)  # [n]
    to = lambda t: t.to(device)  # noqa: E731
    return MicroBatch(to(input_ids), to(attention), to(position_ids), to(targets), to(mask), to(sampler_lp),
                      to(advantages))


def completion_logits(model, mb: MicroBatch) -> torch.Tensor:
    """Logits that predict each completion token: [n, C, V]."""
    C = mb.targets.shape[1]
    kwargs = {}
    if _accepts_logits_to_keep(model):
        kwargs["logits_to_keep"] = C + 1  # skip the prompt positions' logits: [n, C+1, V] instead of [n, P+C, V]
    logits = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask, position_ids=mb.position_ids,
                   use_cache=False, **kwargs).logits
    return logits[:, -(C + 1):-1]  # position t predicts token t+1: [n, C, V]


_LOGITS_TO_KEEP: dict[type, bool] = {}


def _accepts_logits_to_keep(model) -> bool:
    base = unwrap(model)
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    kind = type(base)
    if kind not in _LOGITS_TO_KEEP:
        _LOGITS_TO_KEEP[kind] = "logits_to_keep" in inspect.signature(base.forward).parameters
    return _LOGITS_TO_KEEP[kind]


def policy_update(policy, reference, optimizer, rollouts: list[Rollout], s: TrainConfig, *, temperature: float,
                  loss_constant: int, pad_id: int, device: torch.device, world: World = World.single(),
                  sampler_backend: str = "hf") -> UpdateStats:
    """mu optimizer steps on the batch. `temperature` is the sampler's (log-probs are of the tempered
    distribution it drew from); `loss_constant` the normaliser of loss_aggregation=constant; `sampler_backend`
    resolves train.sampler_correction=auto.

    On several ranks `rollouts` is this rank's share: the loss is normalised by the global batch's sequence and
    token counts, and scaled by the world size because DDP and FSDP average gradients over ranks, so the summed
    gradient is exactly that of the global batch's loss on one process."""
    objective = build_objective(s, sampler_backend)
    batch_sequences, batch_tokens = (int(n) for n in world.sum(
        [len(rollouts), sum(len(r.completion.token_ids) for r in rollouts)]))
    grad_scale = float(world.size)
    micro_batches = [make_micro_batch(rollouts[i:i + s.micro_batch_size], pad_id, device)
                     for i in range(0, len(rollouts), s.micro_batch_size)]
    ref_logprobs = [_reference_logprobs(policy, reference, mb, temperature) if s.beta > 0 else None
                    for mb in micro_batches]
    # Set on the first pass, from the policy before this step's update, and reused by the later passes.
    trainer_old: list[torch.Tensor | None] = [None] * len(micro_batches)  # [n, C] old_logprobs=trainer
    weights: list[Weights | None] = [None] * len(micro_batches)  # sampler correction
    advantages: list[torch.Tensor] = [mb.advantages for mb in micro_batches]  # [n], or [n, C] kl_in=reward
    sums = {"loss": 0.0, "kl": 0.0, "clipped": 0.0, "entropy": 0.0, "ratio": 0.0, "gap": 0.0, "tokens": 0.0,
            "weight": 0.0, "flagged": 0.0,
            # what one forward pass over the batch computes (every position of every padded row) vs what it needs
            "positions": float(sum(mb.input_ids.numel() for mb in micro_batches)),
            "real_positions": float(sum(mb.attention_mask.sum() for mb in micro_batches))}
    grad_norms = []
    skipped = False
    policy.train()
    for epoch in range(s.mu):
        optimizer.zero_grad(set_to_none=True)
        for i, (mb, ref_lp) in enumerate(zip(micro_batches, ref_logprobs)):
            logits = completion_logits(policy, mb)  # [n, C, V]
            logp = token_logprobs(logits, mb.targets, temperature)  # [n, C]
            if epoch == 0:
                _first_pass(objective, s, i, mb, logp.detach(), ref_lp, trainer_old, weights, advantages)
            # mu == 1: on-policy, the ratio is 1 but carries the gradient. mu > 1: later passes are off-policy
            # against the sampler-time log-probs, or the trainer's own from the first pass.
            if s.mu == 1:
                old_logp = logp.detach()
            else:
                old_logp = trainer_old[i] if objective.old_from_trainer else mb.sampler_logprobs
            out = objective.surrogate(logp, old_logp, advantages[i], mb.mask)
            per_token = out.loss  # [n, C]
            if weights[i] is not None:
                per_token = per_token * weights[i].weight
            kl = None  # [n, C]
            if ref_lp is not None and objective.kl_in_reward:  # already in the advantages; measured only
                kl = objective.kl(logp.detach(), ref_lp)
            elif ref_lp is not None:
                kl = objective.kl(logp, ref_lp)
                per_token = per_token + s.beta * kl
            entropy = token_entropy(logits, temperature) if s.entropy_coef else None  # [n, C] with gradient
            if entropy is not None:
                per_token = per_token - s.entropy_coef * entropy
            loss = aggregate(per_token, mb.mask, s.loss_aggregation, batch_sequences, batch_tokens, loss_constant)
            (loss * grad_scale).backward()
            if epoch == 0:  # figures of the batch as sampled, before this step changed the policy
                with torch.no_grad():
                    ntok = float(mb.mask.sum())
                    sums["loss"] += float(loss)
                    sums["tokens"] += ntok
                    sums["gap"] += float(((mb.sampler_logprobs - logp).abs() * mb.mask).sum())
                    ent = entropy.detach() if entropy is not None else token_entropy(logits, temperature)
                    sums["entropy"] += float((ent * mb.mask).sum())
                    if kl is not None:
                        sums["kl"] += float((kl * mb.mask).sum())
                    if weights[i] is not None:
                        sums["weight"] += float(weights[i].weight.sum())
                        sums["flagged"] += float(weights[i].flagged.float().sum())
            with torch.no_grad():
                sums["clipped"] += float((out.clipped.float() * mb.mask).sum()) / s.mu
                sums["ratio"] += float((out.ratio * mb.mask).sum()) / s.mu
            del logits, logp, out, per_token, loss, kl, entropy
        grad_norm = torch.nn.utils.clip_grad_norm_([p for p in policy.parameters() if p.requires_grad],
                                                   s.max_grad_norm)
        if hasattr(grad_norm, "full_tensor"):  # FSDP: the norm over every rank's shards
            grad_norm = grad_norm.full_tensor()
        grad_norms.append(float(grad_norm))
        if math.isfinite(grad_norms[-1]):  # global on every rank, so the ranks skip together
            optimizer.step()
        else:  # a NaN/inf gradient would poison the weights and the optimizer's moments: this step is dropped
            skipped = True
    rank_gap = sums["gap"] / max(sums["tokens"], 1.0)
    sums = dict(zip(sums, world.sum(list(sums.values()))))  # the global batch's figures
    tokens = max(sums["tokens"], 1.0)
    corrected = objective.correction != "none"
    return UpdateStats(loss=sums["loss"], kl=sums["kl"] / tokens, clip_fraction=sums["clipped"] / tokens,
                       entropy=sums["entropy"] / tokens, grad_norm=sum(grad_norms) / len(grad_norms),
                       ratio_mean=sums["ratio"] / tokens, logprob_gap=sums["gap"] / tokens, tokens=int(tokens),
                       rank_logprob_gap=rank_gap, correction=objective.correction,
                       correction_weight_mean=sums["weight"] / tokens if corrected else 1.0,
                       correction_flagged_fraction=sums["flagged"] / tokens if corrected else 0.0, skipped=skipped,
                       padded_fraction=1.0 - sums["real_positions"] / max(sums["positions"], 1.0))


def _first_pass(objective: Objective, s: TrainConfig, i: int, mb: MicroBatch, old_logp: torch.Tensor,
                ref_lp: torch.Tensor | None, trainer_old: list, weights: list, advantages: list) -> None:
    """What the first pass learns of micro-batch i from the policy before the update (old_logp [n, C], no
    gradient): the old log-probs for later passes, the sampler-correction weights, the per-token advantages
    with the KL penalty in the reward."""
    if s.mu > 1 and objective.old_from_trainer:
        trainer_old[i] = old_logp
    if objective.correction != "none":
        weights[i] = correction_weights(old_logp, mb.sampler_logprobs, mb.mask, objective.correction,
                                        s.correction_level, s.correction_cap)
    if objective.kl_in_reward and ref_lp is not None:
        advantages[i] = kl_reward_advantages(mb.advantages, objective.kl(old_logp, ref_lp), mb.mask, s.beta)


@torch.no_grad()
def _reference_logprobs(policy, reference, mb: MicroBatch, temperature: float) -> torch.Tensor:
    if reference is None:  # LoRA: the reference is the base model, i.e. the policy with its adapters off
        with unwrap(policy).disable_adapter():
            logits = completion_logits(policy, mb)
    else:
        logits = completion_logits(reference, mb)
    return token_logprobs(logits, mb.targets, temperature)  # [n, C]

