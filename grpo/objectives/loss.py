"""Pure loss math: token log-probs, the clipped surrogate, the k3 KL estimator and loss aggregation
(the other surrogates are in surrogates.py, the other KL estimators in kl.py, the sampler correction in
correction.py).

Shapes: N sequences in a micro-batch, T completion positions, V vocabulary. `mask` [N, T] is 1.0 on completion
tokens and 0.0 on padding. Aggregation takes whole-batch counts so that summing micro-batch losses gives
exactly the loss of the full batch (gradient accumulation changes nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def logprobs_and_entropy(logits: torch.Tensor, source: torch.Tensor, targets: torch.Tensor, temperature: float,
                         with_entropy: bool, entropy_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of the targets, and the entropy at each position, from one pass over the vocabulary.

    logits [K, V]: the K positions whose logits predict completion tokens (a packed row's prompt end predicts the
    first token of every completion of its group, so K can be less than N * T); source [N, T]: which of the K
    predicts each target; targets [N, T] -> log-probs [N, T] and, with_entropy, entropies [N, T] (else None),
    carrying a gradient only with entropy_grad."""
    scaled = logits.float() / temperature  # [K, V]
    lse = torch.logsumexp(scaled, dim=-1)  # [K]
    logp = scaled[source, targets] - lse[source]  # [N, T]
    if not with_entropy:
        return logp, None
    # H = lse - sum softmax * scaled: the softmax is the only other [K, V] tensor, and lse is shared with logp.
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        entropy = lse - (torch.exp(scaled - lse.unsqueeze(-1)) * scaled).sum(-1)  # [K]
    return logp, entropy[source]  # [N, T]


def chunked_logprobs_and_entropy(hidden: torch.Tensor, weight: torch.Tensor, source: torch.Tensor,
                                 targets: torch.Tensor, temperature: float, chunk_tokens: int, with_entropy: bool,
                                 entropy_grad: bool = True, bias: torch.Tensor | None = None
                                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """logprobs_and_entropy from the LM head's input instead of its output, `chunk_tokens` positions at a time, so
    that no [K, V] tensor ever exists: the vocabulary pass's memory is set by the chunk, not the micro-batch.

    hidden [K, H] (the final norm's output at the K predicting positions), weight [V, H] (the LM head); source,
    targets [N, T] as in logprobs_and_entropy; bias [V] if the head has one. K <= chunk_tokens is one piece, exactly logprobs_and_entropy on
    the full logits (no recomputation: the small CPU runs pay nothing). Longer, each chunk's logits are made inside
    a checkpoint: the forward keeps only per-position figures, and the backward rebuilds one chunk's logits at a
    time. Values and gradients equal the one-piece pass (tests/test_vocab_chunks.py)."""
    K = hidden.shape[0]
    if K <= chunk_tokens:
        return logprobs_and_entropy(F.linear(hidden, weight, bias), source, targets, temperature, with_entropy,
                                    entropy_grad)
    flat_source, flat_targets = source.reshape(-1), targets.reshape(-1)  # [N*T]
    lse_parts, entropy_parts = [], []
    target_logit = None  # [N*T] scaled logit of each target, summed over the chunk that holds its position
    grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    for start in range(0, K, chunk_tokens):
        piece = hidden[start:start + chunk_tokens]  # [k, H]
        args = (piece, weight, bias, flat_source - start, flat_targets, temperature, with_entropy,
                entropy_grad and grad)
        lse, picked, entropy = (checkpoint(_chunk_figures, *args, use_reentrant=False) if grad
                                else _chunk_figures(*args))
        lse_parts.append(lse)
        entropy_parts.append(entropy)
        target_logit = picked if target_logit is None else target_logit + picked
    lse = torch.cat(lse_parts)  # [K]
    logp = (target_logit - lse[flat_source]).view_as(source)  # [N, T]
    if not with_entropy:
        return logp, None
    return logp, torch.cat(entropy_parts)[source]  # [N, T]


def _chunk_figures(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, local_source: torch.Tensor, targets: torch.Tensor,
                   temperature: float, with_entropy: bool, entropy_grad: bool
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One chunk of k positions: lse [k], the scaled target logit of every (position, target) pair whose position
    lies in this chunk (0 elsewhere) [P], and the entropy [k] (zeros when not asked for). Gathering for all P pairs
    and masking costs P elements a chunk and needs no host sync to find which pairs are here."""
    scaled = F.linear(hidden, weight, bias).float() / temperature  # [k, V]
    k = scaled.shape[0]
    lse = torch.logsumexp(scaled, dim=-1)  # [k]
    inside = (local_source >= 0) & (local_source < k)  # [P]
    picked = scaled[local_source.clamp(0, k - 1), targets] * inside  # [P]
    if not with_entropy:
        return lse, picked, torch.zeros_like(lse)
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        entropy = lse - (torch.exp(scaled - lse.unsqueeze(-1)) * scaled).sum(-1)  # [k]
    return lse, picked, entropy


@dataclass
class SurrogateOut:
    loss: torch.Tensor  # [N, T] per-token loss (to be aggregated)
    clipped: torch.Tensor  # [N, T] bool: the clip bound was active (gradient is zero there)
    ratio: torch.Tensor  # [N, T] pi / pi_old


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                      clip_low: float, clip_high: float, clip_ratio_c: float | None = None) -> SurrogateOut:
    """PPO clipped objective with separate bounds (DAPO clip-higher), as a loss to minimise.

    logp, old_logp [N, T]; advantages [N] (one per sequence, broadcast over its tokens) or [N, T] (per token).
    clip_ratio_c (dual clip, Ye et al. 2020, > 1): where A < 0 the objective is also bounded below by c * A, so a
    runaway ratio cannot make one token's loss unbounded; those tokens carry no gradient either.
    """
    ratio = torch.exp(logp - old_logp)  # [N, T]
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages  # [N, 1] or [N, T]
    unclipped = ratio * adv  # [N, T]
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv  # [N, T]
    objective = torch.minimum(unclipped, clipped)  # [N, T]
    was_clipped = clipped < unclipped  # [N, T] the min chose the clipped branch
    if clip_ratio_c is not None:
        floor = clip_ratio_c * adv  # [N, 1] or [N, T]
        dual = (adv < 0) & (objective < floor)  # [N, T] the dual clip is active
        objective = torch.where(dual, floor.expand_as(objective), objective)  # [N, T]
        was_clipped = was_clipped | dual
    return SurrogateOut(loss=-objective, clipped=was_clipped, ratio=ratio.detach())



def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str, batch_sequences: int,
              batch_tokens: int, constant: int | None = None) -> torch.Tensor:
    """Reduce a micro-batch's per-token loss [N, T] to its share of the batch loss (a scalar).

    token_mean     sum over all tokens of the batch / batch_tokens (DAPO: long sequences weigh more)
    sequence_mean  mean over sequences of each sequence's token mean (original GRPO)
    constant       sum / (batch_sequences * constant) (Dr. GRPO: no length bias, constant = max_new_tokens)
    """
    masked = per_token * mask  # [N, T]
    if mode == "token_mean":
        return masked.sum() / max(batch_tokens, 1)
    if mode == "sequence_mean":
        lengths = mask.sum(-1).clamp(min=1.0)  # [N]
        return (masked.sum(-1) / lengths).sum() / batch_sequences
    if mode == "constant":
        if not constant:
            raise ValueError("aggregate: mode 'constant' needs a positive constant")
        return masked.sum() / (batch_sequences * constant)
    raise ValueError(f"aggregate: unknown mode {mode!r}")
