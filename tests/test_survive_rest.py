"""The rest of issue 26 (survive, round two): what a reward returns is a number or an error that says so, with
the right counts; `grpo rewards` marks an entry point that cannot import; the math grader's recursion on short
random strings; room for one checkpoint at start; eval writing samples as it goes, its plugin graders in workers."""

from __future__ import annotations

import os
import sys
import textwrap

import pytest
from conftest import grpo, write_recipe

from rewards.scoring import build_rewards, close_rewards, named, reward_columns, score

JUNK = """
def text(prompts, completions, **kw):
    return ["1.0"] * len(completions)

def short(prompts, completions, **kw):
    return [1.0] * (len(completions) - 1)

def gold_as_score(prompts, completions, answer, **kw):  # a dataset column returned as it is: strings
    return answer

def scored_rows(prompts, completions, answer, **kw):  # drops the rows with no answer: one value short
    return [float(a) for a in answer if a is not None]
"""


class Spec:
    def __init__(self, fn_name, module="rest_rewards"):
        self.name, self.weight, self.args = f"{module}:{fn_name}", 1.0, {}
        self.timeout_s, self.max_abs = 30.0, 1e6


@pytest.fixture
def junk(tmp_path, monkeypatch):
    monkeypatch.delenv("GRPO_REWARDS_IN_PROCESS", raising=False)  # plugins run in their workers, as in a run
    (tmp_path / "rest_rewards.py").write_text(JUNK)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("rest_rewards", None)
    built = []

    def build(*names):
        rewards = build_rewards([Spec(n) for n in names])
        built.extend(rewards)
        return rewards

    yield build
    close_rewards(built)


def columns(n, answers=None):
    answers = answers if answers is not None else [str(i) for i in range(n)]
    return reward_columns([{"question": "q"}] * n, answers, [[1, 2]] * n, ["stop"] * n, 8)


# ---------------------------------------------------------------------------------------- 1: numbers, not text

def test_a_numeric_string_is_an_error_naming_the_reward_the_value_and_the_fix(capsys):
    def says_one(prompts, completions, **kw):
        return ["1.0"] * len(completions)

    s = score([named("says_one", says_one)], ["p"] * 3, ["a"] * 3, columns(3))
    assert s.total == [0.0] * 3 and s.errors["says_one"] == 3  # not 1.0 each, as float("1.0") would give
    err = capsys.readouterr().err
    assert "reward 'says_one' failed" in err and "returned the text '1.0'" in err
    assert 'return 1.0, not "1.0"' in err


def test_a_dataset_column_of_text_returned_by_a_plugin_is_refused_in_its_worker(junk, capsys):
    [reward] = junk("gold_as_score")
    s = score([reward], ["p"] * 4, ["a"] * 4, columns(4, ["1", "0", "2", "1"]))
    assert s.total == [0.0] * 4 and s.errors["rest_rewards:gold_as_score"] == 4
    err = capsys.readouterr().err
    assert "returned the text '1' as value 1 of 4, not a number" in err


def test_bools_and_numeric_types_count_as_numbers():
    import numpy as np

    def mixed(prompts, completions, **kw):
        return [True, False, np.float32(0.5), 2, None]

    s = score([named("mixed", mixed)], ["p"] * 5, ["a"] * 5, columns(5))
    # bool: True is an int in Python; a "was it right?" reward returning it means 1.0 (rewards/scoring._number)
    assert s.per_reward["mixed"] == [1.0, 0.0, 0.5, 2.0, None] and s.errors["mixed"] == 0


def test_a_long_text_value_is_cut_in_the_message(capsys):
    def essay(prompts, completions, **kw):
        return ["x" * 1_000_000] * len(completions)

    score([named("essay", essay)], ["p"] * 2, ["a"] * 2, columns(2))
    err = capsys.readouterr().err
    assert "returned the text 'xxx" in err and len(err) < 2000


# ---------------------------------------------------------------------------------- 2: wrong length, right counts

def test_a_wrong_length_in_process_gives_the_batchs_counts(capsys):
    def one_short(prompts, completions, **kw):
        return [1.0] * (len(completions) - 1)

    s = score([named("one_short", one_short)], ["p"] * 4, ["a"] * 4, columns(4))
    assert s.errors["one_short"] == 4
    err = capsys.readouterr().err
    assert "reward 'one_short' failed on a batch of 4" in err
    assert "returned 3 values for 4 completions; expected one float (or None) per completion" in err
    assert "1 completions" not in err  # the retry's own counts are said as the retry's, not as the batch's


