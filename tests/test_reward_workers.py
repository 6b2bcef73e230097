"""User reward plugins run in worker processes (issue 26, item 5): an os._exit, a crash, a leak past the memory
cap or a hang past the time limit costs the plugin's worker (killed, replaced), never the trainer; the batch
scores 0 and counts as errors with a message that says what happened. Workers die with the trainer."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from rewards.plugin_pool import PluginReward
from rewards.scoring import build_rewards, close_rewards, reward_columns, score

PLUGIN = """
import ctypes, os, sys, time

def good(prompts, completions, answer, scale=1.0, **kw):
    out = []
    for c, a, ids in zip(completions, answer, kw["completion_ids"]):
        out.append(None if a is None else scale * (len(c) + len(ids)) / (1 + len(str(a))))
    return out
good.measures_correctness = True
good.extract_answer = lambda text: text.split()[-1] if text.split() else None

def exits(prompts, completions, **kw):
    if "exit" in completions:
        os._exit(3)
    return [1.0] * len(completions)

def segfault(prompts, completions, **kw):
    if "crash" in completions:
        ctypes.string_at(0)
    return [1.0] * len(completions)

def hangs(prompts, completions, **kw):
    if "hang" in completions:
        if os.environ.get("HANG_MARK"):
            open(os.environ["HANG_MARK"], "w").close()  # for the test: the call is in progress
        time.sleep(120)
    return [1.0] * len(completions)

_LEAK = []
def leaks(prompts, completions, **kw):  # 64 MB more on every call, never freed
    _LEAK.append(bytearray(64 * 1024 * 1024))
    return [float(len(_LEAK))] * len(completions)

def big(prompts, completions, **kw):
    if "big" in completions:
        return [float(len(bytearray(1024 * 1024 * 1024)))]
    return [1.0] * len(completions)

def chatty(prompts, completions, **kw):
    print("x" * 100000)  # the plugin's stdout is its own, not the protocol's
    sys.stderr.write("note from the plugin\\n")
    return [2.0] * len(completions)

def calls_sys_exit(prompts, completions, **kw):
    sys.exit(3)

def has_torch(prompts, completions, **kw):
    return [float("torch" in sys.modules)] * len(completions)

def pid(prompts, completions, **kw):
    return [float(os.getpid())] * len(completions)
"""


class Spec:
    def __init__(self, fn_name, module="worker_rewards", **kw):
        self.name, self.weight, self.args = f"{module}:{fn_name}", 1.0, kw.pop("args", {})
        self.timeout_s, self.max_abs = kw.pop("timeout_s", 30.0), kw.pop("max_abs", 1e6)
        for key, value in kw.items():
            setattr(self, key, value)


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    monkeypatch.delenv("GRPO_REWARDS_IN_PROCESS", raising=False)
    (tmp_path / "worker_rewards.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))  # only the trainer's sys.path knows the folder: the worker gets it
    sys.modules.pop("worker_rewards", None)
    built = []

    def build(*specs):
        rewards = build_rewards(list(specs))
        built.extend(rewards)
        return rewards

    yield build
    close_rewards(built)
    sys.modules.pop("worker_rewards", None)


def alive(pid: int) -> bool:
    """Running, not a zombie (a killed worker whose parent has not reaped it yet is gone for our purposes)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_gone(pids, timeout=15.0) -> list[int]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def batch(*texts):
    n = len(texts)
    return ["p"] * n, list(texts), {"answer": ["a"] * n}


def test_plugins_run_in_a_worker_without_torch(plugin):
    (pid_reward,), (torch_reward,) = plugin(Spec("pid")), plugin(Spec("has_torch"))
    assert isinstance(pid_reward.fn, PluginReward)
    s = score([pid_reward, torch_reward], *batch("a", "b"))
    assert s.per_reward["worker_rewards:pid"] == [float(pid_reward.fn.pid)] * 2 and pid_reward.fn.pid != os.getpid()
    assert s.per_reward["worker_rewards:has_torch"] == [0.0, 0.0]  # the worker is a plain interpreter


