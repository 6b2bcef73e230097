"""The policy update: mu passes of micro-batched backward / optimizer steps over one step's per-token batch
(grpo/train/episodes.py). The objective is built once per run (build_objective) and the loss assembled from the
batch by grpo.objectives.objective.assemble_loss; how the passes run (layout, temperature, precision, ranks) is
fixed once per run too (TrainingPass)."""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from grpo.config import TrainConfig
from grpo.objectives.correction import correction_weights
from grpo.objectives.kl import KL_ESTIMATORS, clamped
from grpo.objectives.loss import aggregate, chunked_logprobs_and_entropy, logprobs_and_entropy
from grpo.objectives.objective import BeforeUpdate, LossInputs, LossTerms, Objective, assemble_loss, before_update
from grpo.objectives.surrogates import SURROGATES
from grpo.parallel import World
from grpo.train.episodes import TokenBatch, UpdateStats
from grpo.train.head import head_bypassed, head_of
from grpo.train.packing import Layout, MicroBatch, micro_batch, plan_micro_batches
from grpo.train.sharding import unwrap

DEFAULT_CHUNK = TrainConfig.vocab_chunk_tokens  # declared once, in the config
__all__ = ["UpdateStats", "Objective", "TrainingPass", "build_objective", "completion_logprobs", "policy_update"]


def build_objective(s: TrainConfig, correction: str = "none", loss_constant: int = 0,
                    off_policy: bool = False) -> Objective:
    """The run's objective from the recipe's train section. `correction`: train.sampler_correction and
    `loss_constant`: the normaliser of loss_aggregation=constant, both as grpo.resolve resolved them. off_policy:
    episodes may come from an older policy (train.max_staleness > 0)."""
    surrogate = functools.partial(SURROGATES[s.loss], clip_low=s.clip_low, clip_high=s.clip_high,
                                  clip_ratio_c=s.clip_ratio_c)
    kl = clamped(KL_ESTIMATORS[s.kl_estimator], s.kl_clamp) if s.beta > 0 else None
    weights = (functools.partial(correction_weights, mode=correction, level=s.correction_level,
                                 cap=s.correction_cap) if correction != "none" else None)
    return Objective(surrogate=surrogate,
                     aggregate=functools.partial(aggregate, mode=s.loss_aggregation, constant=loss_constant),
                     kl=kl, beta=s.beta, kl_in_reward=kl is not None and s.kl_in == "reward",
                     entropy_coef=s.entropy_coef, correction=correction, weights=weights, mu=s.mu,
                     old_from_trainer=s.old_logprobs == "trainer", off_policy=off_policy)


