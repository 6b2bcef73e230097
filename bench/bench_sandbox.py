"""Cases per second with 8 in parallel: our sandboxed code reward against a naive subprocess grader, same run.

    python bench/bench_sandbox.py [--cases 64] [--parallel 8]

The corpus mixes honest solutions (assert, stdin and call-based tests) with hostile ones (timeouts, floods, fake
verdicts, exit(0)); the naive grader runs `python -c program` per test with a timeout and trusts exit codes for
asserts, like many published executors. Prints throughput of both, their ratio, and how many cases each scored
right (honest: full marks, hostile: zero).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rewards.code import code_reward, extract_program  # noqa: E402
from rewards.sandbox.judge import same_stdout  # noqa: E402

ADD = {"asserts": ["assert add(1, 2) == 3", "assert add(5, 7) == 12", "assert add(-1, 1) == 0"]}
STDIN = {"inputs": ["1 2\n", "5 7\n", "-1 1\n"], "outputs": ["3\n", "12\n", "0\n"]}
CALL = {"fn_name": "add", "inputs": [[1, 2], [5, 7], [-1, 1]], "outputs": [3, 12, 0]}
HONEST = ("def add(a, b):\n    return a + b\nif __name__ == '__main__':\n    import sys\n"
          "    d = sys.stdin.read().split()\n    if d:\n        print(add(*map(int, d)))")
HOSTILE = [
    "import sys\nsys.exit(0)",
    "class A:\n    def __eq__(s, o): return True\ndef add(a, b):\n    return A()",
    "print('3')\nprint('12')\nprint('0')\ndef add(a, b):\n    return -7",
    "import time\ndef add(a, b):\n    time.sleep(30)",
    "def add(a, b):\n    while True: print('x' * 1000)",
]


def corpus(n: int) -> list[tuple[str, dict, float]]:
    cases = []
    formats = [ADD, STDIN, CALL]
    for i in range(n):
        tests = formats[i % 3]
        if i % 4 == 3:
            cases.append((f"```python\n{HOSTILE[(i // 4) % len(HOSTILE)]}\n```", tests, 0.0))
        else:
            cases.append((f"```python\n{HONEST}\n```", tests, 1.0))
    return cases


def naive_score(completion: str, tests: dict, timeout_s: float) -> float:
    prog = extract_program(completion) or ""
    passed = []
    py = sys.executable
    if "asserts" in tests:
        for a in tests["asserts"]:
            try:
                r = subprocess.run([py, "-c", prog + "\n" + a], capture_output=True, timeout=timeout_s)
                passed.append(r.returncode == 0)
            except subprocess.TimeoutExpired:
                passed.append(False)
    elif "fn_name" in tests:
        for args, want in zip(tests["inputs"], tests["outputs"]):
            src = prog + f"\nprint(repr({tests['fn_name']}(*{args!r})))"
            try:
                r = subprocess.run([py, "-c", src], capture_output=True, timeout=timeout_s)
                passed.append(r.stdout.decode(errors="replace").strip().endswith(repr(want)))
            except subprocess.TimeoutExpired:
                passed.append(False)
    else:
        for inp, want in zip(tests["inputs"], tests["outputs"]):
            try:
                r = subprocess.run([py, "-c", prog], input=inp.encode(), capture_output=True, timeout=timeout_s)
                passed.append(same_stdout(r.stdout.decode(errors="replace")[:1 << 20], want))
            except subprocess.TimeoutExpired:
                passed.append(False)
    return sum(passed) / len(passed)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=64)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=3.0)  # the reward's default
    args = ap.parse_args()
    cases = corpus(args.cases)
    completions = [c for c, _, _ in cases]
    tests = [json.dumps(t) for _, t, _ in cases]
    expect = [e for _, _, e in cases]

    code_reward(["p"], completions[:1], tests=tests[:1], timeout_s=args.timeout)  # capability probe, warm-up
    t0 = time.perf_counter()
    ours = code_reward(["p"] * len(cases), completions, tests=tests, timeout_s=args.timeout,
                       max_parallel=args.parallel)
    t_ours = time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.parallel) as pool:
        naive = list(pool.map(lambda c: naive_score(c[0], c[1], args.timeout), cases))
    t_naive = time.perf_counter() - t0

    right = lambda got: sum(abs(g - e) < 1e-9 for g, e in zip(got, expect))  # noqa: E731
    print(f"cases={len(cases)} parallel={args.parallel} cpus={os.cpu_count()} timeout_s={args.timeout}")
    print(f"sandbox: {len(cases) / t_ours:6.2f} cases/s  ({t_ours:.1f} s)  scored right {right(ours)}/{len(cases)}")
    print(f"naive:   {len(cases) / t_naive:6.2f} cases/s  ({t_naive:.1f} s)  scored right {right(naive)}/{len(cases)}")
    print(f"sandbox/naive throughput ratio: {t_naive / t_ours:.2f}")


if __name__ == "__main__":
    main()
