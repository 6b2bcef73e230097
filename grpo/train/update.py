"""The policy update: mu passes of micro-batched policy-gradient steps over one step's experience. The
objective (surrogate, KL estimator and where it applies, sampler correction, entropy bonus) is chosen once per
call from the tables in grpo/objectives, by build_objective."""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
from dataclasses import dataclass
from typing import Callable

import torch

from grpo.config import TrainConfig
from grpo.objectives.correction import Weights, correction_weights
from grpo.objectives.kl import KL_ESTIMATORS, KlEstimator, clamped, kl_reward_advantages
from grpo.objectives.loss import SurrogateOut, aggregate, chunked_logprobs_and_entropy, logprobs_and_entropy
from grpo.objectives.surrogates import SURROGATES
from grpo.parallel import World
from grpo.train.head import head_bypassed, head_of
from grpo.train.packing import Layout, MicroBatch, make_micro_batch, plan_micro_batches
from grpo.train.rollouts import Rollout
from grpo.train.sharding import unwrap

DEFAULT_CHUNK = TrainConfig.vocab_chunk_tokens  # declared once, in the config


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


def build_objective(s: TrainConfig, correction: str = "none") -> Objective:
    """`correction`: train.sampler_correction as grpo.resolve.sampler_correction resolved it for the run."""
    surrogate = functools.partial(SURROGATES[s.loss], clip_low=s.clip_low, clip_high=s.clip_high,
                                  clip_ratio_c=s.clip_ratio_c)
    kl = clamped(KL_ESTIMATORS[s.kl_estimator], s.kl_clamp) if s.beta > 0 else None
    return Objective(surrogate=surrogate, kl=kl, kl_in_reward=kl is not None and s.kl_in == "reward",
                     correction=correction,
                     old_from_trainer=s.old_logprobs == "trainer")


def completion_logprobs(model, mb: MicroBatch, temperature: float, with_entropy: bool = False,
                        entropy_grad: bool = False, chunk_tokens: int = DEFAULT_CHUNK,
                        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [n, C] of mb's completion tokens under `model` (and their entropies, from the same logits; with
    a gradient only when entropy_grad, since a graph through them keeps the logits alive until backward).

    The vocabulary pass runs `chunk_tokens` positions at a time from the final hidden states (grpo/train/head.py),
    so no [positions, V] tensor is ever whole; a model whose logits are not a plain linear head keeps the one-piece
    pass. `autocast`: the precision's forward context (grpo/train/precision.py)."""
    found = head_of(model)
    with autocast():
        if found is None:
            return logprobs_and_entropy(_predicting_outputs(model, mb), mb.source, mb.targets, temperature,
                                        with_entropy, entropy_grad)
        with head_bypassed(found) as head:
            hidden = _predicting_outputs(model, mb)  # [K, H]
        return chunked_logprobs_and_entropy(hidden, head.weight, mb.source, mb.targets, temperature, chunk_tokens,
                                            with_entropy, entropy_grad, head.bias)


def _predicting_outputs(model, mb: MicroBatch) -> torch.Tensor:
    """The model's outputs (logits, or hidden states with the head bypassed) at the positions that predict
    completion tokens: [K, V or H]. Only those go through the head when the model takes logits_to_keep."""
    keep = _logits_to_keep(model)
    packed = not isinstance(mb.logits_at, int)
    kwargs = {"logits_to_keep": mb.logits_at} if keep == "mask" or (keep == "int" and not packed) else {}
    out = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask, position_ids=mb.position_ids,
                use_cache=False, **kwargs, **(mb.varlen or {})).logits
    if not packed:  # padded rows: position t predicts token t+1, the completion is the last C positions
        C = mb.targets.shape[1]
        return out[:, -(C + 1):-1].reshape(-1, out.shape[-1])  # [n*C, V or H]
    if kwargs:
        return out.reshape(-1, out.shape[-1])  # [K, V or H] already
    return out[mb.logits_at]  # [R, L, V or H] -> [K, V or H]