def test_a_wrong_length_through_the_worker_gives_the_batchs_counts(junk, capsys):
    [reward] = junk("short")
    s = score([reward], ["p"] * 6, ["a"] * 6, columns(6))
    assert s.errors["rest_rewards:short"] == 6
    err = capsys.readouterr().err
    assert "reward 'rest_rewards:short' failed on a batch of 6" in err and "returned 5 values for 6 completions" in err


def test_a_column_reward_that_drops_rows_gives_the_batchs_counts(junk, capsys):
    [reward] = junk("scored_rows")
    s = score([reward], ["p"] * 4, ["a"] * 4, columns(4, ["1", None, "0", "1"]))
    # one at a time, the rows with an answer score; the batch's result could not be placed row by row
    assert s.per_reward["rest_rewards:scored_rows"] == [1.0, 0.0, 0.0, 1.0]
    assert s.errors["rest_rewards:scored_rows"] == 1
    err = capsys.readouterr().err
    assert "returned 3 values for 4 completions" in err and "on completion 2 alone: returned 0 values for 1 " in err


# ----------------------------------------------------------------------------- 3: an entry point that cannot import

def fake_distribution(folder, dist, entries: dict[str, str], modules: dict[str, str]):
    """A package importlib.metadata sees once `folder` is on sys.path: modules and a .dist-info with entry points."""
    for module, source in modules.items():
        (folder / f"{module}.py").write_text(textwrap.dedent(source))
    info = folder / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "\n".join(f"{name} = {target}" for name, target in entries.items())
    (info / "entry_points.txt").write_text(f"[grpo.rewards]\n{lines}\n")


def on_path(folder) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}


