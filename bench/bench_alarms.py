"""What the reward-hacking signals cost a step: grpo.hacking.signals.step_signals on a GPU-sized step of made-up
episodes (default 128 prompts x 8 completions of 2,048 tokens, MATH-500 reference solutions as their texts), with
four rewards (math, a shaping format reward, a learned reward, length), against the same step's reward scoring of
the math checker alone as the peer (both in this process, one after the other, repeated; the ratio is the figure).

    python bench/bench_alarms.py [--prompts 128] [--group 8] [--tokens 2048] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from grpo.hacking.signals import Roles, Sample, step_signals  # noqa: E402
from rewards.mathcheck.extract import extract_answer  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--prompts", type=int, default=128)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    rows = [json.loads(line) for line in (ROOT / "data" / "eval" / "math500.jsonl").read_text().splitlines()]
    rng = random.Random(0)
    samples, texts, golds = [], [], []
    for g in range(args.prompts):
        row = rows[g % len(rows)]
        for _ in range(args.group):
            right = rng.random() < 0.5
            text = row["solution"] if right else row["solution"].replace("boxed{", "boxed{1+", 1)
            per = {"math": float(right), "format": float(rng.random() < 0.8), "judge": rng.random(), "length": -0.1}
            tokens = [rng.randrange(32000) for _ in range(args.tokens)]
            samples.append(Sample(g, sum(per.values()), per, tokens, text))
            texts.append(text)
            golds.append(row["answer"])
    roles = Roles(weights={"math": 1.0, "format": 0.2, "judge": 0.0, "length": 0.1}, shaping=("format", "length"),
                  learned=("judge",), correctness="math")
    from rewards.math import score

    score(texts[0], golds[0])  # the checker's worker is up before timing
    signals_s, scoring_s = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        out = step_signals(samples, roles, extract_answer)
        signals_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        for text, gold in zip(texts, golds):
            score(text, gold)
        scoring_s.append(time.perf_counter() - started)
    n = len(samples)
    best_signals, best_scoring = min(signals_s), min(scoring_s)
    print(f"{n} episodes of {args.tokens} tokens: hacking signals {best_signals:.2f} s "
          f"({1000 * best_signals / n:.2f} ms/episode); the math reward on the same step {best_scoring:.2f} s; "
          f"ratio signals/math = {best_signals / best_scoring:.2f} (best of {args.repeats})")
    print("signals:", {k: round(v, 3) for k, v in sorted(out.items())})


if __name__ == "__main__":
    main()