_LOGITS_TO_KEEP: dict[type, str] = {}


def _logits_to_keep(model) -> str:
    """How far the model's forward honours logits_to_keep: "mask" (a bool [R, L] of positions, transformers'
    slice_logits_to_keep), "int" (the last k positions only), or "" (not at all)."""
    base = unwrap(model)
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    kind = type(base)
    if kind not in _LOGITS_TO_KEEP:
        takes = "logits_to_keep" in inspect.signature(base.forward).parameters
        # The forward's module, not the class's: FSDP2 makes a subclass (FSDPQwen2ForCausalLM) in torch's module.
        slices = "slice_logits_to_keep" in vars(inspect.getmodule(kind.forward) or object)
        _LOGITS_TO_KEEP[kind] = ("mask" if slices else "int") if takes else ""
    return _LOGITS_TO_KEEP[kind]


def policy_update(policy, reference, optimizer, rollouts: list[Rollout], s: TrainConfig, *, temperature: float,
                  loss_constant: int, pad_id: int, device: torch.device, world: World = World.single(),
                  correction: str = "none", layout: Layout | None = None,
                  autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> UpdateStats:
    """mu optimizer steps on the batch. `temperature` is the sampler's (log-probs are of the tempered
    distribution it drew from); `loss_constant` the normaliser of loss_aggregation=constant and `correction`
    the sampler correction, both as grpo.resolve resolved them at setup; `layout` how micro-batches are cut and
    laid out (default: padded rows of train.micro_batch_size sequences); `autocast` the precision's forward
    context.

    On several ranks `rollouts` is this rank's share: the loss is normalised by the global batch's sequence and
    token counts, and scaled by the world size because DDP and FSDP average gradients over ranks, so the summed
    gradient is exactly that of the global batch's loss on one process."""
    objective = build_objective(s, correction)
    layout = layout or Layout("padded", s.micro_batch_size, 0)
    batch_sequences, batch_tokens = (int(n) for n in world.sum(
        [len(rollouts), sum(len(r.completion.token_ids) for r in rollouts)]))
    grad_scale = float(world.size)
    # Every rank runs as many forward/backward passes (DDP's and FSDP's collectives pair them up).
    chunks = plan_micro_batches(rollouts, layout)
    if world.distributed:
        chunks = plan_micro_batches(rollouts, layout, int(world.max(float(len(chunks)))))
    micro_batches = [make_micro_batch(chunk, layout, pad_id, device) for chunk in chunks]
    forward = functools.partial(completion_logprobs, chunk_tokens=s.vocab_chunk_tokens, autocast=autocast)
    ref_logprobs = [_reference_logprobs(forward, policy, reference, mb, temperature) if s.beta > 0 else None
                    for mb in micro_batches]
    # DDP all-reduces on every backward unless told not to: only the last micro-batch of a pass needs it. (FSDP
    # reduce-scatters each micro-batch on purpose: holding unsharded gradients would cost a whole model copy.)
    accumulate = policy.no_sync if isinstance(policy, torch.nn.parallel.DistributedDataParallel) else None
    # Set on the first pass, from the policy before this step's update, and reused by the later passes.
    trainer_old: list[torch.Tensor | None] = [None] * len(micro_batches)  # [n, C] old_logprobs=trainer
    weights: list[Weights | None] = [None] * len(micro_batches)  # sampler correction
    advantages: list[torch.Tensor] = [mb.advantages for mb in micro_batches]  # [n], or [n, C] kl_in=reward
    # Figures add up on the device and are read once at the end: a float() per micro-batch would stall a GPU.
    names = ("loss", "kl", "clipped", "entropy", "ratio", "gap", "tokens", "weight", "flagged")
    sums = {name: torch.zeros((), device=device) for name in names}
    grad_norms = []
    skipped = False
    policy.train()
    for epoch in range(s.mu):
        optimizer.zero_grad(set_to_none=True)
        for i, (mb, ref_lp) in enumerate(zip(micro_batches, ref_logprobs)):
            last = i == len(micro_batches) - 1
            with contextlib.nullcontext() if accumulate is None or last else accumulate():
                # The first pass measures the entropy; later ones only when the loss has an entropy bonus.
                logp, entropy = forward(policy, mb, temperature, with_entropy=epoch == 0 or bool(s.entropy_coef),
                                        entropy_grad=bool(s.entropy_coef))
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
                if s.entropy_coef:
                    per_token = per_token - s.entropy_coef * entropy
                loss = aggregate(per_token, mb.mask, s.loss_aggregation, batch_sequences, batch_tokens, loss_constant)
                (loss * grad_scale).backward()
            with torch.no_grad():
                if epoch == 0:  # figures of the batch as sampled, before this step changed the policy
                    sums["loss"] += loss.detach()
                    sums["tokens"] += mb.mask.sum()
                    sums["gap"] += ((mb.sampler_logprobs - logp.detach()).abs() * mb.mask).sum()
                    sums["entropy"] += (entropy.detach() * mb.mask).sum()
                    if kl is not None:
                        sums["kl"] += (kl.detach() * mb.mask).sum()
                    if weights[i] is not None:
                        sums["weight"] += weights[i].weight.sum()
                        sums["flagged"] += weights[i].flagged.float().sum()
                sums["clipped"] += (out.clipped.float() * mb.mask).sum() / s.mu
                sums["ratio"] += (out.ratio * mb.mask).sum() / s.mu
            del logp, entropy, out, per_token, loss, kl
        grad_norm = torch.nn.utils.clip_grad_norm_([p for p in policy.parameters() if p.requires_grad],
                                                   s.max_grad_norm)
        if hasattr(grad_norm, "full_tensor"):  # FSDP: the norm over every rank's shards
            grad_norm = grad_norm.full_tensor()
        grad_norms.append(float(grad_norm))
        if math.isfinite(grad_norms[-1]):  # global on every rank, so the ranks skip together
            optimizer.step()
        else:  # a NaN/inf gradient would poison the weights and the optimizer's moments: this step is dropped
            skipped = True
        # Gradients are not needed again before the next step's backward: free them now, or they would hold a
        # model's worth of memory through generation (where a colocated vLLM engine needs it back).
        optimizer.zero_grad(set_to_none=True)
    totals = {name: float(value) for name, value in sums.items()}
    totals["positions"] = float(sum(mb.positions for mb in micro_batches))
    totals["real_positions"] = float(sum(mb.real_positions for mb in micro_batches))
    rank_gap = totals["gap"] / max(totals["tokens"], 1.0)
    totals = dict(zip(totals, world.sum(list(totals.values()))))  # the global batch's figures
    tokens = max(totals["tokens"], 1.0)
    corrected = objective.correction != "none"
    return UpdateStats(loss=totals["loss"], kl=totals["kl"] / tokens, clip_fraction=totals["clipped"] / tokens,
                       entropy=totals["entropy"] / tokens, grad_norm=sum(grad_norms) / len(grad_norms),
                       ratio_mean=totals["ratio"] / tokens, logprob_gap=totals["gap"] / tokens, tokens=int(tokens),
                       rank_logprob_gap=rank_gap, correction=objective.correction,
                       correction_weight_mean=totals["weight"] / tokens if corrected else 1.0,
                       correction_flagged_fraction=totals["flagged"] / tokens if corrected else 0.0,
                       skipped=skipped, padded_fraction=1.0 - totals["real_positions"] / max(totals["positions"], 1.0))


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
def _reference_logprobs(forward, policy, reference, mb: MicroBatch, temperature: float) -> torch.Tensor:
    if reference is None:  # LoRA: the reference is the base model, i.e. the policy with its adapters off
        with unwrap(policy).disable_adapter():
            return forward(policy, mb, temperature)[0]  # [n, C]
    return forward(reference, mb, temperature)[0]  # [n, C]
