"""Hostile programs: each tries one way to cheat the grader or harm the host, and must score 0 (or be contained).

Every bomb here is bounded by the sandbox itself (pid namespace, RLIMIT_NPROC under a non-root uid, RLIMIT_AS,
output cap, timeouts); on a machine where no namespaces are available these tests are skipped rather than run
against the host.
"""

import os
import socket
import time

import pytest

from rewards.code import code_reward, score
from rewards.sandbox import Executor, Limits, Pool, capabilities

pytestmark = pytest.mark.skipif(capabilities.detect().level not in ("userns", "rootns"),
                                reason="no namespaces here: hostile programs would run against the host")

ADD = {"asserts": ["assert add(1, 2) == 3", "assert add(5, 7) == 12"]}
STDIN = {"inputs": ["1 2\n", "5 7\n"], "outputs": ["3\n", "12\n"]}
CALL = {"fn_name": "add", "inputs": [[1, 2], [5, 7]], "outputs": [3, 12]}


def fenced(src):
    return f"```python\n{src}\n```"


@pytest.fixture(scope="module")
def ex():
    return Executor(Limits(timeout_s=0.5, wall_factor=1.0, memory_mb=256, output_kb=64))


@pytest.fixture(scope="module")
def pool():
    workers = Pool(3)  # the three formats side by side, as the trainer would run them
    yield workers
    workers.close()


