"""Checkpoint state on 2 ranks (gloo): gathered whole on rank 0 only, and loaded back by broadcast from rank 0.

    torchrun --nproc-per-node 2 rank0_state.py MODEL_DIR OUT_DIR   # writes OUT_DIR/rank{r}.json
"""

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from grpo.config import DistributedConfig, ModelConfig
from grpo.parallel import close_world, init_world, launched_world
from grpo.train.precision import resolve_precision
from grpo.train.sharding import full_model_state, full_optimizer_state, load_full_optimizer_state, wrap


def build(model_dir: str, precision, device):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=precision.master)
    model = wrap(model, "fsdp", DistributedConfig(), device, precision=precision)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)


def local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def main(model_dir: str, out_dir: str) -> None:
    world = launched_world()
    device = torch.device("cpu")
    init_world(world, device, timeout_s=120)
    precision = resolve_precision(ModelConfig(dtype="bfloat16"), "fsdp", device)
    model, optimizer = build(model_dir, precision, device)
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids).logits.float().square().mean().backward()
    optimizer.step()
    weights = full_model_state(model)
    saved = full_optimizer_state(model, optimizer)
    # Load the saved state into a fresh optimizer: rank 0 passes it, rank 1 nothing; shards must come back equal.
    fresh, fresh_optimizer = build(model_dir, precision, device)
    load_full_optimizer_state(fresh, fresh_optimizer, saved if world.is_main else None)
    names = {p: n for n, p in model.named_parameters()}
    fresh_by_name = dict(fresh.named_parameters())
    equal = all(torch.equal(local(v), local(fresh_optimizer.state[fresh_by_name[names[p]]][k]))
                for p, entries in optimizer.state.items() for k, v in entries.items())
    report = {"weights": len(weights), "optimizer_entries": len(saved.get("state", {})),
              "weight_dtypes": sorted({str(t.dtype) for t in weights.values()}),
              "whole": all(not hasattr(t, "device_mesh") for t in weights.values()),
              "loaded_shards_equal": equal, "params": len(names)}
    (Path(out_dir) / f"rank{world.rank}.json").write_text(json.dumps(report))
    close_world(world)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
