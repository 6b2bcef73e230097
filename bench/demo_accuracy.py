"""Accuracy of a model directory on the demo test set: greedy and sampled at T=1 (the RL starting point).

    python bench/demo_accuracy.py MODEL_DIR [--data data/arith/test.jsonl] [--samples 4]
"""

from __future__ import annotations

import argparse
import re
import time

from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo.data import PromptRenderer, load_rows
from grpo.demo.task import PROMPT_TEMPLATE
from grpo.sampling.base import SamplingSettings
from grpo.sampling.hf import HFSampler

ANSWER = re.compile(r"The answer is (-?\d+)")


def accuracy(groups, rows) -> float:
    hits = total = 0
    for group, row in zip(groups, rows):
        for c in group.completions:
            found = ANSWER.findall(c.text)
            hits += bool(found) and found[-1] == str(row["answer"])
            total += 1
    return hits / max(total, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--data", default="data/arith/test.jsonl")
    parser.add_argument("--samples", type=int, default=4)
    args = parser.parse_args()
    model = AutoModelForCausalLM.from_pretrained(args.model)
    tok = AutoTokenizer.from_pretrained(args.model)
    rows = load_rows(args.data)
    renderer = PromptRenderer(tok, PROMPT_TEMPLATE)
    prompts = [renderer.ids(renderer.text(r)) for r in rows]
    sampler = HFSampler(model, tok, generation_batch_size=200)
    start = time.perf_counter()
    greedy = sampler.generate(prompts, SamplingSettings(n=1, temperature=0.0, max_new_tokens=48))
    sampled = sampler.generate(prompts, SamplingSettings(n=args.samples, temperature=1.0, max_new_tokens=48, seed=1))
    print(f"greedy accuracy {accuracy(greedy, rows):.3f}  sampled (T=1, {args.samples}/problem) accuracy "
          f"{accuracy(sampled, rows):.3f}  on {len(rows)} problems ({time.perf_counter() - start:.0f} s)")
    print("example:", repr(sampled[0].completions[0].text))


if __name__ == "__main__":
    main()
