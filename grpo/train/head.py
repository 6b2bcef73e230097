"""The LM head taken out of the model's forward, so the trainer computes log-probs over the vocabulary in chunks
(grpo.objectives.loss.chunked_logprobs_and_entropy) instead of receiving a [positions, V] logits tensor.

The forward still runs through the model's own __call__ (FSDP's hooks gather the root's parameters, the head's
included, and keep them gathered until the backward: FSDP2 never reshards the root after its forward), with the
head swapped for a passthrough for the duration of the call: the "logits" it returns are the final hidden states
at exactly the positions the logits would have been kept for."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch

# FSDP2 warns when a root returns a view (an in-place op on it would skip its pre-backward hook); the hidden states
# the bypassed head passes through are a slice of the last layer's output, and nothing here modifies them in place.
warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")

# Models that transform the head's output (Gemma's soft-capping, Cohere's and Granite's scaling): their logits are
# not F.linear(hidden, weight), so they keep the unchunked pass.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


class _Passthrough(torch.nn.Module):
    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden


def _base(model: torch.nn.Module) -> torch.nn.Module:
    base = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    return base.get_base_model() if hasattr(base, "get_base_model") else base


def head_of(model: torch.nn.Module) -> tuple[torch.nn.Module, str, torch.nn.Linear] | None:
    """(the module holding the head, its attribute name, the head) when the logits are a plain linear map of the
    hidden states; None when they are not (a transform after the head, or a head that is not a Linear)."""
    base = _base(model)
    config = getattr(base, "config", None)
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in _LOGIT_TRANSFORMS):
        return None
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear):
        return None
    for name, child in base.named_children():
        if child is head:
            return base, name, head
    return None


@contextlib.contextmanager
def head_bypassed(found: tuple[torch.nn.Module, str, torch.nn.Linear]) -> Iterator[torch.nn.Linear]:
    """Inside: the model's forward returns hidden states where it returned logits. Yields the head, whose weight
    (gathered by FSDP during the forward) the caller applies chunk by chunk."""
    owner, name, head = found
    setattr(owner, name, _Passthrough())
    try:
        yield head
    finally:
        setattr(owner, name, head)
