"""Accuracy of a model directory on the demo test set, greedy and sampled at temperature 1 (the RL starting
point: the sampled figure is roughly the mean reward GRPO starts from).

    python bench/demo_accuracy.py MODEL_DIR [--data data/arith/test.jsonl] [--samples 4]
    python bench/demo_accuracy.py demo:tiny-arith      # the built-in demo model (built on first use)

Plain transformers `generate` and a plain "The answer is N" match, so the figure does not depend on grpo's own
sampler or math reward.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from grpo.demo.task import PROMPT_TEMPLATE  # noqa: E402

ANSWER = re.compile(r"The answer is (-?\d+)")


def is_correct(text: str, answer: str) -> bool:
    found = ANSWER.findall(text)
    return bool(found) and int(found[-1]) == int(answer)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], samples: int, temperature: float, max_new_tokens: int = 48,
             batch_size: int = 256, seed: int = 0) -> list[list[str]]:
    """`samples` completions per prompt (greedy when temperature is 0), decoded without special tokens."""
    torch.manual_seed(seed)
    tokenizer.padding_side = "left"  # generation continues from the right end of every row
    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else \
        dict(do_sample=False)
    flat = [p for p in prompts for _ in range(samples)]
    texts: list[str] = []
    for start in range(0, len(flat), batch_size):
        enc = tokenizer(flat[start:start + batch_size], return_tensors="pt", padding=True)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, **sampling)  # [N, P + new]
        texts += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return [texts[i * samples:(i + 1) * samples] for i in range(len(prompts))]


def accuracy(model, tokenizer, rows: list[dict], samples: int = 4, seed: int = 0) -> dict:
    prompts = [PROMPT_TEMPLATE.format(**r) for r in rows]
    greedy = generate(model, tokenizer, prompts, 1, 0.0)
    sampled = generate(model, tokenizer, prompts, samples, 1.0, seed=seed)
    hits = [[is_correct(t, r["answer"]) for t in group] for group, r in zip(sampled, rows)]
    return {
        "greedy": sum(is_correct(g[0], r["answer"]) for g, r in zip(greedy, rows)) / len(rows),
        "sampled": sum(map(sum, hits)) / (len(rows) * samples),
        # a GRPO group of these samples has reward variance unless it is all right or all wrong
        "mixed_groups": sum(0 < sum(h) < samples for h in hits) / len(rows),
        "example": sampled[0][0],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", help="a model directory, or demo:tiny-arith")
    parser.add_argument("--data", default="data/arith/test.jsonl")
    parser.add_argument("--samples", type=int, default=4, help="sampled completions per problem at T=1")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = args.model
    if path.startswith("demo:"):
        from grpo.demo import resolve_demo_model

        path = resolve_demo_model(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()]
    start = time.perf_counter()
    result = accuracy(model, tokenizer, rows, args.samples, args.seed)
    print(f"greedy accuracy {result['greedy']:.3f}  sampled (T=1, {args.samples} per problem) accuracy "
          f"{result['sampled']:.3f}  groups with mixed rewards {result['mixed_groups']:.2f}  on {len(rows)} "
          f"problems ({time.perf_counter() - start:.0f} s)")
    print("example:", repr(result["example"]))


if __name__ == "__main__":
    main()
