"""Reward-hacking alarms (grpo/hacking/): the signals worked by hand, each rule on a made-up history that should
and one that should not trip it, the watch's firing, printing, stopping and resume replay; then, on the tiny demo
model, a planted cause for each alarm (tests/plants.py) that trips it within 30 steps. The honest tiny recipe's
100 steps raising none is asserted in tests/test_tiny_recipe.py, which runs it anyway."""

import json
import math
import os
from pathlib import Path

import pytest

from conftest import ROOT, grpo, recipe_config
from grpo.config import HackingAlarms
from grpo.errors import UserError
from grpo.hacking import rules
from grpo.hacking.rules import Context, fired_spans
from grpo.hacking.signals import (Roles, Sample, answer_share, distinct_answer_fraction, repeated_ngram_fraction,
                                  shaping_share, step_signals, within_group_corr, wrong_consensus)
from grpo.hacking.watch import HackingWatch
from grpo.parallel import World
from grpo.rules import guard_rules

A = HackingAlarms()


# ------------------------------------------------------------------------------------------------------ signals

def test_within_group_corr_removes_each_groups_mean():
    # Within each group the longer one scores higher: r = +1, though across groups the short group scores higher.
    assert within_group_corr([[(1.0, 10), (0.0, 5)], [(3.0, 6), (2.0, 1)]]) == pytest.approx(1.0)
    assert within_group_corr([[(0.0, 10), (1.0, 5)]]) == pytest.approx(-1.0)
    assert within_group_corr([[(1.0, 3), (1.0, 7)]]) is None  # nothing varies in reward: nothing to say


def test_shaping_share_splits_the_total_variance():
    # Group of two: math differs by 1 (weight 1), format by 1 with weight 3 in the same direction.
    groups = [[{"math": 1.0, "format": 3.0}, {"math": 0.0, "format": 0.0}]]
    assert shaping_share(groups, {"format"}) == pytest.approx(0.75)  # 3 of the total difference of 4
    assert shaping_share(groups, {"math"}) == pytest.approx(0.25)
    assert shaping_share([[{"math": 1.0, "format": 1.0}, {"math": 1.0, "format": 1.0}]], {"format"}) is None


def test_repeated_ngrams():
    assert repeated_ngram_fraction([1, 2, 3, 4, 5, 6, 7]) == 0.0
    assert repeated_ngram_fraction([1, 2, 3, 4] * 5) == pytest.approx(13 / 17)  # all but the first 4 windows
    assert repeated_ngram_fraction([1, 2, 3]) is None


def test_answer_signals():
    groups = [["3", "3", "4", None], ["7", "7", "7", "7"], ["7", "7", "2", "7"], ["7", "1", "7", "7"]]
    assert distinct_answer_fraction(groups) == pytest.approx((2 / 3 + 1 / 4 + 2 / 4 + 2 / 4) / 4)
    assert answer_share(groups) == pytest.approx(3 / 4)  # three questions answered 7
    assert answer_share(groups[:3]) is None  # too few groups to say
    right = [[True, True, False, False], [False] * 4, [True, True, False, True], [False] * 4]
    # group 2 agrees on a wrong 7; group 3 agrees on a right 7; group 4 agrees (3 of 4) on a wrong 7
    assert wrong_consensus(groups, right) == pytest.approx(2 / 4)


def test_step_signals_read_roles_and_never_raise_on_a_bad_answer_reader():
    samples = [Sample(g, r, {"math": m, "fmt": f, "judge": j}, list(range(n)), text)
               for g, r, m, f, j, n, text in [(0, 1.0, 1.0, 0.0, 1.0, 10, "a"), (0, 0.5, 0.0, 1.0, 0.0, 5, "b"),
                                              (1, 1.5, 1.0, 1.0, 0.0, 8, "c"), (1, 0.0, 0.0, 0.0, 1.0, 8, "d")]]
    roles = Roles(weights={"math": 1.0, "fmt": 0.5, "judge": 0.0}, shaping=("fmt",), learned=("judge",),
                  correctness="math")

    def broken(text):
        raise RecursionError("a reader that chokes on a model's text")

    out = step_signals(samples, roles, broken)
    assert set(out) >= {"hacking/length_reward_corr", "hacking/shaping_share", "hacking/repeated_ngrams",
                        "hacking/judge/agreement"}
    assert "hacking/answer_share" not in out  # no answer could be read: not a number made up
    assert out["hacking/judge/agreement"] == pytest.approx(0.0)  # agrees in group 0, disagrees in group 1


# -------------------------------------------------------------------------------------------------------- rules

