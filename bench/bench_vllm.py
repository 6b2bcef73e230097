"""vLLM sampler vs transformers sampler: generation tokens/s, engine start and weight-sync time, same machine, same run.

    .venv-vllm/bin/python bench/bench_vllm.py [--model DIR] [--prompts 8] [--group 8] [--new-tokens 48]

Each backend runs in its own child process (vLLM's CPU backend binds this process's OpenMP threads when it starts,
which would skew a transformers measurement taken after it). Without --model a random 4-layer Llama with the demo
model's shape (hidden 128, head_dim 64, character vocabulary) is built in a temporary directory; EOS is then never
favoured, so every completion runs to --new-tokens and both backends generate the same number of tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "Question: {name} has {a} apples and buys {b} more. How many apples does {name} have now?\nAnswer:"
NAMES = ["Tom", "Ana", "Ben", "Mia", "Sam", "Lea", "Max", "Zoe"]


def build_model(out: Path) -> None:
    from grpo.demo.model import build_tiny_llama
    from grpo.demo.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    build_tiny_llama(len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, layers=4).save_pretrained(out)
    tok.save_pretrained(out)


def child(backend: str, model_dir: str, prompts: int, group: int, new_tokens: int, repeats: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpo.sampling.base import SamplingSettings

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = [tok(PROMPT.format(name=NAMES[i % 8], a=i + 2, b=2 * i + 1))["input_ids"] for i in range(prompts)]
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    t0 = time.perf_counter()
    if backend == "vllm":
        from grpo.sampling.vllm import VLLMSampler

        sampler = VLLMSampler(model_dir, tokenizer=tok, seed=0, dtype="float32", kv_cache_memory_bytes=256 * 2**20,
                              max_model_len=512, enforce_eager=True)
    else:
        from grpo.sampling.hf import HFSampler

        sampler = HFSampler(policy, tok, generation_batch_size=prompts * group)
    start_s = time.perf_counter() - t0
    rates, syncs = [], []
    for r in range(repeats + 1):  # the first round warms caches and allocators; it is not counted
        settings = SamplingSettings(n=group, temperature=1.0, max_new_tokens=new_tokens, seed=r)
        t0 = time.perf_counter()
        groups = sampler.generate(ids, settings)
        seconds = time.perf_counter() - t0
        tokens = sum(len(c.token_ids) for g in groups for c in g.completions)
        with torch.no_grad():  # a stand-in optimizer step, so every sync moves real weights
            for p in policy.parameters():
                p.mul_(1.0001)
        t0 = time.perf_counter()
        sampler.sync_weights(policy)
        sync_s = time.perf_counter() - t0
        if r:
            rates.append(tokens / seconds)
            syncs.append(sync_s)
    return {"backend": backend, "start_s": start_s, "tokens_per_s": statistics.median(rates),
            "sync_s": statistics.median(syncs), "tokens_per_round": tokens}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["vllm", "hf"])
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model, args.prompts, args.group, args.new_tokens, args.repeats)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or str(Path(tmp) / "model")
        if not args.model:
            build_model(Path(model_dir))
        results = {}
        for backend in ("hf", "vllm"):
            cmd = [sys.executable, __file__, "--child", backend, "--model", model_dir, "--prompts", str(args.prompts),
                   "--group", str(args.group), "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats)]
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
            t0 = time.perf_counter()
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{backend} child failed:\n{done.stderr[-3000:]}")
            results[backend] = json.loads(done.stdout.strip().splitlines()[-1])
            results[backend]["process_s"] = time.perf_counter() - t0
    cpu = os.cpu_count()
    print(f"{args.prompts} prompts x {args.group} completions x {args.new_tokens} new tokens, {cpu} CPU cores, "
          f"median of {args.repeats} rounds after one warm-up")
    print(f"{'backend':8} {'start s':>8} {'tokens/s':>10} {'sync s':>8} {'process s':>10}")
    for b, r in results.items():
        print(f"{b:8} {r['start_s']:8.1f} {r['tokens_per_s']:10.0f} {r['sync_s']:8.4f} {r['process_s']:10.1f}")
    print(f"vllm / hf generation tokens/s: {results['vllm']['tokens_per_s'] / results['hf']['tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