@dataclass(frozen=True)
class TrainingPass:
    """How the update's forward and backward passes run, fixed once per run."""

    layout: Layout  # how micro-batches are cut and laid out (train.packing resolved)
    temperature: float  # the sampler's: log-probs are of the tempered distribution it drew from
    device: torch.device
    world: World = field(default_factory=World.single)
    max_grad_norm: float = 1.0
    chunk_tokens: int = DEFAULT_CHUNK  # the vocabulary pass's chunk (train.vocab_chunk_tokens)
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext  # the precision's forward

    def logprobs(self, model, mb: MicroBatch, with_entropy: bool = False,
                 entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        return completion_logprobs(model, mb, self.temperature, with_entropy, entropy_grad, self.chunk_tokens,
                                   self.autocast)


def training_pass(s: TrainConfig, layout: Layout | None, temperature: float, device: torch.device,
                  world: World = World.single(),
                  autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> TrainingPass:
    """`layout` None: padded rows of train.micro_batch_size episodes."""
    return TrainingPass(layout or Layout("padded", s.micro_batch_size, 0), temperature, device, world,
                        s.max_grad_norm, s.vocab_chunk_tokens, autocast)


def completion_logprobs(model, mb: MicroBatch, temperature: float, with_entropy: bool = False,
                        entropy_grad: bool = False, chunk_tokens: int = DEFAULT_CHUNK,
                        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [n, C] of mb's tokens after the prompt under `model` (and their entropies, from the same logits; with
    a gradient only when entropy_grad, since a graph through them keeps the logits alive until backward).

    The vocabulary pass runs `chunk_tokens` positions at a time from the final hidden states (grpo/train/head.py),
    so no [positions, V] tensor is ever whole; a model whose logits are not a plain linear head keeps the one-piece
    pass. `autocast`: the precision's forward context (grpo/train/precision.py)."""
    found = head_of(model)
    with autocast():
        if found is None:
            return logprobs_and_entropy(_predicting_outputs(model, mb), mb.source, mb.tokens.input_ids, temperature,
                                        with_entropy, entropy_grad)
        with head_bypassed(found) as head:
            hidden = _predicting_outputs(model, mb)  # [K, H]
        return chunked_logprobs_and_entropy(hidden, head.weight, mb.source, mb.tokens.input_ids, temperature,
                                            chunk_tokens, with_entropy, entropy_grad, head.bias)


def _predicting_outputs(model, mb: MicroBatch) -> torch.Tensor:
    """The model's outputs (logits, or hidden states with the head bypassed) at the positions that predict
    completion tokens: [K, V or H]. Only those go through the head when the model takes logits_to_keep."""
    keep = _logits_to_keep(model)
    packed = not isinstance(mb.logits_at, int)
    kwargs = {"logits_to_keep": mb.logits_at} if keep == "mask" or (keep == "int" and not packed) else {}
    out = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask, position_ids=mb.position_ids,
                use_cache=False, **kwargs, **(mb.varlen or {})).logits
    if not packed:  # padded rows: position t predicts token t+1, the completion is the last C positions
        C = mb.tokens.input_ids.shape[1]
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


def policy_update(policy, reference, optimizer, batch: TokenBatch, objective: Objective,
                  passes: TrainingPass) -> UpdateStats:
    """objective.mu optimizer steps on the batch (this rank's share of the step's episodes).

    On several ranks the loss is normalised by the global batch's episode and model-token counts, and scaled by the
    world size because DDP and FSDP average gradients over ranks, so the summed gradient is exactly that of the
    global batch's loss on one process."""
    world = passes.world
    micro_batches = cut_micro_batches(batch, passes)
    if objective.kl is not None:
        for mb in micro_batches:
            mb.tokens.ref_logprobs = _reference_logprobs(passes, policy, reference, mb)  # [n, C]
    batch_sequences, batch_tokens = (int(n) for n in world.sum([len(batch.episodes), batch.model_tokens]))
    grad_scale = float(world.size)
    # DDP all-reduces on every backward unless told not to: only the last micro-batch of a pass needs it. (FSDP
    # reduce-scatters each micro-batch on purpose: holding unsharded gradients would cost a whole model copy.)
    accumulate = policy.no_sync if isinstance(policy, torch.nn.parallel.DistributedDataParallel) else None
    fixed: list[BeforeUpdate | None] = [None] * len(micro_batches)  # set by the first pass, read by every pass
    figures = _Figures(passes.device, objective.mu)
    grad_norms = []
    skipped = False
    policy.train()
    for epoch in range(objective.mu):
        optimizer.zero_grad(set_to_none=True)
        for i, mb in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            tokens = mb.tokens
            with contextlib.nullcontext() if accumulate is None or last else accumulate():
                # The first pass measures the entropy; later ones only when the loss has an entropy bonus.
                logp, entropy = passes.logprobs(policy, mb, with_entropy=epoch == 0 or bool(objective.entropy_coef),
                                                entropy_grad=bool(objective.entropy_coef))
                if epoch == 0:
                    fixed[i] = before_update(objective, logp.detach(), tokens.old_logprobs, tokens.ref_logprobs,
                                             tokens.advantages, tokens.loss_mask)
                terms = assemble_loss(objective, LossInputs(
                    logp, entropy, _old_logprobs(objective, logp, tokens, fixed[i]), fixed[i].advantages,
                    tokens.ref_logprobs, fixed[i].weights.weight if fixed[i].weights is not None else None,
                    tokens.loss_mask, batch_sequences, batch_tokens))
                (terms.loss * grad_scale).backward()
            figures.add(epoch, tokens, logp, entropy, terms, fixed[i])
            del logp, entropy, terms
        grad_norm = torch.nn.utils.clip_grad_norm_([p for p in policy.parameters() if p.requires_grad],
                                                   passes.max_grad_norm)
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
    return figures.stats(micro_batches, world, objective.correction, grad_norms, skipped)


def cut_micro_batches(batch: TokenBatch, passes: TrainingPass) -> list[MicroBatch]:
    """The batch's micro-batches, laid out; every rank runs as many forward/backward passes (DDP's and FSDP's
    collectives pair them up)."""
    chunks = plan_micro_batches(batch.episodes, passes.layout)
    if passes.world.distributed:
        chunks = plan_micro_batches(batch.episodes, passes.layout, int(passes.world.max(float(len(chunks)))))
    return [micro_batch(batch, rows, passes.layout, passes.device) for rows in chunks]


def _old_logprobs(objective: Objective, logp: torch.Tensor, tokens: TokenBatch,
                  fixed: BeforeUpdate) -> torch.Tensor:
    """The ratio's old policy [n, C]. mu == 1: on-policy, the ratio is 1 but carries the gradient. mu > 1: later
    passes are off-policy against the sampler-time log-probs, or the trainer's own from the first pass. Stale
    episodes (off_policy): always the sampling policy's, so the clipped ratio is pi / pi_sampling from the first pass."""
    if objective.mu == 1 and not objective.off_policy:
        return logp.detach()
    return fixed.trainer_old if objective.old_from_trainer else tokens.old_logprobs


class _Figures:
    """The update's figures, added up on the device and read once at the end: a float() per micro-batch would stall
    a GPU. The first pass's are of the batch as sampled, before this step changed the policy."""

    NAMES = ("loss", "kl", "clipped", "entropy", "ratio", "gap", "tokens", "weight", "flagged")

    def __init__(self, device: torch.device, mu: int):
        self.sums = {name: torch.zeros((), device=device) for name in self.NAMES}
        self.mu = mu

    @torch.no_grad()
    def add(self, epoch: int, tokens: TokenBatch, logp: torch.Tensor, entropy: torch.Tensor | None,
            terms: LossTerms, fixed: BeforeUpdate) -> None:
        sums, mask = self.sums, tokens.loss_mask  # model tokens only: environment tokens are context
        if epoch == 0:
            sums["loss"] += terms.loss.detach()
            sums["tokens"] += mask.sum()
            sums["gap"] += ((tokens.old_logprobs - logp.detach()).abs() * mask).sum()
            sums["entropy"] += (entropy.detach() * mask).sum()
            if terms.kl is not None:
                sums["kl"] += (terms.kl * mask).sum()
            if fixed.weights is not None:
                sums["weight"] += fixed.weights.weight.sum()
                sums["flagged"] += fixed.weights.flagged.float().sum()
        sums["clipped"] += (terms.surrogate.clipped.float() * mask).sum() / self.mu
        sums["ratio"] += (terms.surrogate.ratio * mask).sum() / self.mu

    def stats(self, micro_batches: list[MicroBatch], world: World, correction: str, grad_norms: list[float],
              skipped: bool) -> UpdateStats:
        totals = {name: float(value) for name, value in self.sums.items()}
        totals["positions"] = float(sum(mb.positions for mb in micro_batches))
        totals["real_positions"] = float(sum(mb.real_positions for mb in micro_batches))
        rank_gap = totals["gap"] / max(totals["tokens"], 1.0)
        totals = dict(zip(totals, world.sum(list(totals.values()))))  # the global batch's figures
        tokens = max(totals["tokens"], 1.0)
        corrected = correction != "none"
        return UpdateStats(loss=totals["loss"], kl=totals["kl"] / tokens, clip_fraction=totals["clipped"] / tokens,
                           entropy=totals["entropy"] / tokens, grad_norm=sum(grad_norms) / len(grad_norms),
                           ratio_mean=totals["ratio"] / tokens, logprob_gap=totals["gap"] / tokens,
                           tokens=int(tokens), rank_logprob_gap=rank_gap, correction=correction,
                           correction_weight_mean=totals["weight"] / tokens if corrected else 1.0,
                           correction_flagged_fraction=totals["flagged"] / tokens if corrected else 0.0,
                           skipped=skipped,
                           padded_fraction=1.0 - totals["real_positions"] / max(totals["positions"], 1.0))


@torch.no_grad()
def _reference_logprobs(passes: TrainingPass, policy, reference, mb: MicroBatch) -> torch.Tensor:
    if reference is None:  # LoRA: the reference is the base model, i.e. the policy with its adapters off
        with unwrap(policy).disable_adapter():
            return passes.logprobs(policy, mb)[0]  # [n, C]
    return passes.logprobs(reference, mb)[0]  # [n, C]
