"""Checks per second of rewards.math.score on a MATH-500 answer mix, against Math-Verify run on the same mix.

Mix per MATH-500 row: the reference solution (boxed inside prose), a terse "The answer is $\\boxed{..}$", and a
wrong answer (the next row's). Math-Verify runs in its own interpreter from a throwaway venv (never the
project's): python -m venv /tmp/mvenv && /tmp/mvenv/bin/pip install math-verify.

    python bench/bench_math.py [--mv-python /tmp/mvenv/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DATA = str(Path(__file__).resolve().parents[1] / "data" / "eval" / "math500.jsonl")

_MV_SNIPPET = r"""
import json, sys, time
from math_verify import parse, verify
pairs = json.load(open(sys.argv[1]))
t0 = time.perf_counter(); ok = 0; slow = 0
for c, g in pairs:
    t = time.perf_counter()
    try:
        ok += bool(verify(parse("\\boxed{" + g + "}"), parse(c)))
    except Exception:
        pass
    slow += time.perf_counter() - t > 1.0
print(json.dumps({"n": len(pairs), "secs": time.perf_counter() - t0, "right": ok, "over_1s": slow}))
"""


def mix(path: str) -> list[tuple[str, str, float]]:
    rows = [json.loads(line) for line in open(path)]
    out = []
    for i, r in enumerate(rows):
        nxt = rows[(i + 1) % len(rows)]["answer"]
        out.append((r["solution"], r["answer"], 1.0))
        out.append((f"Let me think. The answer is $\\boxed{{{r['answer']}}}$.", r["answer"], 1.0))
        if nxt.replace(" ", "").removeprefix("x=") != r["answer"].replace(" ", "").removeprefix("x="):
            out.append((f"So the answer is $\\boxed{{{nxt}}}$.", r["answer"], 0.0))
    return out


def hostile() -> list[tuple[str, str]]:
    """Inputs that make an unguarded checker hang or crawl; each call must still return within 1 s."""
    mat = "\\begin{pmatrix}" + "\\\\".join("&".join(str(i * 60 + j) for j in range(60)) for i in range(60)) + \
        "\\end{pmatrix}"
    return [("\\boxed{10^{10^{10}}}", "1"), ("\\boxed{10^{10^{10}}}", "10^{10^{10}}"), ("\\boxed{1000000!}", "5"),
            ("\\boxed{" + "{" * 2000 + "1" + "}" * 2000 + "}", "1"), ("\\boxed{" + mat + "}", mat),
            ("\\boxed{" + mat.replace("3599", "3598") + "}", mat), ("\\boxed{2^{2^{2^{2^{2}}}}}", "3"),
            ("\\boxed{9^{9^{9}}}", "9^{9^{9}}+1"), ("\\boxed{" + "1" * 5000 + "}", "1" * 4999 + "2"),
            ("\\boxed{\\sum_{n=1}^{10^{12}} n}", "5"), ("\\boxed{x^{10^{9}} - 1}", "(x-1)(x+1)"),
            ("\\boxed{(x+1)^{100000}}", "x"), ("x" * 1_000_000, "1"), ("\\boxed{\\frac{1}{0}}", "\\infty"),
            ("(" * 5000 + "1" + ")" * 5000, "1"), ("\\boxed{" + "\\sqrt{" * 300 + "2" + "}" * 300 + "}", "2"),
            # round three: what is not prose is masked, integers are exact, undefined forms refused
            ("```\n" * 100_000, "1"), ("<!--" * 100_000, "1"), ('"\\boxed{1}" ' * 50_000, "1"),
            ("\\boxed{1} == " * 50_000, "1"), ("\\boxed{2^{2^{20}}+1}", "2^{2^{20}}-1"), ("\\boxed{0^{0}}", "1"),
            ("x" * 300_000 + " and then the", "1")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mv-python", default="/tmp/mvenv/bin/python")
    args = ap.parse_args()
    pairs = mix(DATA)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    t_import = time.perf_counter()
    from rewards.math import score, warm_up  # starts nothing: the worker starts on first use or warm_up()
    warm_up()  # the worker and its standby, so their imports are not timed as checks (a training run's steady state)
    t_import = time.perf_counter() - t_import
    t0 = time.perf_counter()
    right = 0
    worst = 0.0
    for c, g, want in pairs:
        t = time.perf_counter()
        right += score(c, g) == want
        worst = max(worst, time.perf_counter() - t)
    secs = time.perf_counter() - t0
    ours = len(pairs) / secs
    print(f"grpo checker : {len(pairs)} checks in {secs:.2f}s = {ours:.0f} checks/s (1 core); "
          f"agrees with labels {right}/{len(pairs)}; slowest call {worst * 1000:.0f} ms; import+warm {t_import:.1f}s")
    worst_h = 0.0
    for c, g in hostile():
        t = time.perf_counter()
        score(c, g)
        worst_h = max(worst_h, time.perf_counter() - t)
    print(f"hostile      : {len(hostile())} inputs (10^{{10^{{10}}}}, 1000000!, 2000-deep braces, 60x60 matrix, "
          f"100k code fences, ...); "
          f"slowest call {worst_h * 1000:.0f} ms")
    if not os.path.exists(args.mv_python):
        print(f"Math-Verify  : skipped ({args.mv_python} not found)")
        return
    tmp = "/tmp/bench_math_pairs.json"
    json.dump([[c, g] for c, g, _ in pairs], open(tmp, "w"))
    res = subprocess.run([args.mv_python, "-c", _MV_SNIPPET, tmp], capture_output=True, text=True, timeout=3600)
    if res.returncode != 0:
        print("Math-Verify  : failed:", res.stderr.strip().splitlines()[-1:])
        return
    mv = json.loads(res.stdout.strip().splitlines()[-1])
    theirs = mv["n"] / mv["secs"]
    print(f"Math-Verify  : {mv['n']} checks in {mv['secs']:.2f}s = {theirs:.0f} checks/s; over 1 s: {mv['over_1s']}")
    print(f"ratio        : {ours / theirs:.1f}x the checks per second of Math-Verify")


if __name__ == "__main__":
    main()