HOSTILE = {
    "exit_before_tests": "import sys\nsys.exit(0)\ndef add(a, b):\n    return a + b",
    "os_exit_before_tests": "import os\nos._exit(0)",
    "eq_always_true": "class Any:\n    def __eq__(self, o): return True\n    def __ne__(self, o): return False\n"
                      "def add(a, b):\n    return Any()",
    "int_subclass_eq": "class I(int):\n    def __eq__(self, o): return True\ndef add(a, b):\n    return I(0)",
    "patched_builtins": "import builtins\nbuiltins.abs = lambda x: 0\nbuiltins.sorted = lambda x: [1, 2]\n"
                        "def add(a, b):\n    return 0",
    "fake_verdict_stdout": "print('PASSED 2/2')\nprint('{\"k\": 0, \"v\": 99}')\ndef add(a, b):\n    return 0",
    "sys_modules_tampering": "import sys, json\njson.dumps = lambda *a, **k: '{\"k\": 0, \"v\": 3}'\n"
                             "sys.modules['json'] = None\ndef add(a, b):\n    return 0",
    "signals": "import os, signal\nfor p in (-1, 0, 1, os.getppid()):\n    try:\n        os.kill(p, signal.SIGKILL)\n"
               "    except OSError:\n        pass\ndef add(a, b):\n    return 0",
    "sleep_past_timeout": "import time\ndef add(a, b):\n    time.sleep(60)\n    return a + b",
    "busy_loop": "def add(a, b):\n    while True:\n        pass",
    "fork_bomb": "import os\ndef add(a, b):\n    while True:\n        try:\n            os.fork()\n"
                 "        except OSError:\n            pass",
    "memory_flood": "def add(a, b):\n    xs = []\n    while True:\n        xs.append(bytearray(10**7))",
    "fork_and_fill": "import os, time\ndef add(a, b):\n    for _ in range(6):\n        if os.fork() == 0:\n"
                     "            x = bytearray(150 << 20)\n            time.sleep(5)\n            os._exit(0)\n"
                     "    time.sleep(5)",
    "output_flood": "import sys\ndef add(a, b):\n    while True:\n        sys.stdout.write('x' * 4096)",
    "disk_flood": "def add(a, b):\n    i = 0\n    while True:\n        open(f'f{i}', 'w').write('x' * 10**6)\n"
                  "        i += 1",
    "thread_left_running": "import threading, time\nthreading.Thread(target=time.sleep, args=(60,)).start()\n"
                           "def add(a, b):\n    return 0",
    "threads_answer_late": "import threading, os, time\n"
                           "def late():\n    time.sleep(0.05)\n    os.write(3, b'{\"k\": 1, \"v\": 12}\\n')\n"
                           "threading.Thread(target=late, daemon=True).start()\ndef add(a, b):\n    return 0",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_programs_score_zero_in_every_format(name, ex, pool):
    prog = fenced(HOSTILE[name])
    assert pool.map(lambda tests: score(prog, tests, executor=ex), [ADD, STDIN, CALL]) == [0.0, 0.0, 0.0]


def test_honest_reference_passes_every_format(ex):
    prog = fenced("def add(a, b):\n    return a + b\nif __name__ == '__main__':\n"
                  "    import sys\n    data = sys.stdin.read().split()\n    if data:\n"
                  "        print(add(*map(int, data)))")
    for tests in (ADD, STDIN, CALL):
        assert score(prog, tests, executor=ex) == 1.0, tests


def _probe(ex, src):
    """What a program can see from inside: its stdout, graded by nobody."""
    r = ex.run(src, [{"id": 0, "kind": "stdin", "stdin": ""}])[0]
    return r.stdout.strip()


def test_no_secrets_in_environment_or_argv(ex, monkeypatch):
    monkeypatch.setenv("GRPO_TEST_SECRET", "hunter2")
    seen = _probe(ex, "import os, sys\nprint(dict(os.environ), sys.argv)\n"
                      "print(open('/proc/self/environ').read())\nprint(open('/proc/1/cmdline').read()[:0])")
    assert "hunter2" not in seen and seen.startswith("{} ['main.py']")


def test_parent_invisible_in_proc(ex):
    seen = _probe(ex, "import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n"
                      "try:\n    open('/proc/1/environ').read()\n    print('read')\nexcept OSError:\n    print('denied')")
    pids, verdict = seen.splitlines()
    assert os.getpid() not in eval(pids) and len(eval(pids)) <= 3 and verdict == "denied"


def test_host_files_hidden_and_system_read_only(ex):
    here = os.path.abspath(__file__)
    seen = _probe(ex, f"import os\nprint(os.path.exists({here!r}), os.path.exists('/work'), os.path.exists('/home'))\n"
                      "try:\n    open('/usr/evil', 'w')\n    print('wrote')\nexcept OSError:\n    print('ro')")
    assert seen.splitlines() == ["False False False", "ro"]


def test_no_network(ex):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        seen = _probe(ex, f"import socket\nfor host in ('127.0.0.1', '1.1.1.1'):\n    s = socket.socket()\n"
                          f"    s.settimeout(0.5)\n    try:\n        s.connect((host, {port}))\n        print('open')\n"
                          f"    except OSError:\n        print('closed')")
    finally:
        server.close()
    assert seen.splitlines() == ["closed", "closed"]


def test_fork_bomb_is_capped(ex):
    seen = _probe(ex, "import os, time\nn = 0\nfor _ in range(1000):\n    try:\n        if os.fork() == 0:\n"
                      "            time.sleep(5)\n            os._exit(0)\n        n += 1\n    except OSError:\n"
                      "        break\nprint(n)")
    assert 0 < int(seen) < 16


def _sandbox_processes():
    count = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as f:
                uid = next(line for line in f if line.startswith("Uid:")).split()[1]
        except (OSError, StopIteration):
            continue
        count += uid == "65534"
    return count


def test_neighbours_unharmed_and_nothing_left_behind():
    before_tmp = set(os.listdir("/tmp"))
    honest = fenced("def add(a, b):\n    return a + b")
    hostile = ["signals", "fork_bomb", "busy_loop", "memory_flood", "output_flood", "thread_left_running"]
    completions, expect = [], []
    for name in hostile:
        completions += [fenced(HOSTILE[name]), honest]
        expect += [0.0, 1.0]
    out = code_reward(["p"] * len(completions), completions, tests=[ADD] * len(completions),
                      timeout_s=1, memory_mb=256, max_parallel=8)
    assert out == expect
    if os.geteuid() == 0:  # as root the sandboxes run as nobody: count what is left of them (SIGKILL is async)
        deadline = time.monotonic() + 120  # until they are gone: on a loaded machine reaping them takes a while
        while _sandbox_processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _sandbox_processes() == 0
    assert not {p for p in set(os.listdir("/tmp")) - before_tmp if p.startswith("grpo-sbx-")}


def test_memory_outside_rlimits_is_refused(ex):
    # memfd pages count against no rlimit; the seccomp filter refuses memfd_create, and nested namespaces.
    if not capabilities.detect().report.get("seccomp"):
        pytest.skip("no seccomp here")
    seen = _probe(ex, "import os, ctypes\ntry:\n    os.memfd_create('x')\n    print('memfd')\nexcept OSError:\n"
                      "    print('refused')\nprint(ctypes.CDLL(None).unshare(0x10000000 | 0x20000))")
    assert seen.splitlines() == ["refused", "-1"]
