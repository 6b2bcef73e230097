"""The panels of a report, declared as data: which logged metric keys each one shows.

Keys are matched with shell-style patterns (fnmatch); a key goes to the first panel that claims it, and every key
no panel claims lands in "Other metrics", so a metric added to the trainer later is shown without a change here.
Within a panel each metric gets its own small axes (rewards are ~1, KL ~1e-3, lengths ~100: one shared y-axis
would flatten all but one), and every run is drawn on each of them, so runs compare at a glance.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass


@dataclass(frozen=True)
class Panel:
    id: str  # anchor in the page and the PNG file name
    title: str
    patterns: tuple[str, ...]
    kind: str = "metrics"  # metrics: small multiples over steps; time: the stacked time budget; eval: eval curves
    log_scale: tuple[str, ...] = ()  # patterns of keys drawn on a log y-axis (they span decades)
    why: str = ""  # one line under the title: what to look for


PANELS: tuple[Panel, ...] = (
    Panel("parts", "Reward sub-scores and calls",
          ("reward/*/*/mean", "reward/*/*/failures", "reward/*/calls", "reward/*/cached", "reward/*/retries",
           "reward/*/failed_judgements", "reward/*/seconds"),
          why="What a reward reports beside its value: a judge's score per principle (0 to 1; a failed judgement "
              "counts 0), its calls, cached and failed judgements, and its seconds a step (within time/score_s)."),
    Panel("reward", "Reward and accuracy", ("reward/mean", "reward/*/mean", "accuracy", "reward/std"),
          why="Should rise. reward/<name>/mean is each reward function alone; accuracy counts correctness "
              "rewards of 1.0."),
    Panel("length", "Completion length and truncation",
          ("completion/length_mean", "completion/length_max", "completion/truncated_fraction"),
          why="A truncated fraction that climbs means completions outgrow sampler.max_new_tokens."),
    Panel("policy", "Entropy, KL, clip fraction, ratio", ("entropy", "kl", "clip_fraction", "ratio_mean", "loss"),
          why="Entropy collapsing to 0 ends exploration; a growing clip fraction or ratio far from 1 means the "
              "policy moves too far per step."),
    Panel("optim", "Grad norm and learning rate", ("grad_norm", "lr"), log_scale=("grad_norm",),
          why="Spikes in grad norm precede instabilities; lr shows warmup and the schedule."),
    Panel("sampler", "Sampler / trainer gap", ("sampler/*",), log_scale=("sampler/logprob_gap",),
          why="Mean |sampler - trainer| token log-prob: near 0 means the sampler runs the weights being trained."),
    Panel("tools", "Tool use", ("tools/calls_mean", "tools/error_fraction", "tools/turns_mean", "tools/*"),
          why="With an environment: tool calls and model turns per episode, failed calls, observation tokens, tool "
              "time (tools/wall_s: within time/generate_s) and the episodes each limit ended."),
    Panel("hacking", "Reward-hacking signals", ("alarms/*", "hacking/*"),
          why="The figures the alarms read (grpo/hacking/): reward-length correlation within groups, the shaping "
              "rewards' share of the advantage, answers shared across questions, repeated n-grams, a learned "
              "reward's agreement with correctness; alarms/<name> is 1 on the steps an alarm fired."),
    Panel("groups", "Groups with no signal",
          ("groups/zero_variance_fraction", "groups/*", "prompts/*", "advantage/*"),
          why="A group whose completions all score the same has zero advantage and teaches nothing."),
    Panel("throughput", "Throughput", ("throughput/*", "time/step_s", "batch/padded_fraction"),
          why="Generated tokens per second of generation, and per second of the whole step; the share of the "
              "training pass spent on padding."),
    Panel("async", "Generation ahead of training", ("async/*", "time/wait_*", "sync/*"),
          why="With train.max_staleness: how many versions old the episodes were (never above the limit), stale "
              "replies dropped, the trainer waiting for generation and the sampler waiting for the trainer, and "
              "the bytes of each weight push."),
    Panel("time", "Time budget per step", ("time/*",), kind="time",
          why="Where a step's seconds go; other = step - (generate + score + train + sync). With train.max_staleness, "
              "generate is the step's wait for its episodes, generated and scored (the rest overlapped training), and "
              "score only the scoring done on the step itself (a stale reply's resend)."),
    Panel("eval", "Eval during training", ("eval/*",), kind="eval",
          why="From eval.every (and any eval summary in the run directory); bars are 95% bootstrap intervals."),
    Panel("other", "Other metrics", ("*",),
          why="Every logged metric no panel above claims, so nothing in metrics.jsonl goes unseen."),
)

# The stacked time budget: logged parts, then "other" for what the parts do not cover.
TIME_PARTS = ("time/generate_s", "time/score_s", "time/train_s", "time/sync_s")
TIME_TOTAL = "time/step_s"
# A part that can overlap the step, and the metric of what the step waited for it (grpo/train/inflight.py)
ON_THE_STEP = {"time/generate_s": "time/wait_generate_s", "time/score_s": "time/wait_score_s"}


def assign(keys: list[str]) -> dict[str, list[str]]:
    """Panel id -> its keys, ordered by the panel's patterns (so reward/mean comes before reward/math/mean)."""
    out: dict[str, list[str]] = {p.id: [] for p in PANELS}
    taken: set[str] = set()
    for panel in PANELS:
        for pattern in panel.patterns:
            for key in sorted(k for k in keys if k not in taken and fnmatch.fnmatchcase(k, pattern)):
                out[panel.id].append(key)
                taken.add(key)
    # time/step_s is shown as throughput's companion and is also the total of the time stack.
    if TIME_TOTAL in keys and TIME_TOTAL not in out["time"]:
        out["time"].append(TIME_TOTAL)
    return out


def is_log(panel: Panel, key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in panel.log_scale)
