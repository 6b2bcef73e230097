"""Runs that survive: each case of the "Runs that survive" issue, in a real `grpo train` process where it is about
processes (signals, the lock, a full disk, a reward that exits), in-process where the behaviour is a function's."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, write_recipe
from conftest import grpo as run_grpo
from gate import HOLD_SOURCE, REWARD_TIMEOUT_S, Gate, wait_for_text
from safetensors.torch import load_file

PLUGIN = HOLD_SOURCE + """
import sys

def held(prompts, completions, **kw):  # held mid-step while the test's gate says so (tests/gate.py); scores vowels
    gate_hold()
    return [sum(ch in "aeiou" for ch in c) / max(len(c), 1) for c in completions]

def always_raises(prompts, completions, **kw):
    raise ValueError("the grader's database is unreachable")

def exits(prompts, completions, **kw):
    sys.exit(3)
"""


@pytest.fixture
def plugin(tmp_path):
    (tmp_path / "survive_rewards.py").write_text(PLUGIN)
    sys.modules.pop("survive_rewards", None)  # another test may have imported a module of this name
    yield tmp_path
    sys.modules.pop("survive_rewards", None)


def survive_recipe(tmp_path, model_dir, data, reward="survive_rewards:held", steps=6, out="run"):
    """This file's recipe (conftest.write_recipe): no checkpoint but the last, no samples, written to out.yaml."""
    # a held reward outlasts the default time limit: without a longer one the trainer would abandon it
    return write_recipe(tmp_path, model_dir, data, reward, name="survive", out=out, file=f"{out}.yaml", steps=steps,
                        checkpoint="{every: 0, keep_last: 3}",
                        logging="{samples_every: 0, progress_bar: false, tensorboard: false}",
                        reward_timeout_s=REWARD_TIMEOUT_S if reward.endswith(":held") else None)