@pytest.fixture
def broken_plugin(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    fake_distribution(plugins, "shaky_rewards",
                      {"steady": "steady_mod:steady", "shaky": "shaky_mod:shaky", "quits": "quits_mod:quits"},
                      {"steady_mod": "def steady(prompts, completions, **kw):\n    return [1.0] * len(completions)\n",
                       "shaky_mod": "import no_such_dependency_xyz\n\ndef shaky(prompts, completions, **kw): ...\n",
                       "quits_mod": "import os\nos._exit(7)\n"})
    return plugins


def test_grpo_rewards_marks_an_entry_point_that_cannot_import_and_exits_2(broken_plugin):
    result = grpo("rewards", env={**on_path(broken_plugin), "GRPO_REWARDS_IN_PROCESS": ""}, timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "BROKEN" not in lines["steady"] and "BROKEN" not in lines["math"]
    assert "shaky_rewards 0.1  BROKEN: cannot import module 'shaky_mod' (No module named " \
           "'no_such_dependency_xyz')" in lines["shaky"]
    assert "shaky_rewards 0.1  BROKEN: the reward's worker exited with code 7" in lines["quits"]
    assert "2 installed rewards cannot be used: 'quits' (shaky_rewards 0.1), 'shaky'" in result.stderr
    assert "pip uninstall shaky_rewards" in result.stderr
    assert "Traceback" not in result.stderr


def test_grpo_rewards_exits_0_when_every_reward_imports(tmp_path):
    fake_distribution(tmp_path, "fine_rewards", {"fine": "fine_mod:fine"},
                      {"fine_mod": "def fine(prompts, completions, **kw):\n    return [0.0] * len(completions)\n"})
    result = grpo("rewards", env=on_path(tmp_path), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fine_mod:fine" in result.stdout and "BROKEN" not in result.stdout


def test_validate_refuses_a_recipe_naming_an_entry_point_that_cannot_import(broken_plugin, monkeypatch, tmp_path,
                                                                             tiny_model_dir, sums_file):
    from grpo.errors import UserError
    from grpo.validate import validate_recipe

    monkeypatch.delenv("GRPO_REWARDS_IN_PROCESS", raising=False)
    monkeypatch.syspath_prepend(str(broken_plugin))
    recipe = write_recipe(tmp_path, tiny_model_dir, sums_file, "shaky")
    with pytest.raises(UserError) as info:
        validate_recipe(recipe)
    assert "rewards[0].name: reward 'shaky' (shaky_rewards 0.1): cannot import module 'shaky_mod'" in str(info.value)
    assert "shaky_mod" not in sys.modules  # imported in a throwaway worker, not here


# ------------------------------------------------------------------- 4: the math grader on short random strings

# Found by fuzzing 16-character strings (digits, brackets, operators, letters, ":" ...): each raised RecursionError
# out of rewards.math.score (a ":" inside brackets made equal() call itself on the same two strings forever).
RECURSED = [" $.3z=r|,]c:6|}c", " (8\\45*-p:i./c:1", "!(/+6/itz$8\\6,:!", "(.:=/0ef1!xt1{5b", "((<: ;[;61;};x27",
            "%x!4!>*(|:)q8*(i", "(1:2)", "f(x:y)", "[a:b]", "\\{1:2\\}"]
# And IndexError: a box holding \ldots itself miscounted the boxes of the final group.
INDEXED = ["\\boxed{\\ldots} and %\\begin{pmatrix}:(}", "\\boxed{2\\\\z=\\infty% and })$9:t\\pm\\frac0\\\\}\\boxed{\\ldots}"]


@pytest.mark.parametrize("text", RECURSED + INDEXED)
def test_strings_that_broke_the_math_grader_score_0_without_raising(text):
    from rewards.math import score

    for completion, gold in ((text, "2"), (f"\\boxed{{{text}}}", "2"), ("\\boxed{2}", text), (text, text),
                             (f"\\boxed{{{text}}}", "[c:d]")):
        assert score(completion, gold) in (0.0, 1.0)  # a verdict; before, a RecursionError or IndexError


def test_a_colon_inside_brackets_is_not_a_ratio_but_ratios_still_compare():
    from rewards.math import score

    assert score("\\boxed{(1:2)}", "(1:2)") == 1.0  # the same answer, judged whole
    assert score("\\boxed{3:4}", "\\frac{3}{4}") == 1.0 and score("\\boxed{12:00}", "12:00") == 1.0
    assert score("\\boxed{3:4}", "4:3") == 0.0


def test_random_short_strings_never_raise_from_the_math_grader(monkeypatch):
    import random

    import rewards.mathcheck.compare as compare
    from rewards.math import score

    monkeypatch.setattr(compare, "_sympy", lambda p, g, tol=None: False)  # the in-process part; sympy has a worker
    rng = random.Random(26)
    alphabet = list("0123456789^()[]{}\\*/+-.,:=;|!<>%$ abcxyzefpi") + ["\\frac", "\\boxed{", "\\{", "\\}", "\\ldots"]
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(16))
        for completion, gold in ((text, "2"), (f"\\boxed{{{text}}}", "2"), ("\\boxed{2}", text), (text, text)):
            assert score(completion, gold) in (0.0, 1.0), (completion, gold)


def test_exact_arithmetic_keeps_its_results_with_a_bounded_depth():
    from rewards.mathcheck.numbers import exact_value

    assert exact_value("-(-(-(2)))") == -2 and exact_value("--2") == 2 and exact_value("-+-2^2") == 4
    assert exact_value("((((1+2))))\\times 3") == 9 and exact_value("\\frac{\\frac{1}{2}}{2}") == 0.25
    assert exact_value("(" * 80 + "1" + ")" * 80) is None  # deeper than a plain number goes: not parsed at all
    assert exact_value("-" * 250 + "1") == 1  # signs are a loop, not a call each


# ------------------------------------------------------------------------ 5: room for one checkpoint, at the start

def fake_free_space(free: int):
    import collections
    import shutil

    real = shutil.disk_usage
    usage = collections.namedtuple("usage", "total used free")
    return lambda path: usage(10**12, 10**12 - free, free) if os.path.exists(path) else real(path)


def test_validate_refuses_an_output_dir_without_room_for_one_checkpoint(tmp_path, tiny_model_dir, sums_file,
                                                                         monkeypatch):
    import shutil

    from grpo.errors import UserError
    from grpo.plan import read_model_shape
    from grpo.validate import validate_recipe

    recipe = write_recipe(tmp_path, tiny_model_dir, sums_file, "math")
    shape, _ = read_model_shape(str(tiny_model_dir))
    one = 3 * shape.parameters() * 4  # float32 master weights and AdamW's two moments
    monkeypatch.setattr(shutil, "disk_usage", fake_free_space(one // 2))
    with pytest.raises(UserError) as info:
        validate_recipe(recipe)
    message = str(info.value)
    assert f"output_dir: {tmp_path / 'run'} has {one // 2 / 2**20:.1f} MiB free on its file system" in message
    assert f"needs about {one * 1.1 / 2**20:.1f} MiB (parameters {shape.parameters():,} x float32 x 3" in message
    assert "choose an output_dir on a larger disk" in message

    notes: list[str] = []
    monkeypatch.setattr(shutil, "disk_usage", fake_free_space(int(one * 1.5)))  # one fits, keep_last=2 (+1) do not
    validate_recipe(recipe, warnings=notes)
    assert any("holds one checkpoint" in n and "checkpoint.keep_last=2" in n for n in notes), notes
    monkeypatch.setattr(shutil, "disk_usage", fake_free_space(one * 100))
    notes.clear()
    validate_recipe(recipe, warnings=notes)
    assert not any("checkpoint" in n for n in notes)
    validate_recipe(recipe, check_environment=False)  # --recipe-only: this machine's disk is not asked


@pytest.mark.slow  # grpo train in a child process
def test_train_refuses_before_loading_the_model_when_one_checkpoint_cannot_fit(tmp_path, tiny_model_dir, sums_file):
    recipe = write_recipe(tmp_path, tiny_model_dir, sums_file, "math")
    pre = ("import os, shutil, collections\n_real = shutil.disk_usage\n_u = collections.namedtuple('u', 'total used free')"
           "\nshutil.disk_usage = lambda p: _u(10**12, 10**12 - 4096, 4096) if os.path.exists(p) else _real(p)")
    result = grpo("train", recipe, pre=pre, cwd=tmp_path, timeout=600)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "has 0.0 MiB free on its file system; one checkpoint of" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run" / "metrics.jsonl").exists()


# ------------------------------------------------- 6: eval writes samples as it goes; a user's grader in a worker

EVAL_GRADERS = """
import os, signal, sys, time

def even_first(prompts, completions, answer, **kw):
    return [1.0 if c[:1] and ord(c[0]) % 2 == 0 else 0.0 for c in completions]

def exits(prompts, completions, answer, **kw):
    if any(c.startswith("x") for c in completions):
        os._exit(9)  # in the eval's own process this would end the eval with no word
    return [1.0] * len(completions)

def hangs(prompts, completions, answer, **kw):
    if any(c.startswith("x") for c in completions):
        time.sleep(60)  # long past the 2 s limit the test sets; short enough that a regression fails, not hangs
    return [1.0] * len(completions)

def where(prompts, completions, answer, **kw):
    return [float(os.getpid())] * len(completions)

def interrupts_on_the_third_chunk(prompts, completions, answer, **kw):  # Ctrl-C, as the terminal sends it
    where = os.environ["GRADER_COUNT"]
    calls = int(open(where).read() or 0) + 1 if os.path.exists(where) else 1
    open(where, "w").write(str(calls))
    if calls == 3:
        os.kill(os.getppid(), signal.SIGINT)
        time.sleep(30)
    return [1.0] * len(completions)
"""


class ScriptedSampler:
    """Answers with the texts given, in turn over all its calls; raises what `fail` maps a call number to."""

    backend = "hf"

    def __init__(self, texts, fail=None):
        self.texts, self.fail, self.calls, self.drawn = texts, fail or {}, 0, 0

    def generate(self, prompt_ids, settings, rows=None):
        from grpo.sampling.base import Completion, Group

        self.calls += 1
        if self.calls in self.fail:
            raise self.fail[self.calls]
        groups = []
        for p in prompt_ids:
            texts = [self.texts[(self.drawn + j) % len(self.texts)] for j in range(settings.n)]
            self.drawn += settings.n
            groups.append(Group(list(p), [Completion([5], [0.0], t, "stop") for t in texts]))
        return groups

    def close(self):
        pass


@pytest.fixture
def eval_graders(tmp_path, monkeypatch):
    monkeypatch.delenv("GRPO_REWARDS_IN_PROCESS", raising=False)
    folder = tmp_path / "graders"
    folder.mkdir()
    (folder / "eval_rest_graders.py").write_text(EVAL_GRADERS)
    monkeypatch.syspath_prepend(str(folder))
    sys.modules.pop("eval_rest_graders", None)
    return folder


@pytest.fixture
def five_problems(tmp_path):
    import json

    path = tmp_path / "five.jsonl"
    path.write_text("".join(json.dumps({"question": f"{a}+1=", "answer": str(a + 1)}) + "\n" for a in range(5)))
    return path


def small_eval(data, grader, **fields):
    from conftest import eval_config

    return eval_config(data, f"eval_rest_graders:{grader}", generation_batch_size=2, k=2, **fields)  # 1 per call


def test_an_interrupted_eval_keeps_the_problems_it_graded(tmp_path, tiny_model_dir, five_problems, eval_graders,
                                                          capsys):
    import json

    from grpo.eval.run import run_eval
    from grpo.modeling import load_tokenizer

    out = tmp_path / "out"
    sampler = ScriptedSampler(["4", "y"], fail={4: KeyboardInterrupt()})  # ord("4") even: right; "y" odd
    with pytest.raises(KeyboardInterrupt):
        run_eval(small_eval(five_problems, "even_first"), tokenizer=load_tokenizer(tiny_model_dir), sampler=sampler,
                 output_dir=out, progress=False, console=False)
    partial = [json.loads(line) for line in (out / "samples.partial.jsonl").read_text().splitlines()]
    assert [r["index"] for r in partial] == [0, 1, 2]  # the three problems graded before the interrupt
    assert [s["score"] for s in partial[0]["samples"]] == [1.0, 0.0]
    assert not (out / "samples.jsonl").exists() and not (out / "summary.json").exists()
    assert f"eval stopped after 3 of 5 problems; their samples are in {out / 'samples.partial.jsonl'}" in \
        capsys.readouterr().err

    summary = run_eval(small_eval(five_problems, "even_first"), tokenizer=load_tokenizer(tiny_model_dir),
                       sampler=ScriptedSampler(["4", "y"]), output_dir=out, progress=False, console=False)
    assert summary["metrics"]["overall"]["problems"] == 5
    assert len((out / "samples.jsonl").read_text().splitlines()) == 5 and (out / "summary.json").is_file()
    assert not (out / "samples.partial.jsonl").exists()  # a finished eval leaves the complete files only


def test_a_user_grader_runs_in_a_worker_and_its_exit_costs_the_worker_not_the_eval(
        tmp_path, tiny_model_dir, five_problems, eval_graders, capsys):
    from grpo.eval.run import run_eval
    from grpo.modeling import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    summary = run_eval(small_eval(five_problems, "where"), tokenizer=tokenizer, sampler=ScriptedSampler(["4"]),
                       output_dir=tmp_path / "pid", progress=False, console=False)
    assert summary["grader"]["function"] == "eval_rest_graders:where"
    assert "eval_rest_graders" not in sys.modules  # imported in its worker only

    summary = run_eval(small_eval(five_problems, "exits"), tokenizer=tokenizer,
                       sampler=ScriptedSampler(["4", "x", "4", "4"]), output_dir=tmp_path / "exit", progress=False,
                       console=False)
    # problems 0, 2 and 4 drew "x": their calls ended the worker (both samples scored 0 and counted); problems 1
    # and 3 were scored by fresh workers
    assert summary["metrics"]["overall"]["problems"] == 5 and summary["grader"]["errors"] == 6
    assert summary["metrics"]["overall"]["metrics"]["avg@2"] == pytest.approx(0.4)
    assert "the reward's worker exited with code 9" in capsys.readouterr().err


def test_a_user_grader_that_hangs_is_abandoned_at_its_limit(tmp_path, tiny_model_dir, five_problems, eval_graders,
                                                           monkeypatch):
    import time

    import grpo.eval.run as run

    monkeypatch.setattr(run, "GRADER_MIN_S", 2.0)
    from grpo.modeling import load_tokenizer

    t0 = time.monotonic()
    summary = run.run_eval(small_eval(five_problems, "hangs", limit=2), tokenizer=load_tokenizer(tiny_model_dir),
                           sampler=ScriptedSampler(["x", "4"]), output_dir=tmp_path / "o", progress=False,
                           console=False)
    assert time.monotonic() - t0 < 30 and summary["grader"]["errors"] == 4  # both problems' calls, 2 s each


@pytest.mark.slow  # grpo eval in a child process
def test_ctrl_c_mid_eval_exits_130_and_keeps_the_graded_problems(tmp_path, tiny_model_dir, five_problems,
                                                                 eval_graders):
    out = tmp_path / "out"
    env = {**on_path(eval_graders), "GRADER_COUNT": str(tmp_path / "count"), "GRPO_REWARDS_IN_PROCESS": ""}
    # Python leaves SIGINT ignored in a process that inherits it ignored (a job started with `&` from a script, as
    # a loaded CI harness may start the suite): Ctrl-C's handler is installed first, as a terminal's shell has it.
    result = grpo("eval", "--model", tiny_model_dir, "--data", five_problems, "--prompt-template", "{question}",
                  "--grader", "eval_rest_graders:interrupts_on_the_third_chunk", "--k", "2", "--batch-size", "2",
                  "--max-tokens", "3", "--output-dir", out, env=env, timeout=600,
                  pre="import signal; signal.signal(signal.SIGINT, signal.default_int_handler)")
    assert result.returncode == 130, result.stderr[-2000:]
    assert "eval stopped after 2 of 5 problems" in result.stderr and "Traceback" not in result.stderr
    assert len((out / "samples.partial.jsonl").read_text().splitlines()) == 2
    assert not (out / "summary.json").exists()
