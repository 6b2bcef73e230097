"""How the policy is spread over ranks (nothing at world size 1, DDP, or FSDP2), and the world-size-free form of
its weights and optimizer state that checkpoints hold: full tensors keyed by parameter name, so a run saved on
N ranks resumes on M.

FSDP2 (`fully_shard`) shards each decoder layer and then the root (embeddings, final norm, head); DDP keeps a
whole copy per rank and all-reduces gradients. Both average gradients over ranks; the update scales each
rank's loss by the world size so that the result is the sum, i.e. the gradient of the global batch's loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from grpo.config import DistributedConfig
from grpo.parallel import World
from grpo.train.precision import Precision



def wrap(model: torch.nn.Module, strategy: str, cfg: DistributedConfig, device: torch.device,
         trainable: bool = True, precision: Precision | None = None) -> torch.nn.Module:
    """The model as `strategy` runs it. fsdp: each decoder layer, then the root, sharded, with the mixed-precision
    policy of `precision` (the compute dtype gathered from master-dtype shards) when it is an fsdp one."""
    if strategy == "none":
        return model
    if strategy == "ddp":
        if not trainable:
            return model  # a frozen reference needs no gradient sync: each rank keeps its own copy
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import fully_shard

    kwargs: dict[str, Any] = {"reshard_after_forward": cfg.reshard_after_forward}
    if precision is not None and precision.kind == "fsdp":
        kwargs["mp_policy"] = precision.mp_policy()
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    # The root (embeddings, final norm, head) stays gathered from its forward to its backward, as FSDP2 does by
    # default: the trainer applies the head itself after the forward, chunk by chunk (grpo/train/head.py).
    fully_shard(model, **{**kwargs, "reshard_after_forward": False})
    return model


def wrap_from_rank0(model: torch.nn.Module, strategy: str, cfg: DistributedConfig, device: torch.device,
                    world: World, trainable: bool = True, precision: Precision | None = None) -> torch.nn.Module:
    """wrap(), where rank 0 alone read the weights and every other rank built the model on the meta device: a
    node never holds one full copy of the model per rank. FSDP: each rank shards its (empty) model, then takes its
    shards of rank 0's weights by broadcast; DDP and a frozen reference: whole weights broadcast from rank 0."""
    if not world.distributed:
        return wrap(model, strategy, cfg, device, trainable, precision)
    empty = _on_meta(model)
    if strategy != "fsdp":
        if empty:
            model.to_empty(device=device)
            if callable(getattr(model, "tie_weights", None)):
                # a model built on the meta device comes untied: its head would be one more parameter than rank
                # 0's, and the broadcasts below would pair different tensors (a hang, then a timeout)
                model.tie_weights()
        for tensor in [*model.parameters(), *model.buffers()]:
            torch.distributed.broadcast(tensor.data, src=0)
        return wrap(model, strategy, cfg, device, trainable, precision)
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    whole = {} if empty else model.state_dict()  # references to rank 0's loaded tensors, freed once sent
    model = wrap(model, strategy, cfg, device, trainable, precision)
    if empty:
        model.to_empty(device=device)
    set_model_state_dict(model, whole, options=_full_options(broadcast_from_rank0=True))
    del whole
    for buffer in model.buffers():  # not in the state dict (rotary frequencies): rank 0's, as computed at load
        torch.distributed.broadcast(buffer.data, src=0)
    return model


def _on_meta(model: torch.nn.Module) -> bool:
    return any(p.device.type == "meta" for p in model.parameters())


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


