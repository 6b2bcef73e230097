"""environment.json: what a run ran on, written beside its recipe (`grpo report` shows it)."""

from __future__ import annotations

import time
from typing import Any

import torch

from grpo.parallel import World


def environment(device: torch.device, world: World, strategy: str, packing: str,
                precision: dict[str, str] | None = None) -> dict[str, Any]:
    """The versions, the device, the ranks and how they shard, the training pass's layout (train.packing
    resolved: auto's choice is the machine's), and the precision (compute_dtype, master_dtype, how it casts)."""
    import platform

    import transformers

    import grpo

    return {"grpo": grpo.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "platform": platform.platform(), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
            "world_size": world.size, "strategy": strategy, "packing": packing, **(precision or {}),
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