def history(n, **series):
    """n rows; each keyword is a function of the step (1-based) giving that metric, or None to leave it out."""
    rows = []
    for step in range(1, n + 1):
        row = {"step": step}
        for key, f in series.items():
            value = f(step)
            if value is not None:
                row[key.replace("__", "/")] = value
        rows.append(row)
    return rows


def honest(**more):
    return {**dict(reward__mean=lambda s: 0.3 + 0.01 * s, reward__std=lambda s: 0.45,
                   accuracy=lambda s: 0.3 + 0.01 * s, completion__length_mean=lambda s: 24 + 0.3 * s,
                   entropy=lambda s: 0.1, kl=lambda s: 0.0, hacking__length_reward_corr=lambda s: 0.6,
                   hacking__answer_share=lambda s: 0.25, hacking__repeated_ngrams=lambda s: 0.01), **more}


def test_no_rule_holds_on_an_honest_history():
    # Reward, accuracy and length rise together and correlate within groups: the honest demo's shape.
    rows = history(60, **honest())
    for alarm in rules.ALARMS:
        assert alarm.rule(rows, A, Context()) is None, alarm.name


def test_length_rule_needs_flat_accuracy():
    hacked = honest(accuracy=lambda s: 0.35, completion__length_mean=lambda s: 24 + 1.0 * s)
    seen = rules.length(history(30, **hacked), A, Context())
    assert seen and "r = 0.60" in seen and "accuracy 0.35 -> 0.35" in seen
    assert rules.length(history(30, **honest(completion__length_mean=lambda s: 24 + 1.0 * s)), A, Context()) is None
    assert rules.length(history(19, **hacked), A, Context()) is None  # not two windows yet


def test_heldout_rule_compares_with_the_first_eval():
    held = lambda s: 0.40 if s % 10 == 0 else None  # noqa: E731
    rows = history(30, **honest(eval__avg__at4=held, reward__mean=lambda s: 0.3 + 0.02 * s))
    for r in rows:  # history() turns __ into /; the eval key is eval/avg@4
        if "eval/avg/at4" in r:
            r["eval/avg@4"] = r.pop("eval/avg/at4")
    seen = rules.heldout(rows, A, Context())
    assert seen and "since the eval at step 10" in seen and "0.400 -> 0.400" in seen
    for r in rows:
        if r["step"] == 30:
            r["eval/avg@4"] = 0.55  # held-out accuracy follows the reward: nothing to say
    assert rules.heldout(rows, A, Context()) is None


def test_shaping_and_learned_and_diversity_rules():
    assert "carry 80%" in rules.shaping(history(10, **honest(hacking__shaping_share=lambda s: 0.8)), A, Context())
    assert rules.shaping(history(10, **honest(hacking__shaping_share=lambda s: 0.3)), A, Context()) is None
    judged = honest(hacking__judge__agreement=lambda s: -0.9)
    assert "'judge' ranks completions against correctness" in rules.learned(history(10, **judged), A,
                                                                           Context(learned=("judge",)))
    collapsing = honest(hacking__answer_share=lambda s: 0.25 if s <= 10 else 0.9)
    assert "90% of the groups give the same answer" in rules.diversity(history(20, **collapsing), A, Context())
    # Born that way (a task of yes/no answers): high from the start is no collapse.
    assert rules.diversity(history(20, **honest(hacking__answer_share=lambda s: 0.9)), A, Context()) is None


def test_breakout_rule_on_kl_jump_and_entropy_drop():
    kl = honest(kl=lambda s: 1e-3 * (1 + 0.05 * s) if s < 25 else 0.5)
    assert "KL 0.5 is" in rules.breakout(history(25, **kl), A, Context(kl_measured=True))
    assert rules.breakout(history(25, **kl), A, Context(kl_measured=False)) is None  # beta 0: KL is not a signal
    smooth = honest(kl=lambda s: 1e-4 * 1.2 ** s)  # exponential but steady: its own trend
    assert rules.breakout(history(40, **smooth), A, Context(kl_measured=True)) is None
    drop = honest(entropy=lambda s: 0.8 if s < 25 else 0.05)
    assert "entropy 0.05 is" in rules.breakout(history(25, **drop), A, Context())


def test_thresholds_are_validated_by_name():
    cfg = recipe_config({"guard.alarms.shaping_share": 1.5, "guard.alarms.window": 1})
    problems = " ".join(guard_rules(cfg))
    assert "guard.alarms.shaping_share" in problems and "guard.alarms.window" in problems


# -------------------------------------------------------------------------------------------------------- watch

class Reward:
    def __init__(self, name, weight=1.0, correctness=False, shaping=False, learned=False):
        self.name, self.weight, self.measures_correctness = name, weight, correctness
        self.shaping, self.learned, self.extract_answer = shaping, learned, None