def test_a_plugin_calling_os_exit_costs_its_worker_not_the_trainer(plugin, capsys):
    (reward,) = plugin(Spec("exits"))
    first = reward.fn.pid
    s = score([reward], *batch("a", "exit", "b"))
    assert s.total == [0.0] * 3 and s.errors == {"worker_rewards:exits": 3}
    err = capsys.readouterr().err
    assert "the reward's worker exited with code 3" in err and "worker_rewards:exits" in err
    s = score([reward], *batch("a", "b"))  # the next batch: a fresh worker
    assert s.total == [1.0, 1.0] and s.errors == {"worker_rewards:exits": 0}
    assert reward.fn.pid != first and not alive(first)
    assert reward.failures.count == 1 and "exited with code 3" in reward.failures.last


def test_a_segfault_costs_its_worker_not_the_trainer(plugin, capsys):
    (reward,) = plugin(Spec("segfault"))
    s = score([reward], *batch("crash", "a"))
    assert s.total == [0.0, 0.0] and s.errors["worker_rewards:segfault"] == 2
    assert "killed by SIGSEGV" in capsys.readouterr().err
    assert score([reward], *batch("a")).total == [1.0]


def test_a_hang_is_killed_at_the_time_limit(plugin, capsys):
    (reward,) = plugin(Spec("hangs", timeout_s=1.0))
    first = reward.fn.pid
    t0 = time.monotonic()
    s = score([reward], *batch("hang", "a"))
    took = time.monotonic() - t0
    assert s.total == [0.0, 0.0] and s.errors["worker_rewards:hangs"] == 2
    assert took < 6, took  # about the limit, not the 120 s the call would take
    err = capsys.readouterr().err
    assert "no result after 1 s" in err and "worker timed out after 1 s and was killed" in err
    assert wait_gone([first]) == []
    assert score([reward], *batch("a")).total == [1.0]


def test_a_leak_ends_at_the_memory_cap_in_the_worker_not_the_trainer(plugin, capsys):
    (reward,) = plugin(Spec("leaks", memory_mb=400))
    before = rss_mb()
    results = [score([reward], *batch("a", "b")) for _ in range(10)]
    grown = rss_mb() - before
    failed = [r for r in results if r.errors["worker_rewards:leaks"]]
    assert failed and all(r.total == [0.0, 0.0] for r in failed)
    assert "killed past its memory cap of 400 MB" in capsys.readouterr().err
    # after the cap the count starts again in a fresh worker; and none of those 10 x 64 MB is in the trainer
    assert [r.total[0] for r in results].count(1.0) >= 2
    assert grown < 100, f"the trainer grew {grown:.0f} MB"


def test_one_huge_allocation_is_refused_by_the_cap(plugin, capsys):
    (reward,) = plugin(Spec("big", memory_mb=300))
    s = score([reward], *batch("big"))
    assert s.total == [0.0] and s.errors["worker_rewards:big"] == 1
    assert "memory cap of 300 MB" in capsys.readouterr().err
    assert score([reward], *batch("a")).total == [1.0]


def test_scores_are_those_of_an_in_process_call(plugin, monkeypatch):
    rows = [{"question": "q1", "answer": "12", "extra": {"k": [1, 2]}}, {"question": "q2", "answer": None, "extra": None}]
    rows = rows * 3
    columns = reward_columns(rows, [r["answer"] for r in rows], [[1, 2, 3]] * 6, ["stop", "length"] * 3, 16)
    completions = ["x", "yy zz", "", "long one", "a", "b c"]
    spec = Spec("good", args={"scale": 2.5})
    (worker,) = plugin(spec)
    monkeypatch.setenv("GRPO_REWARDS_IN_PROCESS", "1")
    (inline,) = plugin(spec)
    assert not isinstance(inline.fn, PluginReward)
    a, b = score([worker], ["p"] * 6, completions, columns), score([inline], ["p"] * 6, completions, columns)
    assert a.total == b.total and a.per_reward == b.per_reward and a.errors == b.errors == {"worker_rewards:good": 0}
    assert a.per_reward["worker_rewards:good"][1] is None
    # what the plugin declares is read through its worker
    assert worker.measures_correctness is True and inline.measures_correctness is True
    assert worker.extract_answer("the answer is 42") == inline.extract_answer("the answer is 42") == "42"
    assert worker.extract_answer("") is None


