"""Cases per second with 8 in parallel: our sandboxed code reward against a naive subprocess grader, same run.

    python bench/bench_sandbox.py [--cases 84] [--parallel 8] [--formats assert,stdin,call,check]

The corpus mixes honest solutions (assert, stdin and call-based tests) with hostile ones, two for each honest one
(exits, fake objects and verdicts, patched helpers, signals, sleepers, spinners, fork bombs, floods, snooping); the naive grader runs `python -c program` per test with a timeout and trusts exit codes for
asserts, like many published executors. Prints throughput of both, their ratio, and how many cases each scored
right (honest: full marks, hostile: zero).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rewards.code import code_reward, extract_program  # noqa: E402
from rewards.sandbox.judge import same_stdout  # noqa: E402

ADD = {"asserts": ["assert add(1, 2) == 3", "assert add(5, 7) == 12", "assert add(-1, 1) == 0"]}
STDIN = {"inputs": ["1 2\n", "5 7\n", "-1 1\n"], "outputs": ["3\n", "12\n", "0\n"]}
CALL = {"fn_name": "add", "inputs": [[1, 2], [5, 7], [-1, 1]], "outputs": [3, 12, 0]}
# HumanEval's form over computed cases: judged by the sandbox's judge process, beside the program's (not by default,
# so that the default corpus stays comparable with earlier figures).
CHECK = {"test": "def check(candidate):\n    import random\n    rng = random.Random(0)\n    for _ in range(3):\n"
                 "        a, b = rng.randint(-9, 9), rng.randint(-9, 9)\n        assert candidate(a, b) == a + b\n",
         "entry_point": "add"}
FORMATS = {"assert": ADD, "stdin": STDIN, "call": CALL, "check": CHECK}
HONEST = ("def add(a, b):\n    return a + b\nif __name__ == '__main__':\n    import sys\n"
          "    d = sys.stdin.read().split()\n    if d:\n        print(add(*map(int, d)))")
HOSTILE = [  # one per category of attack; each must score 0
    "import sys\nsys.exit(0)",
    "import os\nos._exit(0)",
    "class A:\n    def __eq__(s, o): return True\ndef add(a, b):\n    return A()",
    "import builtins\nbuiltins.sorted = lambda x: x\ndef add(a, b):\n    return -7",
    "print('3')\nprint('12')\nprint('0')\ndef add(a, b):\n    return -7",
    "import sys\nsys.modules['json'] = None\ndef add(a, b):\n    return -7",
    "import os, signal\nos.kill(-1, signal.SIGKILL)\ndef add(a, b):\n    return -7",
    "import time\ndef add(a, b):\n    time.sleep(30)",
    "def add(a, b):\n    while True: pass",
    "import os\ndef add(a, b):\n    while True:\n        try: os.fork()\n        except OSError: pass",
    "def add(a, b):\n    x = []\n    while True: x.append(bytearray(10**7))",
    "def add(a, b):\n    while True: print('x' * 1000)",
    "import threading, time\nthreading.Thread(target=time.sleep, args=(30,)).start()\ndef add(a, b):\n    return -7",
    "import os\ndef add(a, b):\n    return len(os.listdir('/proc')) + len(os.environ) - 99",
    "import socket\ndef add(a, b):\n    socket.create_connection(('1.1.1.1', 80), timeout=1)\n    return a + b",
    "def add(a, b):\n    return int(open('/work/expected.txt').read())",
]


def corpus(n: int, names: tuple[str, ...] = ("assert", "stdin", "call")) -> list[tuple[str, dict, float]]:
    cases = []
    formats = [FORMATS[name] for name in names]
    for i in range(n):
        tests = formats[(i // 3) % len(formats)]
        if i % 3 != 0:  # about two hostile cases for each honest one, like the corpus (55 / 84)
            cases.append((f"```python\n{HOSTILE[(i // 3 * 2 + i % 3 - 1) % len(HOSTILE)]}\n```", tests, 0.0))
        else:
            cases.append((f"```python\n{HONEST}\n```", tests, 1.0))
    return cases


# The naive grader runs model code as a plain subprocess; here it still must not hurt the machine running the
# bench, so it gets rlimits, a capped output file, its own process group (killed after each run) and, when we
# are root, the nobody uid (RLIMIT_NPROC does not bind root). Where it cannot be bounded, bombs are skipped.
NAIVE_PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
BOUNDED = os.geteuid() != 0 or NAIVE_PY.startswith("/usr/")


def _limit(timeout_s: float) -> None:
    cpu = int(timeout_s) + 1
    resource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
    resource.setrlimit(resource.RLIMIT_NPROC, (64, 64))


def _naive_run(src: str, stdin: str, timeout_s: float) -> tuple[int | None, str]:
    """(exit code or None on timeout, stdout)."""
    as_nobody = {"user": 65534, "group": 65534, "extra_groups": []} if os.geteuid() == 0 else {}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as inp:
        inp.write(stdin.encode())
        inp.seek(0)
        proc = subprocess.Popen([NAIVE_PY, "-c", src], stdin=inp, stdout=out, stderr=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=lambda: _limit(timeout_s), cwd="/tmp",
                                **as_nobody)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its children too
            except ProcessLookupError:
                pass
            proc.wait()
        out.seek(0)
        return code, out.read(1 << 20).decode(errors="replace")


def naive_score(completion: str, tests: dict, timeout_s: float) -> float:
    prog = extract_program(completion) or ""
    if not BOUNDED and ("fork" in prog or "bytearray" in prog):
        return 0.0  # not run: this machine cannot bound it
    passed = []
    if "test" in tests:
        code, _ = _naive_run(prog + "\n" + tests["test"] + f"\ncheck({tests['entry_point']})", "", timeout_s)
        passed.append(code == 0)
    elif "asserts" in tests:
        for a in tests["asserts"]:
            code, _ = _naive_run(prog + "\n" + a, "", timeout_s)
            passed.append(code == 0)
    elif "fn_name" in tests:
        for args, want in zip(tests["inputs"], tests["outputs"]):
            _, out = _naive_run(prog + f"\nprint(repr({tests['fn_name']}(*{args!r})))", "", timeout_s)
            passed.append(out.strip().endswith(repr(want)))
    else:
        for inp, want in zip(tests["inputs"], tests["outputs"]):
            code, out = _naive_run(prog, inp, timeout_s)
            passed.append(code is not None and same_stdout(out, want))
    return sum(passed) / len(passed)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=84)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=3.0)  # the reward's default
    ap.add_argument("--formats", default="assert,stdin,call", help=f"comma-separated, of {', '.join(FORMATS)}")
    args = ap.parse_args()
    cases = corpus(args.cases, tuple(args.formats.split(",")))
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
    print(f"cases={len(cases)} parallel={args.parallel} cpus={os.cpu_count()} timeout_s={args.timeout} "
          f"formats={args.formats}")
    print(f"sandbox: {len(cases) / t_ours:6.2f} cases/s  ({t_ours:.1f} s)  scored right {right(ours)}/{len(cases)}")
    print(f"naive:   {len(cases) / t_naive:6.2f} cases/s  ({t_naive:.1f} s)  scored right {right(naive)}/{len(cases)}")
    print(f"sandbox/naive throughput ratio: {t_naive / t_ours:.2f}")


if __name__ == "__main__":
    main()