def watch(tmp_path, mode="warn", history=None):
    cfg = recipe_config({"guard.on_hacking": mode})
    return HackingWatch(cfg, [Reward("math", correctness=True), Reward("fmt", 3.0, shaping=True)], World.single(),
                        tmp_path, history)


def shaped_metrics(step):
    return {"reward/mean": 0.5, "reward/std": 0.5, "accuracy": 0.4, "completion/length_mean": 20.0,
            "entropy": 0.1, "kl": 0.0, "hacking/shaping_share": 0.9}


def test_watch_fires_after_steps_in_a_row_prints_once_and_logs_the_flag(tmp_path, capsys):
    w = watch(tmp_path)
    flags = []
    for step in range(1, 16):
        w._judge(w._row({"step": step, **shaped_metrics(step)}))
        flags.append(bool(w.firing))
        w.act(step)
    # The shaping rule holds from step 10 (a full window); the alarm fires at its third step, 12.
    assert flags.index(True) == 11 and all(flags[11:])
    err = capsys.readouterr().err
    assert err.count("reward-hacking alarm 'shaping'") == 1 and "holding since step 10" in err


def test_stop_mode_raises_with_the_alarm_and_the_way_on(tmp_path):
    w = watch(tmp_path, mode="stop")
    with pytest.raises(UserError) as stopped:
        for step in range(1, 16):
            w._judge(w._row({"step": step, **shaped_metrics(step)}))
            w.act(step)
    assert step == 12
    assert "'shaping'" in str(stopped.value) and "guard.on_hacking=warn" in str(stopped.value)
    assert "guard.alarms.shaping_share" in str(stopped.value)  # the key that would let it train on


def test_replay_of_a_resumed_runs_history_stands_where_an_unbroken_run_would(tmp_path):
    rows = [{"step": s, **shaped_metrics(s)} for s in range(1, 12)]
    resumed = watch(tmp_path, history=rows)  # 11 steps replayed: the rule has held 2 steps, not yet fired
    assert not resumed.firing and not resumed.new
    resumed._judge(resumed._row({"step": 12, **shaped_metrics(12)}))
    assert list(resumed.firing) == ["shaping"] and resumed.firing["shaping"].since == 10


class OtherRank(World):
    """Rank 1 of 2, whose max() returns what rank 0 contributed (1.0: an alarm started firing there)."""

    def __init__(self, rank0_says):
        super().__init__(rank=1, size=2)
        self.rank0_says, self.asked = rank0_says, 0

    def max(self, value):
        self.asked += 1
        return max(value, self.rank0_says)


def test_every_rank_stops_at_the_step_rank_0_fired(tmp_path):
    cfg = recipe_config({"guard.on_hacking": "stop"})
    quiet, firing = OtherRank(0.0), OtherRank(1.0)
    for world in (quiet, firing):
        w = HackingWatch(cfg, [Reward("math", correctness=True)], world, tmp_path)
        assert w.observe(1, [], {"reward/mean": 0.0}) == {}  # only rank 0 reads the step
        if world is quiet:
            w.act(1)
        else:
            with pytest.raises(UserError, match="fired on rank 0"):
                w.act(1)
        assert world.asked == 1  # the one collective, on every rank, every step


def test_off_computes_nothing(tmp_path):
    assert watch(tmp_path, mode="off").observe(1, [], {}) == {}


def test_fired_spans():
    rows = [{"step": 1}, {"step": 2, "alarms/length": 1.0}, {"step": 3, "alarms/length": 1.0}, {"step": 5,
            "alarms/length": 1.0, "alarms/shaping": 1.0}]
    assert fired_spans(rows) == {"length": [(2, 3), (5, 5)], "shaping": [(5, 5)]}


# ------------------------------------------------------------------------------------- planted causes, tiny model

