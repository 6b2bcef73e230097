"""The reward model: a sequence-classification model with one output (the score at the last non-pad token).
From a sequence-classification checkpoint it is loaded as it is; from a causal LM, its body is loaded and a new
scalar head (transformers' `score` layer, seeded by the recipe's seed) replaces the LM head. Either way the
result saves and loads with AutoModelForSequenceClassification.

Precision as in grpo train: the weights (and so the optimizer state and checkpoints) in model.master_dtype, the
forward and backward under torch.autocast in model.dtype when the two differ."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch

from grpo.config import ModelConfig
from grpo.dtypes import torch_dtype
from grpo.errors import UserError


def is_classifier(path: Path | str, trust_remote_code: bool = False) -> bool:
    """Whether the checkpoint at `path` is already a sequence classifier (else: a causal LM to put a head on)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    return any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))


def load_reward_model(cfg: ModelConfig, path: Path | str, tokenizer, device: torch.device):
    """The model in the master dtype on `device`, its pad id set (it finds the last real token by it)."""
    from transformers import AutoModelForSequenceClassification

    kernel = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
    classifier = is_classifier(path, cfg.trust_remote_code)
    extra = {} if classifier else {"num_labels": 1}
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, dtype=torch_dtype(cfg.master_dtype), trust_remote_code=cfg.trust_remote_code, **kernel, **extra)
    except ValueError as exc:  # an architecture with no *ForSequenceClassification class, or a bad kernel name
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise UserError(f"model.path: {path} cannot be loaded as a sequence classifier ({first}). grpo rm needs a "
                        f"model family that transformers has a ForSequenceClassification class for (Llama, Qwen2, "
                        f"Mistral, Gemma, ...).") from exc
    if model.config.num_labels != 1:
        raise UserError(f"model.path: {path} is a classifier with {model.config.num_labels} labels; a reward model "
                        f"has one score (num_labels=1). Start from its causal LM instead, or from a 1-label model.")
    if not classifier:
        print(f"note: {path} is a causal LM: a new scalar head is initialised on it (seed from the recipe)",
              file=sys.stderr, flush=True)
    model.config.pad_token_id = tokenizer.pad_token_id
    if cfg.gradient_checkpointing:
        # transformers 5.2x renamed the method; older releases only have the old name (as in grpo.modeling).
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False  # scoring reads one position; no generation, no KV cache
    return model.to(device)


def autocast_for(cfg: ModelConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """torch.autocast in the compute dtype when it differs from the master dtype; nothing to do otherwise."""
    if cfg.dtype == cfg.master_dtype:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch_dtype(cfg.dtype))
