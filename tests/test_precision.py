"""bf16 compute over fp32 master weights (grpo/train/precision.py): the policy learns at lr 1e-6, its forwards and
the transformers sampler run in bf16 while the optimizer steps fp32 weights, and a resumed run is bit-exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import grpo.train.trainer as trainer
import grpo.train.inflight as inflight
from grpo import resolve
from grpo.modeling import resolve_model_path
from grpo.parallel import World, close_world
from grpo.recipe import load_recipe
from grpo.rules import precision_rules

ROOT = Path(__file__).resolve().parents[1]
BF16 = ["model.dtype=bfloat16", "train.lr=1e-6", "logging.progress_bar=false", "logging.tensorboard=false"]


def tiny(out: Path, *more: str):
    return load_recipe(ROOT / "recipes" / "tiny.yaml", [f"output_dir={out}", *BF16, *more])


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "model.safetensors"))


@pytest.mark.slow
def test_bf16_compute_moves_the_fp32_masters_and_resumes_bit_for_bit(tmp_path):
    straight = trainer.train(tiny(tmp_path / "straight", "train.steps=3"))
    start = weights(Path(resolve_model_path("demo:tiny-arith")))
    end = weights(straight / "checkpoints" / "step-000003")
    total = sum(t.numel() for t in end.values())
    moved = sum(int((end[k] != start[k]).sum()) for k in end) / total
    # Not just a bf16 rounding of the start: an update of 1e-6 survives only in the fp32 masters.
    moved_past_bf16 = sum(int((end[k] != start[k].to(torch.bfloat16).float()).sum()) for k in end) / total
    assert {t.dtype for t in end.values()} == {torch.float32}
    assert moved >= 0.9 and moved_past_bf16 >= 0.9, (moved, moved_past_bf16)
    env = json.loads((straight / "environment.json").read_text())
    assert (env["compute_dtype"], env["master_dtype"], env["strategy"]) == ("bfloat16", "float32", "fsdp")

    resumed_dir = tmp_path / "resumed"
    trainer.train(tiny(resumed_dir, "train.steps=2"))
    trainer.train(tiny(resumed_dir, "train.steps=3"))
    resumed = weights(resumed_dir / "checkpoints" / "step-000003")
    assert all(torch.equal(resumed[k], end[k]) for k in end)
    moments = [torch.load(d / "checkpoints" / "step-000003" / "optimizer.pt", weights_only=False)["state"]
               for d in (straight, resumed_dir)]
    assert all(torch.equal(moments[0][n][k], moments[1][n][k]) for n in moments[0] for k in moments[0][n])


def test_forwards_and_the_sampler_run_in_bf16_while_masters_stay_fp32(tmp_path, monkeypatch):
    built = {}
    real_build = trainer.build_sampler

    def recording_build(backend, **kwargs):
        built.update(kwargs, backend=backend)
        return real_build(backend, **kwargs)

    monkeypatch.setattr(trainer, "build_sampler", recording_build)
    run = trainer.setup(tiny(tmp_path / "run", "train.steps=1", "sampler.max_new_tokens=6"), World.single())
    try:
        seen: list[torch.dtype] = []
        layer = trainer.unwrap(run.policy).model.layers[0]
        handle = layer.register_forward_hook(lambda module, args, out: seen.append(
            (out[0] if isinstance(out, tuple) else out).dtype))
        exp = inflight.sample_and_score(run, 1)
        sampled = set(seen)
        seen.clear()
        trainer.update_policy(run, exp)
        handle.remove()
        assert sampled == {torch.bfloat16}  # the transformers sampler decodes as the trainer computes
        assert set(seen) == {torch.bfloat16}  # the training forward
        assert {p.dtype for p in run.policy.parameters()} == {torch.float32}  # what the optimizer steps
        assert built["dtype"] == "bfloat16"  # a vLLM engine would be built in the compute dtype too
        assert run.precision.kind == "fsdp" and run.strategy == "fsdp"
    finally:
        run.sampler.close()
        close_world(World.single())


def test_float32_runs_keep_the_bare_model():
    cfg = load_recipe(ROOT / "recipes" / "tiny.yaml")
    assert resolve.strategy(cfg.distributed, 1, cfg.model) == "none"
    assert trainer.resolve_precision(cfg.model, "none", torch.device("cpu")).kind == "plain"


def test_masters_narrower_than_the_compute_dtype_are_refused():
    cfg = load_recipe(ROOT / "recipes" / "tiny.yaml")
    cfg.model.master_dtype = "bfloat16"
    assert any("model.master_dtype" in p for p in precision_rules(cfg))
    cfg.model.dtype = "bfloat16"
    assert precision_rules(cfg) == []  # pure bf16 is allowed (validate warns about the lr instead)


@pytest.mark.slow
def test_lora_keeps_a_bf16_base_and_fp32_adapters_under_autocast(tmp_path):
    pytest.importorskip("peft")
    run = trainer.setup(tiny(tmp_path / "lora", "train.steps=1", "model.lora.enabled=true",
                             "model.lora.target_modules=[q_proj,v_proj]", "train.lr=1e-3"), World.single())
    try:
        trainable = {p.dtype for p in run.policy.parameters() if p.requires_grad}
        frozen = {p.dtype for p in run.policy.parameters() if not p.requires_grad}
        assert trainable == {torch.float32} and frozen == {torch.bfloat16}
        assert run.precision.kind == "autocast" and run.strategy == "none"
        before = {n: p.detach().clone() for n, p in run.policy.named_parameters() if p.requires_grad}
        stats = trainer.update_policy(run, inflight.sample_and_score(run, 1))
        assert stats.grad_norm > 0
        moved = [n for n, p in run.policy.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
        assert moved  # the fp32 adapters learn (lora_B starts at zero, so it moves first)
    finally:
        run.sampler.close()