@contextlib.contextmanager
def gathered(model: torch.nn.Module, reshard_after_forward: bool) -> Iterator[None]:
    """FSDP2: every unit's weights gathered once (in the compute dtype, under mixed precision) and kept for the
    whole block, so a decoding loop's hundreds of forwards run no all-gather each. Not the root's setting: FSDP2
    never reshards the root after its forward, and the trainer's head bypass counts on that. Elsewhere: nothing."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not units:
        yield
        return
    for unit in units:
        unit.unshard()
        if unit is not model:
            unit.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for unit in units:
            if unit is not model:
                unit.set_reshard_after_forward(reshard_after_forward, recurse=False)
            unit.reshard()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a DDP wrapper (an FSDP2 module is the model itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _full_options(**extra):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, **extra)


def reshard_all(model: torch.nn.Module) -> None:
    """Every FSDP unit back to its shards: a no-grad forward (eval, the reference) leaves the root's gathered
    compute-dtype copies in place, and a state dict must read the master shards, not those."""
    from torch.distributed.fsdp import FSDPModule

    for unit in model.modules():
        if isinstance(unit, FSDPModule):
            unit.reshard()


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every weight whole, by name, on rank 0's CPU; an empty dict on every other rank, which only sends its
    shards (torch.distributed.checkpoint gathers one tensor at a time, so rank 0 never holds more than the
    result). All ranks must call it."""
    if not torch.distributed.is_initialized():  # one process, nothing sharded: the weights as they are
        return {name: t.detach().cpu() for name, t in unwrap(model).state_dict().items()}
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    reshard_all(model)
    return get_model_state_dict(model, options=_full_options())


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, sharded: bool = True) -> dict:
    """The optimizer's state keyed by parameter name with whole tensors, independent of the world size: on rank 0,
    {} on every other rank when `sharded` (each helps gather one tensor at a time and drops it at once, so no rank
    but 0 ever holds more than one tensor of it). All ranks must call it."""
    if sharded:
        reshard_all(model)
    keep = not sharded or not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    names = {p: n for n, p in unwrap(model).named_parameters()}
    state = {}
    for p, entries in optimizer.state.items():
        whole = {k: _whole_on_cpu(v) if torch.is_tensor(v) else v for k, v in entries.items()}
        if keep:
            state[names[p]] = whole
    if not keep:
        return {}
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [names[p] for p in g["params"]]}
              for g in optimizer.param_groups]
    return {"format": "by-name", "state": state, "param_groups": groups}


def _whole_on_cpu(t: torch.Tensor) -> torch.Tensor:
    """A whole tensor on the CPU, gathered from the ranks when it is a shard (a collective for DTensors)."""
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().cpu()


def load_full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: dict | None,
                              sharded: bool = True) -> None:
    """Inverse of full_optimizer_state on any world size. `sharded`: rank 0 passes the saved state, the others
    None; its layout is broadcast first, then each tensor is scattered from rank 0 into every rank's own shard,
    one at a time, so no other rank ever reads the file or holds the whole state."""
    if saved is not None and saved.get("format") != "by-name":  # written before the by-name format (1 process)
        optimizer.load_state_dict(saved)
        return
    if sharded:
        saved = _broadcast_layout(saved)
    params = dict(unwrap(model).named_parameters())
    for group, saved_group in zip(optimizer.param_groups, saved["param_groups"]):
        group.update({k: v for k, v in saved_group.items() if k != "params"})
    for name in sorted(saved["state"]):  # the same order on every rank: each tensor is a collective
        p = params[name]
        optimizer.state[p] = {k: _shard_like(v, p, k) if isinstance(v, (torch.Tensor, _Meta)) else v
                              for k, v in saved["state"][name].items()}


class _Meta(tuple):
    """What ranks other than 0 learn of a saved tensor before it is scattered: (shape, dtype)."""


def _broadcast_layout(saved: dict | None) -> dict:
    """Rank 0's saved state with every tensor replaced by its shape and dtype, on every rank; rank 0 keeps its
    tensors."""
    layout = None
    if torch.distributed.get_rank() == 0:
        layout = {"param_groups": saved["param_groups"], "state": {
            name: {k: _Meta((tuple(v.shape), v.dtype)) if torch.is_tensor(v) else v for k, v in entries.items()}
            for name, entries in saved["state"].items()}}
    box = [layout]
    torch.distributed.broadcast_object_list(box, src=0)
    return saved if torch.distributed.get_rank() == 0 else box[0]


def _shard_like(value, param: torch.Tensor, key: str) -> torch.Tensor:
    """A saved tensor (on rank 0; a _Meta elsewhere) laid out as `param` is: for a DTensor, scattered from rank 0
    into each rank's shard; otherwise broadcast whole. The moments take the parameter's dtype; fused AdamW's
    "step" keeps its own."""
    if isinstance(value, _Meta):
        shape, dtype = value
        value = torch.empty(shape, dtype=dtype)
    dtype = value.dtype if key == "step" else param.dtype
    if hasattr(param, "device_mesh") and value.shape == param.shape:
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(value.to(device=param.device, dtype=dtype), param.device_mesh, param.placements,
                                 src_data_rank=0)
    value = value.to(device=param.device, dtype=dtype)
    if torch.distributed.is_initialized():
        torch.distributed.broadcast(value, src=0)
    return value