def test_junk_exits_and_prints_keep_their_in_process_behaviour(plugin, capsys):
    (chatty,), (exits,) = plugin(Spec("chatty")), plugin(Spec("calls_sys_exit"))
    pid = exits.fn.pid
    s = score([chatty, exits], *batch("a", "b"))
    assert s.per_reward["worker_rewards:chatty"] == [2.0, 2.0]
    assert s.errors == {"worker_rewards:chatty": 0, "worker_rewards:calls_sys_exit": 2}
    assert "called sys.exit(3); a reward must return scores" in capsys.readouterr().err
    assert exits.fn.pid == pid  # sys.exit is a raise, caught in the worker: no restart


def test_a_plugin_that_cannot_be_imported_fails_the_build(plugin):
    from grpo.errors import UserError

    with pytest.raises(UserError, match="cannot import module 'no_such_module_xyz'"):
        plugin(Spec("f", module="no_such_module_xyz"))
    with pytest.raises(UserError, match="takes no option 'scal'"):
        plugin(Spec("good", args={"scal": 2}))


def test_import_time_exits_and_checks_stay_out_of_the_trainer(plugin, tmp_path):
    from grpo.errors import UserError
    from rewards.scoring import reward_problems

    (tmp_path / "exits_on_import.py").write_text("import os\nos._exit(5)\n")
    with pytest.raises(UserError, match="worker exited with code 5 .* while importing it"):
        plugin(Spec("f", module="exits_on_import"))
    problems = reward_problems("worker_rewards:good", {"scal": 2})  # for grpo validate: a throwaway worker
    assert len(problems) == 1 and "takes no option 'scal' (did you mean 'scale'" in problems[0]
    assert "worker_rewards" not in sys.modules and "exits_on_import" not in sys.modules


def test_workers_end_with_close_rewards(plugin):
    rewards = plugin(Spec("pid"), Spec("good"))
    pids = [r.fn.pid for r in rewards]
    assert all(alive(p) for p in pids)
    close_rewards(rewards)
    assert wait_gone(pids, timeout=5) == []
    close_rewards(rewards)  # twice is fine


CHILD = """
import json, sys, time
sys.path.insert(0, {folder!r})
from rewards.scoring import build_rewards, score

class Spec:
    def __init__(self, name):
        self.name, self.weight, self.args, self.timeout_s, self.max_abs = name, 1.0, {{}}, 600.0, 1e6

rewards = build_rewards([Spec("worker_rewards:pid"), Spec("worker_rewards:hangs")])
print(json.dumps([r.fn.pid for r in rewards]), flush=True)
score(rewards[1:], ["p"], ["hang"], {{}})  # its worker is busy when we die: only die-with-parent ends it
"""


def test_workers_die_with_a_sigkilled_trainer(tmp_path):
    (tmp_path / "worker_rewards.py").write_text(PLUGIN)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    mark = tmp_path / "hanging"
    env = {**os.environ, "PYTHONPATH": root, "HANG_MARK": str(mark)}
    env.pop("GRPO_REWARDS_IN_PROCESS", None)
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(CHILD.format(folder=str(tmp_path)))],
                             stdout=subprocess.PIPE, env=env, cwd=str(tmp_path))
    try:
        pids = json.loads(child.stdout.readline())
        assert len(pids) == 2 and all(alive(p) for p in pids)
        end = time.monotonic() + 30
        while not mark.exists() and time.monotonic() < end:  # the hanging call has reached its worker
            time.sleep(0.02)
        assert mark.exists()
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        assert wait_gone(pids, timeout=10) == [], "the workers outlived their SIGKILLed parent"
    finally:
        child.kill()
        child.wait()
