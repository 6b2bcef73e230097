"""One source for precision: model.dtype is the compute dtype, model.master_dtype the dtype of the stored weights
and the optimizer state. Which mechanism casts between them is chosen once, at setup, from the strategy:

fsdp      FSDP2's MixedPrecisionPolicy: the sharded masters are gathered as compute-dtype copies for each forward
          and backward, gradients are reduced in reduce_dtype (default: the master dtype) into master-dtype shards
          the optimizer steps (torchtitan's way). Full fine-tuning takes this path at any world size, 1 included,
          whenever the two dtypes differ.
autocast  torch.autocast in the compute dtype around every forward: LoRA (the frozen base is stored in the compute
          dtype, the adapters in the master dtype) and DDP (whole master copies per rank).
plain     nothing to cast: the compute dtype is the master dtype (the CPU demo's float32).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from grpo.config import ModelConfig
from grpo.dtypes import dtype_name, torch_dtype


@dataclass(frozen=True)
class Precision:
    compute: torch.dtype
    master: torch.dtype
    kind: str  # fsdp | autocast | plain
    device_type: str = "cpu"
    reduce: torch.dtype | None = None  # fsdp: the gradient reduction dtype
    lora: bool = False

    @property
    def load_dtype(self) -> torch.dtype:
        """What the weights are loaded in: a LoRA base is frozen and never stepped, so it needs no master copy
        (its adapters are then cast to the master dtype)."""
        return self.compute if self.lora else self.master

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context every forward of the policy runs in (the trainer's passes and the transformers sampler's)."""
        if self.kind != "autocast":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.compute)

    def mp_policy(self):
        from torch.distributed.fsdp import MixedPrecisionPolicy

        return MixedPrecisionPolicy(param_dtype=self.compute, reduce_dtype=self.reduce or self.master)

    def names(self) -> dict[str, str]:
        return {"compute_dtype": dtype_name(self.compute), "master_dtype": dtype_name(self.master),
                "precision": self.kind}


def resolve_precision(model: ModelConfig, strategy: str, device: torch.device,
                      reduce_dtype: str | None = None) -> Precision:
    compute, master = torch_dtype(model.dtype), torch_dtype(model.master_dtype)
    lora = model.lora.enabled
    if strategy == "fsdp" and not lora:
        kind = "fsdp"
    elif compute != master:
        kind = "autocast"
    else:
        kind = "plain"
    return Precision(compute=compute, master=master, kind=kind, device_type=device.type,
                     reduce=torch_dtype(reduce_dtype) if reduce_dtype else None, lora=lora)