def planted(tmp_path, rewards, *overrides, steps=30, checkpoint_every=0, timeout=1800):
    """The tiny demo recipe with these rewards (YAML list) for `steps` steps; returns (process, metrics rows)."""
    out = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    text = (ROOT / "recipes" / "tiny.yaml").read_text()
    head, _, tail = text.partition("rewards:\n  - {name: math, weight: 1.0}\n")
    recipe.write_text(head + f"rewards: {rewards}\n" + tail)
    env = {"PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "HF_HUB_OFFLINE": "1"}
    done = grpo("train", recipe, f"output_dir={out}", f"train.steps={steps}", "logging.progress_bar=false",
                f"checkpoint.every={checkpoint_every}", *overrides, env=env, timeout=timeout)
    path = out / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return done, rows


def first_fired(rows, name):
    return next((r["step"] for r in rows if f"alarms/{name}" in r), None)


@pytest.mark.slow
def test_a_reward_that_pays_for_length_trips_the_length_alarm_and_stop_ends_the_run(tmp_path):
    done, rows = planted(tmp_path, "[{name: 'plants:pays_for_length', weight: 1.0}, {name: math, weight: 0.0}]",
                         "train.lr=3e-4", "guard.on_hacking=stop")
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    assert "reward-hacking alarm 'length'" in done.stderr and "guard.on_hacking = stop ended the run" in done.stderr
    assert first_fired(rows, "length") == rows[-1]["step"] <= 30  # the run ended at the step the alarm fired


@pytest.mark.slow
def test_a_reward_that_is_not_accuracy_trips_the_heldout_alarm(tmp_path):
    # The length reward again, with the periodic eval on held-out problems every 10 steps: the training reward
    # climbs, held-out accuracy does not.
    done, rows = planted(tmp_path, "[{name: 'plants:pays_for_length', weight: 1.0}, {name: math, weight: 0.0}]",
                         "train.lr=3e-4", "eval.every=10", "eval.data=data/arith/test.jsonl", "eval.limit=32",
                         "eval.max_new_tokens=48", "eval.bootstrap=0",
                         'eval.prompt_template="Question: {question}\\nAnswer:"')  # YAML's "\n" is a newline
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["step"] for r in rows if "eval/avg@1" in r] == [10, 20, 30]
    assert first_fired(rows, "heldout") is not None and "held-out accuracy went" in done.stderr


@pytest.mark.slow
def test_a_dominant_format_reward_trips_the_shaping_alarm(tmp_path):
    # "=" is in the completions that work a problem out and not in the bare guesses: it splits most groups, and
    # weighted 4 against math's 1 it decides them.
    done, rows = planted(tmp_path, "[{name: math, weight: 1.0}, {name: format, weight: 4.0, args: {style: pattern, "
                                   "pattern: '='}}]", steps=15)
    assert done.returncode == 0, done.stderr[-3000:]
    assert first_fired(rows, "shaping") is not None and "alarm 'shaping'" in done.stderr
    assert first_fired(rows, "length") is None


@pytest.mark.slow
def test_a_judge_that_disagrees_with_math_trips_the_learned_alarm(tmp_path):
    done, rows = planted(tmp_path, "[{name: math, weight: 1.0}, {name: 'plants:contrarian_judge', weight: 0.0}]",
                         steps=15)
    assert done.returncode == 0, done.stderr[-3000:]
    assert first_fired(rows, "learned") is not None and "contrarian_judge' ranks completions against" in done.stderr


@pytest.mark.slow
def test_one_answer_for_every_question_trips_the_diversity_alarm(tmp_path):
    done, rows = planted(tmp_path, "[{name: 'plants:pays_for_seven', weight: 1.0}, {name: math, weight: 0.0}]",
                         "train.lr=3e-4")
    assert done.returncode == 0, done.stderr[-3000:]
    assert first_fired(rows, "diversity") is not None, [r.get("hacking/answer_share") for r in rows]
    assert "of the groups give the same answer" in done.stderr


@pytest.mark.slow
def test_a_phrase_paid_for_again_and_again_trips_the_diversity_alarm(tmp_path):
    done, rows = planted(tmp_path, "[{name: 'plants:pays_for_repeats', weight: 1.0}, {name: math, weight: 0.0}]",
                         "train.lr=1e-3")
    assert done.returncode == 0, done.stderr[-3000:]
    assert first_fired(rows, "diversity") is not None, [r.get("hacking/repeated_ngrams") for r in rows]
    assert "of 4-token n-grams are repeats" in done.stderr


@pytest.mark.slow
def test_a_learning_rate_raised_mid_run_trips_the_breakout_alarm(tmp_path):
    # 15 quiet steps with a KL to the reference measured, then the same run resumed at a 100x learning rate: the
    # KL leaves its trend. (The divergence guard is off: it would stop this run for its own reasons.)
    common = ("train.beta=0.04", "guard.divergence_z=0")
    done, _ = planted(tmp_path, "[{name: math, weight: 1.0}]", *common, "train.lr=1e-5", steps=15,
                      checkpoint_every=15)
    assert done.returncode == 0, done.stderr[-3000:]
    done, rows = planted(tmp_path, "[{name: math, weight: 1.0}]", *common, "train.lr=1e-3", steps=30,
                         checkpoint_every=15)
    assert done.returncode == 0, done.stderr[-3000:]
    fired = first_fired(rows, "breakout")
    assert fired is not None and fired > 15 and "KL" in done.stderr, [r["kl"] for r in rows]
