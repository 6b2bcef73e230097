"""How the policy is spread over ranks (nothing at world size 1, DDP, or FSDP2), and the world-size-free form of
its weights and optimizer state that checkpoints hold: full tensors keyed by parameter name, so a run saved on
N ranks resumes on M.

FSDP2 (`fully_shard`) shards each decoder layer and then the root (embeddings, final norm, head); DDP keeps a
whole copy per rank and all-reduces gradients. Both average gradients over ranks; the update scales each
rank's loss by the world size so that the result is the sum, i.e. the gradient of the global batch's loss.
"""

from __future__ import annotations

from typing import Any

import torch

from grpo.config import DistributedConfig
from grpo.parallel import World

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_strategy(cfg: DistributedConfig, world: World) -> str:
    """none on one process; auto means fsdp (it fits any model; ddp is faster for models that fit whole)."""
    if not world.distributed:
        return "none"
    return "fsdp" if cfg.strategy == "auto" else cfg.strategy


def wrap(model: torch.nn.Module, strategy: str, cfg: DistributedConfig, device: torch.device,
         trainable: bool = True) -> torch.nn.Module:
    if strategy == "none":
        return model
    if strategy == "ddp":
        if not trainable:
            return model  # a frozen reference needs no gradient sync: each rank keeps its own copy
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs: dict[str, Any] = {"reshard_after_forward": cfg.reshard_after_forward}
    if cfg.param_dtype or cfg.reduce_dtype:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=DTYPES.get(cfg.param_dtype),
                                                   reduce_dtype=DTYPES.get(cfg.reduce_dtype))
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    return model


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a transformers causal LM (model.model.layers for Llama, Qwen, Mistral, ...)."""
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        node: Any = model
        for part in path.split("."):
            node = getattr(node, part, None)
            if node is None:
                break
        if isinstance(node, torch.nn.ModuleList):
            return list(node)
    raise ValueError(f"distributed.strategy=fsdp: cannot find the decoder layers of {type(model).__name__} "
                     f"(looked for model.layers, transformer.h, gpt_neox.layers); use distributed.strategy=ddp")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a DDP wrapper (an FSDP2 module is the model itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _full(t: torch.Tensor) -> torch.Tensor:
    """A whole tensor on the CPU, gathered from the ranks when it is a shard (collective for DTensors)."""
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return t.detach().cpu()


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every weight whole, by name. All ranks must call it (FSDP gathers shard by shard)."""
    return {name: _full(t) for name, t in unwrap(model).state_dict().items()}


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state keyed by parameter name with whole tensors: independent of the world size.
    All ranks must call it."""
    names = {p: n for n, p in unwrap(model).named_parameters()}
    state = {}
    groups = []
    for group in optimizer.param_groups:
        groups.append({**{k: v for k, v in group.items() if k != "params"},
                       "params": [names[p] for p in group["params"]]})
        for p in group["params"]:
            if p in optimizer.state:
                state[names[p]] = {k: _full(v) if torch.is_tensor(v) else v for k, v in optimizer.state[p].items()}
    return {"format": "by-name", "state": state, "param_groups": groups}


def load_full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Inverse of full_optimizer_state on any world size: each rank keeps the slice of its own shards."""
    if saved.get("format") != "by-name":  # checkpoints written before the by-name format (1 process only)
        optimizer.load_state_dict(saved)
        return
    params = dict(unwrap(model).named_parameters())
    for group, saved_group in zip(optimizer.param_groups, saved["param_groups"]):
        group.update({k: v for k, v in saved_group.items() if k != "params"})
    for name, entries in saved["state"].items():
        p = params[name]
        optimizer.state[p] = {k: _like(v, p) if torch.is_tensor(v) and k != "step" else v
                              for k, v in entries.items()}


def _like(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """`full` laid out as `param` is: the same shard of the same mesh for a DTensor, else a plain copy."""
    full = full.to(dtype=param.dtype)
    if hasattr(param, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(param.device), param.device_mesh, param.placements)
    return full.to(param.device)
