"""The training pass's layout (train.packing), chosen once per run: what the model's attention kernel allows
(choose_layout), then checked on a probe batch against the padded layout's log-probs (checked_layout), so a model
whose attention ignores position ids or custom masks never trains on wrong log-probs."""

from __future__ import annotations

import contextlib
import sys
from typing import Callable

import torch

from grpo.errors import UserError
from grpo.sampling.base import Completion
from grpo.train.episodes import Episode
from grpo.train.packing import Layout, make_micro_batch
from grpo.train.sharding import unwrap
from grpo.train.update import completion_logprobs


def training_layout(packing: str, micro_batch_size: int, max_tokens: int, policy, pad_id: int,
                    device: torch.device, compute_dtype: torch.dtype | None = None,
                    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> Layout:
    """train.packing resolved for this model and device, and proven on the probe batch."""
    chosen = choose_layout(packing, micro_batch_size, max_tokens, unwrap(policy), device)
    return checked_layout(chosen, policy, pad_id, device, packing != "auto", compute_dtype, autocast)


def choose_layout(packing: str, micro_batch_size: int, max_tokens: int, model, device: torch.device) -> Layout:
    """train.packing resolved against the model's attention kernel, once per run.

    shared_prompt needs a 4D mask, so an sdpa or eager kernel and no sliding window (a custom mask replaces the
    window). auto takes it on CPU, where the prompt's G-fold forward is most of the cost and rows are short; on
    GPUs the long completions of reasoning runs make its dense mask cost more than it saves, and varlen
    flash-attention kernels pack sequences for free."""
    config = model.config
    kernel = getattr(config, "_attn_implementation", None) or "eager"
    varlen = "flash" in kernel
    masks_ok = kernel in ("sdpa", "eager") and not _windowed(config)
    kind = packing
    if kind == "auto":
        kind = "shared_prompt" if device.type == "cpu" and masks_ok else "sequences"
    if kind == "shared_prompt" and not masks_ok:
        why = f"the {kernel} attention kernel" if kernel not in ("sdpa", "eager") else "its sliding-window layers"
        raise UserError(f"train.packing: shared_prompt needs a 4D attention mask, which this model cannot take "
                        f"({why}); use train.packing=sequences or padded")
    row_tokens = None if kind == "sequences" and varlen else 0
    return Layout(kind, micro_batch_size, max_tokens, row_tokens,
                  mask_dtype=torch.bool if kernel == "sdpa" else torch.float32)


def _windowed(config) -> bool:
    kinds = getattr(config, "layer_types", None) or []
    if any("sliding" in str(k) for k in kinds):
        return True
    return bool(getattr(config, "sliding_window", None)) and bool(getattr(config, "use_sliding_window", True))


@torch.no_grad()
def checked_layout(layout: Layout, policy, pad_id: int, device: torch.device, explicit: bool,
                   compute_dtype: torch.dtype | None = None,
                   autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> Layout:
    """`layout` if it gives this model the padded layout's log-probs on a small probe batch (two groups of
    random tokens, ragged), else padded with a warning (train.packing=auto) or an error (asked for by name):
    a model whose attention ignores position ids or custom masks would otherwise train on wrong log-probs."""
    if layout.kind == "padded":
        return layout
    gen = torch.Generator().manual_seed(0)
    vocab = unwrap(policy).config.vocab_size
    ids = lambda n: torch.randint(0, vocab, (n,), generator=gen).tolist()  # noqa: E731
    # Two groups of three, and a long pair that makes rows wide enough for `sequences` to put two pairs in one:
    # every layout must then keep attention inside each sequence (and each completion) by itself.
    probe = [Episode.one_turn(prompt, Completion(ids(c), [0.0] * c, "", "stop"), group_id=g)
             for g, (prompt, lengths) in enumerate(((ids(5), (4, 2, 6)), (ids(3), (4, 2, 6)), (ids(4), (14,))))
             for c in lengths]
    padded = make_micro_batch(probe, Layout("padded", len(probe), 0), pad_id, device)
    was_training = policy.training
    policy.eval()  # no dropout: both layouts must see the same function
    try:
        want = completion_logprobs(policy, padded, 1.0, autocast=autocast)[0]  # [7, 14]
        got = completion_logprobs(policy, make_micro_batch(probe, layout, pad_id, device), 1.0,
                                  autocast=autocast)[0]  # [7, 14]
    finally:
        policy.train(was_training)
    gap = float(((want - got).abs() * padded.tokens.loss_mask).max())
    dtype = compute_dtype or next(policy.parameters()).dtype  # mixed precision computes in model.dtype
    tolerance = 1e-3 if dtype == torch.float32 else 5e-2  # bf16 rounds differently per layout
    if gap <= tolerance:
        return layout
    if explicit:
        raise UserError(f"train.packing: {layout.kind} changes this model's log-probs (largest gap {gap:.3g} on a "
                        f"probe batch): its attention does not follow the packed layout. Use train.packing=padded.")
    print(f"note: train.packing=auto: {layout.kind} changes this model's log-probs (gap {gap:.3g}); training with "
          f"padded rows", file=sys.stderr)
    return Layout("padded", layout.micro_batch_size, layout.max_tokens)