def env(plugin_dir, **extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": f"{plugin_dir}{os.pathsep}{ROOT}", **extra}


def grpo(plugin_dir, *args, pre="", timeout=900, **extra):
    """conftest.grpo with this file's plugin on the path, in-process after `pre` (a fault injected into a real run)."""
    return run_grpo(*args, pre=pre, timeout=timeout, env=env(plugin_dir, **extra), cwd=ROOT)


def start(background, plugin_dir, recipe, gate, *args):
    """`grpo train` in the background, held by `gate` (its stderr readable while it runs: proc.err_path)."""
    return background.start([sys.executable, "-m", "grpo", "train", str(recipe), *args],
                            env=env(plugin_dir, **gate.env()), cwd=ROOT)


def steps(out):
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def weights(ckpt):
    return load_file(str(ckpt / "model.safetensors"))


# ---------------------------------------------------------------------------------------------------- signals

@pytest.mark.slow
def test_sigterm_saves_and_resumes_to_the_straight_runs_weights(tmp_path, tiny_model_dir, sums_file, plugin,
                                                                background):
    straight = survive_recipe(tmp_path, tiny_model_dir, sums_file, out="straight")
    done = grpo(plugin, "train", straight)
    assert done.returncode == 0, done.stderr[-2000:]

    recipe = survive_recipe(tmp_path, tiny_model_dir, sums_file, out="preempted")
    out = tmp_path / "preempted"
    gate = Gate(tmp_path / "gate", hold_from=3)
    proc = start(background, plugin, recipe, gate)
    gate.wait_held(proc)  # in step 3's reward, steps 1-2 logged
    proc.send_signal(signal.SIGTERM)
    wait_for_text(proc.err_path, "SIGTERM received: finishing this step", proc)
    gate.release()
    _, err = background.finish(proc)
    assert proc.returncode == 143, err[-2000:]
    stopped = steps(out)[-1]
    assert stopped == 3 and f"stopped by SIGTERM after step {stopped}; checkpoint: " in err
    assert f"resume with:\n  grpo train {recipe}" in err
    assert (out / "checkpoints" / f"step-{stopped:06d}" / "trainer_state.pt").is_file()

    resumed = grpo(plugin, "train", recipe)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert steps(out) == [1, 2, 3, 4, 5, 6]
    a, b = weights(tmp_path / "straight/checkpoints/step-000006"), weights(out / "checkpoints/step-000006")
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical


@pytest.mark.slow
def test_a_second_trainer_is_refused_and_ctrl_c_saves(tmp_path, tiny_model_dir, sums_file, plugin, background):
    recipe = survive_recipe(tmp_path, tiny_model_dir, sums_file)
    out = tmp_path / "run"
    gate = Gate(tmp_path / "gate", hold_from=2)
    first = start(background, plugin, recipe, gate)
    gate.wait_held(first)  # the first trainer stays in step 2 until the gate opens, however long this takes
    second = grpo(plugin, "train", recipe)
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"is in use by another grpo train (pid {first.pid} on " in second.stderr
    assert first.poll() is None and steps(out) == [1]  # refused while the first ran: no step of its own
    first.send_signal(signal.SIGINT)
    wait_for_text(first.err_path, "SIGINT received: finishing this step", first)
    gate.release()
    _, err = background.finish(first)
    assert first.returncode == 130, err[-2000:]
    assert "SIGINT received: finishing this step" in err and "resume with:" in err
    assert steps(out) == [1, 2]  # one writer: no step twice; the step under way finished, then it stopped
    again = grpo(plugin, "train", recipe)  # the lock went with its process
    assert again.returncode == 0, again.stderr[-2000:]


@pytest.mark.slow
def test_a_second_signal_exits_at_once(tmp_path, tiny_model_dir, sums_file, plugin, background):
    recipe = survive_recipe(tmp_path, tiny_model_dir, sums_file)
    out = tmp_path / "run"
    gate = Gate(tmp_path / "gate", hold_from=2)
    proc = start(background, plugin, recipe, gate)
    gate.wait_held(proc)
    proc.send_signal(signal.SIGTERM)
    wait_for_text(proc.err_path, "SIGTERM received: finishing this step", proc)  # the first one was heard
    proc.send_signal(signal.SIGTERM)
    # The gate stays shut, so step 2 cannot finish: a process that waited for the step to end would still be
    # running at this deadline (its hold lasts gate.DEADLINE_S, far longer).
    _, err = background.finish(proc, timeout=300)
    assert proc.returncode == 143, err[-2000:]
    assert "SIGTERM again: exiting now, without a checkpoint" in err
    assert gate.held() and steps(out) == [1] and not (out / "checkpoints").exists()


# ---------------------------------------------------------------------------------------------------- disk

@pytest.mark.slow
def test_enospc_in_a_checkpoint_write_says_so_and_leaves_no_temp(tmp_path, tiny_model_dir, sums_file, plugin):
    recipe = survive_recipe(tmp_path, tiny_model_dir, sums_file, steps=2)
    out = tmp_path / "run"
    inject = ("import errno, torch\n"
              "def full(obj, f, *a, **k):\n"
              "    open(f, 'wb').write(b'x' * 100000)\n"
              "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
              "torch.save = full")
    failed = grpo(plugin, "train", recipe, pre=inject)
    assert failed.returncode == 2
    assert "error: checkpoint step-000002: the disk filled while writing it to" in failed.stderr
    assert "the partial copy was removed" in failed.stderr and "Traceback" not in failed.stderr
    assert not [p for p in (out / "checkpoints").iterdir() if ".tmp-" in p.name]
    # after "freeing space" the same command starts over cleanly (nothing was saved): no stale state in the way
    (out / "metrics.jsonl").unlink()
    again = grpo(plugin, "train", recipe)
    assert again.returncode == 0, again.stderr[-2000:]


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of its own size at tmp_path/small (yields a mounter): a disk that can really be full."""
    mounted = []

    def mount(size):
        small = tmp_path / "small"
        small.mkdir()
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(small)],
                                               capture_output=True).returncode:
            pytest.skip("needs root to mount a tmpfs")
        mounted.append(small)
        return small

    yield mount
    for small in mounted:
        subprocess.run(["umount", str(small)])


@pytest.mark.slow
def test_a_small_disk_is_refused_at_start_before_writing(tmp_path, tiny_model_dir, sums_file, plugin, small_disk):
    small = small_disk("600k")
    recipe = survive_recipe(tmp_path, tiny_model_dir, sums_file, steps=1)
    failed = grpo(plugin, "train", recipe, f"output_dir={small / 'run'}")
    assert failed.returncode == 2, failed.stderr[-2000:]
    assert f"output_dir: {small / 'run'} has" in failed.stderr and "one checkpoint of" in failed.stderr
    assert "needs about" in failed.stderr and "Traceback" not in failed.stderr
    assert not (small / "run" / "metrics.jsonl").exists()  # refused before the first step, not after it


@pytest.mark.slow
def test_a_disk_that_fills_during_the_run_is_named_before_the_checkpoint(tmp_path, tiny_model_dir, sums_file,
                                                                         plugin, small_disk):
    small = small_disk("64m")  # room for the tiny model's checkpoint at start
    recipe = survive_recipe(tmp_path, tiny_model_dir, sums_file, steps=1)
    # another process fills the disk while the step runs: the space left when the checkpoint is due is 64 KB
    fill = ("import shutil, grpo.train.trainer as t\n"
            "save = t.save_checkpoint\n"
            "def filled_first(output_dir, *a, **k):\n"
            "    free = shutil.disk_usage(output_dir).free\n"
            "    (output_dir / 'filler').write_bytes(bytes(free - 65536))\n"
            "    return save(output_dir, *a, **k)\n"
            "t.save_checkpoint = filled_first")
    failed = grpo(plugin, "train", recipe, f"output_dir={small / 'run'}", pre=fill)
    assert failed.returncode == 2, failed.stderr[-2000:]
    assert "error: checkpoint step-000001: needs about" in failed.stderr and "MB free" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert not list((small / "run" / "checkpoints").glob("*.tmp-*"))


@pytest.mark.slow
def test_a_torn_log_line_and_a_dead_runs_temp_folder_do_not_stop_a_resume(tmp_path, tiny_model_dir, sums_file,
                                                                          plugin):
    recipe = survive_recipe(tmp_path, tiny_model_dir, sums_file, steps=2)
    out = tmp_path / "run"
    assert grpo(plugin, "train", recipe).returncode == 0
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "reward/me')  # the disk filled mid-line
    stale = out / "checkpoints" / "step-000003.tmp-999999999"  # a save killed -9: its pid is gone
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    resumed = grpo(plugin, "train", recipe, "train.steps=3")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "note: metrics.jsonl: dropped 1 unreadable line(s)" in resumed.stderr
    assert "note: removed 1 temporary file(s) left by a run that died" in resumed.stderr
    assert not stale.exists() and steps(out) == [1, 2, 3]


def test_a_full_disk_during_a_metrics_append_leaves_no_torn_line(tmp_path, monkeypatch):
    from grpo.train import metrics
    from grpo.train.disk import DiskFull

    log = metrics.MetricsLog(tmp_path, "x")
    log.log(1, {"a": 1.0})
    real = os.write
    monkeypatch.setattr(metrics.os, "write", lambda fd, data: real(fd, data[:5]))  # a short write: disk full
    with pytest.raises(DiskFull, match="the disk is full"):
        log.log(2, {"a": 2.0})
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "a": 1.0}\n'


# ---------------------------------------------------------------------------------------------------- resume

@pytest.mark.slow
def test_resume_applies_safe_changes_and_refuses_unsafe_ones(tmp_path, tiny_model_dir, sums_file, plugin):
    recipe = survive_recipe(tmp_path, tiny_model_dir, sums_file, steps=2)
    out = tmp_path / "run"
    assert grpo(plugin, "train", recipe).returncode == 0
    refused = grpo(plugin, "train", recipe, "train.steps=3", "seed=5", "sampler.group_size=2")
    assert refused.returncode == 2
    assert "  - seed: 3 -> 5" in refused.stderr and "  - sampler.group_size: 4 -> 2" in refused.stderr
    assert "checkpoint.allow_changes=true" in refused.stderr and steps(out) == [1, 2]
    resumed = grpo(plugin, "train", recipe, "train.steps=3", "train.lr=1e-2")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "note: train.lr 0.001 -> 0.01: the learning-rate schedule continues" in resumed.stdout
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 3 and last["lr"] == pytest.approx(1e-2)  # applied, not ignored
    assert json.loads((out / "recipe.resolved.json").read_text())["train"]["lr"] == 1e-2
    changes = [json.loads(line) for line in (out / "recipe.changes.jsonl").read_text().splitlines()]
    assert {c["key"] for c in changes[-1]["changes"]} == {"train.steps", "train.lr"}


# ---------------------------------------------------------------------------------------------------- rewards

@pytest.mark.slow
def test_a_reward_that_always_raises_is_shown_then_stops_the_run(tmp_path, tiny_model_dir, sums_file, plugin):
    recipe = survive_recipe(tmp_path, tiny_model_dir, sums_file, reward="survive_rewards:always_raises")
    result = grpo(plugin, "train", recipe)
    assert result.returncode == 2
    assert result.stderr.count("warning: reward 'survive_rewards:always_raises' failed on") == 1
    assert "ValueError: the grader's database is unreachable" in result.stderr
    assert "for 3 steps in a row" in result.stderr and steps(tmp_path / "run") == [1, 2]


@pytest.mark.slow
def test_a_reward_calling_sys_exit_cannot_end_the_trainer_silently(tmp_path, tiny_model_dir, sums_file, plugin):
    recipe = survive_recipe(tmp_path, tiny_model_dir, sums_file, reward="survive_rewards:exits")
    result = grpo(plugin, "train", recipe)
    assert result.returncode == 2
    assert "called sys.exit(3); a reward must return scores" in result.stderr


class Spec:
    def __init__(self, fn_name, **kw):
        self.name, self.weight, self.args = f"survive_rewards:{fn_name}", 1.0, kw.pop("args", {})
        self.timeout_s, self.max_abs = kw.get("timeout_s", 30.0), kw.get("max_abs", 1e6)


JUNK = """
import time, numpy
def nan(prompts, completions, **kw): return [float("nan")] * len(completions)
def short(prompts, completions, **kw): return [1.0] * (len(completions) - 1)
def array(prompts, completions, **kw): return numpy.ones(len(completions))
def huge(prompts, completions, **kw): return [1e30] * len(completions)
def hangs(prompts, completions, **kw): time.sleep(30)
def slow_raise(prompts, completions, **kw): time.sleep(0.3); raise RuntimeError("late")
def no_kwargs(prompts, completions): return [1.0] * len(completions)
def opts(prompts, completions, scale=1.0, **kw): return [scale] * len(completions)
"""


@pytest.fixture
def junk(tmp_path, monkeypatch):
    (tmp_path / "survive_rewards.py").write_text(JUNK)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("survive_rewards", None)


@pytest.mark.parametrize("name, text", [("nan", "non-finite"), ("short", "returned 3 values for 4 completions"),
                                        ("array", "convert a numpy array"), ("huge", "beyond rewards[].max_abs")])
def test_junk_values_are_failures_with_their_reason(junk, capsys, name, text):
    from rewards.scoring import build_rewards, score

    s = score(build_rewards([Spec(name)]), ["p"] * 4, ["a"] * 4, {})
    assert s.errors[f"survive_rewards:{name}"] == 4 and s.total == [0.0] * 4
    assert text in capsys.readouterr().err


def test_a_hanging_reward_is_abandoned_at_its_time_limit(junk, capsys):
    from rewards.scoring import build_rewards, score

    t0 = time.time()
    s = score(build_rewards([Spec("hangs", timeout_s=0.5)]), ["p"] * 8, ["a"] * 8, {})
    assert time.time() - t0 < 10 and s.errors["survive_rewards:hangs"] == 8  # not the 30 s the call takes
    t0 = time.time()
    s = score(build_rewards([Spec("slow_raise", timeout_s=1.0)]), ["p"] * 64, ["a"] * 64, {})
    # retries share the limit: about 1 s, where 64 retries of 0.3 s, each with a limit of its own, take 19 s
    assert time.time() - t0 < 10 and s.errors["survive_rewards:slow_raise"] == 64
    assert "no result after 0.5 s" in capsys.readouterr().err


def test_reward_signatures_are_checked(junk):
    from grpo.errors import UserError
    from rewards.scoring import build_rewards

    with pytest.raises(UserError, match=r"has no \*\*kwargs"):
        build_rewards([Spec("no_kwargs")])
    with pytest.raises(UserError, match="takes no option 'scal' \\(did you mean 'scale'"):
        build_rewards([Spec("opts", args={"scal": 2})])


def test_validate_names_unknown_reward_args_and_a_missing_model_dir(tmp_path, tiny_model_dir, sums_file, plugin):
    recipe = survive_recipe(tmp_path, tiny_model_dir, sums_file)
    result = grpo(plugin, "validate", recipe, "rewards=[{name: format, args: {stlye: answer}}]",
                  "model.path=recipes/no-such-model")
    assert result.returncode == 2
    assert "takes no option 'stlye' (did you mean 'style'" in result.stderr
    assert "model.path: recipes/no-such-model is not a directory, though recipes/ is a local folder" in result.stderr


# ---------------------------------------------------------------------------------------------------- data

def test_bad_rows_are_found_before_training(tmp_path, tiny_model_dir, plugin):
    data = tmp_path / "rows.jsonl"
    rows = [{"question": f"{i}+{i}=", "answer": str(2 * i)} for i in range(250)]
    rows[16] = {"answer": "1"}  # the templated column is missing
    rows[40]["answer"] = ""  # no answer
    rows[99]["question"] = "   "  # an empty prompt
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = survive_recipe(tmp_path, tiny_model_dir, data)
    result = grpo(plugin, "validate", recipe)
    assert result.returncode == 0
    assert ("warning: data: 3 of 250 rows cannot train (row 17: no column question (used by prompt_template); "
            "row 41: no answer in column 'answer'; row 100: the prompt is empty once rendered)") in result.stderr
    strict = grpo(plugin, "validate", recipe, "data.on_bad_row=error")
    assert strict.returncode == 2 and "or set data.on_bad_row=skip" in strict.stderr

    from grpo.data import usable_rows

    assert len(usable_rows(rows, "{question}", "answer", "skip")) == 247


# ---------------------------------------------------------------------------------------------------- numbers

@pytest.mark.slow
def test_a_non_finite_update_stops_the_run(tmp_path, tiny_model_dir, sums_file, plugin, monkeypatch):
    from grpo.errors import UserError
    from grpo.recipe import load_recipe
    from grpo.train import trainer
    from grpo.train.update import UpdateStats

    monkeypatch.syspath_prepend(str(plugin))
    recipe = survive_recipe(tmp_path, tiny_model_dir, sums_file)
    monkeypatch.setattr(trainer, "policy_update", lambda *a, **k: UpdateStats(loss=float("nan"), grad_norm=float("inf")))
    with pytest.raises(UserError, match="was applied, so the weights can no longer be trusted"):
        trainer.train(load_recipe(recipe))  # today's update steps anyway: stop at once

    skipped = UpdateStats(loss=float("nan"), grad_norm=float("inf"))
    skipped.skipped = True  # what the update reports once it skips a non-finite step
    monkeypatch.setattr(trainer, "policy_update", lambda *a, **k: skipped)
    with pytest.raises(UserError, match="3 updates in a row had a non-finite loss"):
        trainer.train(load_recipe(recipe, [f"output_dir={tmp_path / 'run2'}"]))
