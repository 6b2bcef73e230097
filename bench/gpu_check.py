"""The GPU check: grpo's real training pass on models of real shapes, with nothing to download.

    python bench/gpu_check.py                     # on a GPU box: Qwen2.5-0.5B and -1.5B shapes, bf16
                                                  # (~5 minutes on an H100: an estimate, not yet run on one)
    python bench/gpu_check.py --sizes tiny        # anywhere (CI runs this on CPU so the script cannot rot)
    torchrun --nproc-per-node 8 bench/gpu_check.py --sizes 1.5b   # FSDP2 over the visible GPUs

For each shape (configs written below, weights random) it builds a batch like one GRPO step's (prompts of one
length, completions of varying lengths, so the padded path pays for its padding) and times
grpo.train.update.policy_update itself in each train.packing layout (padded rows; sequences packed without
padding; shared_prompt: a group's prompt once), with and without gradient checkpointing. It prints tokens/s (real
tokens, not padding), model FLOPs utilisation (6 x parameters x tokens per second over the chip's bf16 peak;
tokens count each sequence's prompt, so shared_prompt's figure is the effective one: it computes each prompt
once per group) and peak memory. If vllm imports, it also times generation and one weight sync through grpo's VLLMSampler.
Every figure is one line of JSON as well (`--json FILE`), for the README's table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpo.config import DistributedConfig, TrainConfig  # noqa: E402
from grpo.errors import UserError  # noqa: E402
from grpo.parallel import close_world, init_world, launched_world  # noqa: E402
from grpo.sampling.base import Completion  # noqa: E402
from grpo.train.rollouts import Rollout  # noqa: E402
from grpo.train.packing import choose_layout  # noqa: E402
from grpo.train.sharding import resolve_strategy, wrap  # noqa: E402
from grpo.train.update import policy_update  # noqa: E402

# Qwen2.5 shapes from their published config.json files (vocabulary 151936, tied embeddings for these two).
SHAPES = {
    "tiny": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024),
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936),
}
# Dense bf16 peak of the chip, FLOP/s (no sparsity), by a substring of torch.cuda.get_device_name().
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}


def build_model(size: str, dtype: torch.dtype, device: torch.device, attn: str = "sdpa"):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**SHAPES[size], max_position_embeddings=32768, tie_word_embeddings=True,
                         rope_theta=1e6, torch_dtype=dtype, attn_implementation=attn)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(dtype)
    return model


def step_batch(groups: int, group_size: int, prompt_len: int, max_completion: int, vocab: int) -> list[Rollout]:
    """One step's rollouts: completion lengths spread from a quarter of the maximum to all of it."""
    gen = torch.Generator().manual_seed(1)
    rollouts = []
    for g in range(groups):
        prompt = torch.randint(3, vocab, (prompt_len,), generator=gen).tolist()
        for i in range(group_size):
            length = max_completion // 4 + (3 * max_completion // 4) * i // max(group_size - 1, 1)
            ids = torch.randint(3, vocab, (length,), generator=gen).tolist()
            rollouts.append(Rollout("", prompt, Completion(ids, [-1.0] * length, "", "length"), {},
                                    advantage=1.0 if i % 2 else -1.0))
    return rollouts


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def time_update(size: str, args, world, device, checkpointing: bool, packing: str) -> dict:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build_model(size, dtype, device, args.attn)
    if checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers 5.2x's name
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    params = sum(p.numel() for p in model.parameters())
    model = wrap(model, resolve_strategy(DistributedConfig(), world), DistributedConfig(), device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    train = TrainConfig(micro_batch_size=args.micro_batch, loss_aggregation="token_mean", max_grad_norm=1.0)
    # Packed layouts take micro-batches by tokens: as many as a padded micro-batch of the longest rows holds.
    budget = 0 if packing == "padded" else args.micro_batch * (args.prompt_len + args.completion_len)
    layout = choose_layout(packing, args.micro_batch, budget, model, device)
    rollouts = step_batch(args.groups, args.group_size, args.prompt_len, args.completion_len,
                          SHAPES[size]["vocab_size"])
    share = len(rollouts) // world.size
    mine = rollouts[world.rank * share:(world.rank + 1) * share]
    real_tokens = sum(len(r.prompt_ids) + len(r.completion.token_ids) for r in rollouts)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.steps + 1):  # the first step warms kernels and the allocator up: not counted
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        stats = policy_update(model, None, optimizer, mine, train, temperature=1.0,
                              loss_constant=args.completion_len, pad_id=0, device=device, world=world, layout=layout)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    step_s = sorted(times[1:])[len(times[1:]) // 2]
    tokens_per_s = real_tokens / step_s
    peak = peak_flops(device)
    return {"shape": size, "parameters": params, "world_size": world.size, "packing": layout.kind,
            "attention": args.attn, "gradient_checkpointing": checkpointing,
            "dtype": str(dtype).removeprefix("torch."), "sequences": len(rollouts), "real_tokens": real_tokens,
            "padded_fraction": round(stats.padded_fraction, 3), "step_s": round(step_s, 4),
            "tokens_per_s": round(tokens_per_s, 1),
            "mfu": round(6 * params * tokens_per_s / (peak * world.size), 4) if peak else None,
            "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            if device.type == "cuda" else None}


def time_vllm(size: str, args, device) -> dict | None:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return None
    import tempfile

    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    from grpo.sampling.base import SamplingSettings
    from grpo.sampling.vllm import VLLMSampler

    model = build_model(size, torch.bfloat16 if device.type == "cuda" else torch.float32, device)
    out = Path(tempfile.mkdtemp()) / size
    vocab = {f"t{i}": i for i in range(SHAPES[size]["vocab_size"])}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")),
                                  eos_token="t1", pad_token="t0")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    t0 = time.perf_counter()
    sampler = VLLMSampler(str(out), tokenizer=tok, dtype="bfloat16" if device.type == "cuda" else "float32",
                          gpu_memory_utilization=0.5, max_model_len=args.prompt_len + args.completion_len)
    start_s = time.perf_counter() - t0
    prompts = [list(range(3, 3 + args.prompt_len)) for _ in range(args.groups)]
    settings = SamplingSettings(n=args.group_size, max_new_tokens=args.completion_len, seed=0)
    t0 = time.perf_counter()
    groups = sampler.generate(prompts, settings)
    gen_s = time.perf_counter() - t0
    tokens = sum(len(c.token_ids) for g in groups for c in g.completions)
    t0 = time.perf_counter()
    sampler.sync_weights(model)
    sync_s = time.perf_counter() - t0
    sampler.close()
    return {"shape": size, "vllm_engine_start_s": round(start_s, 1), "vllm_generated_tokens_per_s":
            round(tokens / gen_s, 1), "vllm_weight_sync_s": round(sync_s, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="0.5b,1.5b", help="comma-separated: " + ", ".join(SHAPES))
    p.add_argument("--groups", type=int, default=8, help="prompts in the step")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--completion-len", type=int, default=1024)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    p.add_argument("--packing", default="padded,sequences,shared_prompt", help="train.packing layouts to time")
    p.add_argument("--attn", default="sdpa", help="attention kernel (flash_attention_2 if flash-attn is installed)")
    p.add_argument("--json", help="also write the figures here, one JSON object a line")
    args = p.parse_args()
    world = launched_world()
    device = torch.device("cuda", world.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    init_world(world, device, timeout_s=900)
    rows = []
    try:
        for size in args.sizes.split(","):
            for packing in args.packing.split(","):
                for checkpointing in (False, True):
                    try:
                        rows.append(time_update(size, args, world, device, checkpointing, packing))
                    except UserError as exc:  # e.g. shared_prompt with a flash-attention kernel: said, not fatal
                        rows.append({"shape": size, "packing": packing, "skipped": str(exc)})
                        break
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
            if world.is_main and not world.distributed:
                found = time_vllm(size, args, device)
                rows += [found] if found else []
    finally:
        close_world(world)
    if not world.is_main:
        return
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"gpu_check on {name}, torch {torch.__version__}, world size {world.size}")
    for row in rows:
        print(json.dumps(row))
    if args.json:
        Path(args.json).write_text("".join(json.dumps(r) + "\n" for r in rows))
    if os.environ.get("GPU_CHECK_VLLM_REQUIRED") and not any("vllm_engine_start_s" in r for r in rows):
        sys.exit("vllm was required (GPU_CHECK_VLLM_REQUIRED) but did not import")


if __name__ == "__main__":
    main()
