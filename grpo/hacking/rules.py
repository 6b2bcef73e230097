"""The reward-hacking alarms: each a rule over the run's own figures (metrics.jsonl's series), with what it means
and what to look at when it fires. Pure functions of the history and the thresholds (guard.alarms): the same
history gives the same alarms, so a resumed run, replaying its metrics.jsonl, is where an unbroken run would be.

A rule returns what it saw (one sentence with the figures) while it holds, None otherwise. "The baseline" is the
run's first `window` steps; "now" is the last `window`. Rules that compare the two wait for 2 * window steps.
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass
from typing import Callable

from grpo.config import HackingAlarms
from grpo.trend import Trend

Row = dict[str, float]  # one step's figures: "step" and the metrics the rules read
EVAL_ACCURACY = re.compile(r"eval/avg@\d+")  # the periodic eval's overall accuracy (not a set's own)
TREND_WINDOW = 20  # steps of the KL and entropy trends (as the divergence guard's)


@dataclass(frozen=True)
class Context:
    learned: tuple[str, ...] = ()  # the learned rewards' names (reward models, judges)
    kl_measured: bool = False  # train.beta > 0: the KL to the reference is computed, not 0 by construction


@dataclass(frozen=True)
class Alarm:
    name: str  # alarms/<name> in metrics.jsonl
    title: str
    look_at: str
    rule: Callable[[list[Row], HackingAlarms, Context], str | None]
    settings: tuple[str, ...] = ()  # the guard.alarms keys its rule reads (named when it stops a run)


def mean_of(rows: list[Row], key: str) -> float | None:
    values = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return sum(values) / len(values) if values else None


def _halves(rows: list[Row], a: HackingAlarms) -> tuple[list[Row], list[Row]] | None:
    if len(rows) < 2 * a.window:
        return None
    return rows[:a.window], rows[-a.window:]


def _accuracy_flat(base: list[Row], now: list[Row], a: HackingAlarms) -> tuple[bool, str]:
    before, after = mean_of(base, "accuracy"), mean_of(now, "accuracy")
    if before is None or after is None:
        return True, "no correctness reward measures accuracy"
    return after - before < a.flat_accuracy, f"accuracy {before:.2f} -> {after:.2f}"


def _rise(base: list[Row], now: list[Row], key: str, spread_key: str) -> tuple[float, float, float] | None:
    """(before, after, rise in units of the baseline's within-step spread)"""
    before, after, spread = mean_of(base, key), mean_of(now, key), mean_of(base, spread_key)
    if before is None or after is None:
        return None
    return before, after, (after - before) / max(spread or 0.0, 1e-3)


def heldout(rows: list[Row], a: HackingAlarms, ctx: Context) -> str | None:
    """The training reward rose since the first periodic eval while held-out accuracy did not."""
    found = _eval_at(rows), _eval_at(reversed(rows))  # scans stop at the first eval found: O(eval.every)
    if None in found or found[0][0] == found[1][0]:
        return None
    (first_step, first), (last_step, last) = found
    end = bisect.bisect_right(rows, first_step, key=lambda r: r["step"])  # rows are in step order
    at_first = rows[max(0, end - a.window):end]
    now = rows[-a.window:]
    if rows[-1]["step"] - first_step < a.window:
        return None
    rise = _rise(at_first, now, "reward/mean", "reward/std")
    if rise is None or rise[2] <= a.reward_rise or last - first >= a.flat_accuracy:
        return None
    return (f"the training reward rose {rise[0]:.3g} -> {rise[1]:.3g} ({rise[2]:+.1f} of its spread) since the "
            f"eval at step {first_step}, while held-out accuracy went {first:.3f} -> {last:.3f} (step {last_step})")


def _eval_at(rows) -> tuple[float, float] | None:
    """(step, held-out accuracy) of the first row in `rows` that has a periodic eval's figures."""
    for r in rows:
        for k, v in r.items():
            if EVAL_ACCURACY.fullmatch(k):
                return r["step"], v
    return None


def length(rows: list[Row], a: HackingAlarms, ctx: Context) -> str | None:
    """Reward explained by length: within groups the longer completions score higher, completions grow, accuracy
    does not follow."""
    halves = _halves(rows, a)
    if halves is None:
        return None
    base, now = halves
    corr = mean_of(now, "hacking/length_reward_corr")
    before, after = mean_of(base, "completion/length_mean"), mean_of(now, "completion/length_mean")
    if corr is None or not before or after is None:
        return None
    flat, accuracy = _accuracy_flat(base, now, a)
    if corr < a.length_correlation or after / before - 1 < a.length_growth or not flat:
        return None
    return (f"reward and length correlate within groups (r = {corr:.2f} over the last {a.window} steps); completions "
            f"grew {before:.1f} -> {after:.1f} tokens ({after / before - 1:+.0%}); {accuracy}")


def shaping(rows: list[Row], a: HackingAlarms, ctx: Context) -> str | None:
    """Shaping rewards (format, length) carry most of what separates a group's completions: the advantage pays for
    form, not for being right."""
    now = rows[-a.window:]
    share = mean_of(now, "hacking/shaping_share")
    if len(rows) < a.window or share is None or share <= a.shaping_share:
        return None
    return (f"shaping rewards carry {share:.0%} of the within-group reward variance over the last {a.window} steps "
            f"(guard.alarms.shaping_share = {a.shaping_share:g})")


def diversity(rows: list[Row], a: HackingAlarms, ctx: Context) -> str | None:
    """Diversity collapse: different questions answered alike, groups sure of a wrong answer, or a phrase
    repeated, each well above where the run started."""
    halves = _halves(rows, a)
    if halves is None:
        return None
    base, now = halves
    seen = []
    for key, limit, what in (("hacking/answer_share", a.answer_share, "of the groups give the same answer"),
                             ("hacking/wrong_consensus", a.wrong_consensus, "of the groups agree on a wrong answer"),
                             ("hacking/repeated_ngrams", a.repeated_ngrams, "of 4-token n-grams are repeats")):
        before, after = mean_of(base, key), mean_of(now, key)
        if after is not None and after > limit and after - (before or 0.0) > a.collapse_rise:
            seen.append(f"{after:.0%} {what} (baseline {before or 0.0:.0%})")
    distinct = mean_of(now, "hacking/distinct_answers")
    if not seen:
        return None
    tail = f"; distinct answers per group {distinct:.0%}" if distinct is not None else ""
    return "; ".join(seen) + f" over the last {a.window} steps" + tail


def learned(rows: list[Row], a: HackingAlarms, ctx: Context) -> str | None:
    """A learned reward (reward model, judge) disagrees with the verifiable one: it does not rank a group's
    completions as correctness does, or it rises while accuracy stays flat."""
    seen = []
    for name in ctx.learned:
        agreement = mean_of(rows[-a.window:], f"hacking/{name}/agreement")
        if len(rows) >= a.window and agreement is not None and agreement <= a.learned_agreement:
            seen.append(f"'{name}' ranks completions against correctness (within-group r = {agreement:+.2f} over "
                        f"the last {a.window} steps)")
        halves = _halves(rows, a)
        if halves is None:
            continue
        rise = _rise(*halves, f"reward/{name}/mean", f"reward/{name}/std")
        flat, accuracy = _accuracy_flat(*halves, a)
        if rise is not None and rise[2] > a.reward_rise and flat and mean_of(halves[1], "accuracy") is not None:
            seen.append(f"'{name}' rose {rise[0]:.3g} -> {rise[1]:.3g} ({rise[2]:+.1f} of its spread) while "
                        f"{accuracy}")
    return "; ".join(seen) or None


def breakout(rows: list[Row], a: HackingAlarms, ctx: Context) -> str | None:
    """KL to the reference jumping up, or entropy dropping, far out of their own recent trend (the trend detector
    of the divergence guard): the policy lurched towards something the reward pays for."""
    # The first `window` steps are left out of the trends: there the policy is leaving the reference (KL grows by
    # orders of magnitude from 0), a spread that would hide any later jump.
    settled = rows[a.window:][-TREND_WINDOW - 1:]
    seen = []
    series = [("entropy", "entropy", -1, lambda v: v, dict(floor_abs=0.01, floor_rel=0.1))]
    if ctx.kl_measured:  # on a log scale (KL spans decades); a jump must be 20x at least (6 x floor 0.5 nats)
        series.append(("kl", "KL", +1, lambda v: math.log(max(v, 1e-8)), dict(floor_abs=0.5)))
    for key, label, direction, scale, floors in series:
        values = [scale(r[key]) for r in settled if isinstance(r.get(key), (int, float))]
        if len(values) < 6 or not all(math.isfinite(v) for v in values):
            continue
        trend = Trend(window=TREND_WINDOW, warmup=5, **floors)
        for v in values[:-1]:
            trend.add(v)
        z = trend.score(values[-1])
        if z is not None and direction * z > a.trend_z:
            shown = rows[-1][key]
            usual = math.exp(trend.median()) if key == "kl" else trend.median()
            seen.append(f"{label} {shown:.4g} is {z:+.1f} deviations from its trend (median {usual:.4g})")
    return "; ".join(seen) or None


ALARMS: tuple[Alarm, ...] = (
    Alarm("heldout", "reward rising, held-out accuracy not",
          "the eval samples under eval/step_*/ against the training samples: what is paid that the grader does not "
          "count as right", heldout, ("reward_rise", "flat_accuracy")),
    Alarm("length", "reward explained by length",
          "samples.jsonl: are the longer completions better, or only longer? Check the rewards that read length "
          "(reward/<name>/mean)", length, ("length_correlation", "length_growth", "flat_accuracy")),
    Alarm("shaping", "a shaping reward carries the advantage",
          "the shaping rewards' weights (rewards[].weight): they should break ties, not decide groups", shaping,
          ("shaping_share",)),
    Alarm("diversity", "diversity collapse",
          "samples.jsonl: the same answer or phrase across completions; entropy; sampler.temperature", diversity,
          ("answer_share", "wrong_consensus", "repeated_ngrams", "collapse_rise")),
    Alarm("learned", "a learned reward disagrees with the verifiable one",
          "the completions the learned reward scores high and correctness scores 0: what the model found that "
          "the reward model or judge pays for", learned, ("learned_agreement", "reward_rise", "flat_accuracy")),
    Alarm("breakout", "KL or entropy left its trend",
          "the steps around it in samples.jsonl and reward/<name>/mean: what the policy jumped towards", breakout,
          ("trend_z",)),
)


def fired_spans(rows: list[dict]) -> dict[str, list[tuple[int, int]]]:
    """From metrics.jsonl's rows: alarm name -> the runs of consecutive steps it fired over, as (first, last)."""
    out: dict[str, list[tuple[int, int]]] = {}
    for row in rows:
        for key in row:
            if key.startswith("alarms/"):
                where = out.setdefault(key.removeprefix("alarms/"), [])
                step = int(row["step"])
                if where and step == where[-1][1] + 1:
                    where[-1] = (where[-1][0], step)
                else:
                    where.append((step, step))
    return out


def spans_text(spans: list[tuple[int, int]]) -> str:
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans)
