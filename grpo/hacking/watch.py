"""The trainer's side of the alarms: each step, the signals of the step's episodes and the rules over the run's
figures so far; an alarm that starts firing is printed (what was seen, since which step, what to look at) and, with
guard.on_hacking = stop, ends the run with that message.

Rank 0 reads (it holds the global step's episodes and metrics); every rank takes the stop decision together. On
resume the rules replay the run's metrics.jsonl, so the alarms stand where an unbroken run's would."""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from grpo.config import RecipeConfig
from grpo.errors import UserError
from grpo.hacking.rules import ALARMS, EVAL_ACCURACY, Alarm, Context, Row
from grpo.hacking.signals import Roles, Sample, step_signals
from grpo.parallel import World
from grpo.rundir import latest_checkpoint

KEPT = ("reward/mean", "reward/std", "accuracy", "completion/length_mean", "entropy", "kl")


@dataclass
class Firing:
    alarm: Alarm
    since: int  # the first step of the streak over which its rule held
    seen: str


def roles_of(rewards: list[Any]) -> Roles:
    """What each reward declares itself to be (rewards/__init__.py: fn.shaping, fn.learned, measures_correctness)."""
    correctness = next((r.name for r in rewards if r.measures_correctness), None)
    return Roles(weights={r.name: r.weight for r in rewards},
                 shaping=tuple(r.name for r in rewards if r.shaping),
                 learned=tuple(r.name for r in rewards if r.learned),
                 correctness=correctness)


def answer_reader(rewards: list[Any]) -> Callable[[str], str | None]:
    """The correctness reward's own answer extractor where it runs in this process (grpo's math), else the math
    checker's (bounded-cost, pure Python: never a plugin's worker round trip per completion)."""
    from rewards.mathcheck.extract import extract_answer

    for r in rewards:
        own = inspect.isfunction(r.extract_answer) and r.extract_answer.__module__.startswith("rewards.")
        if r.measures_correctness and own:  # a plugin's extractor is a handle on its worker: not per completion
            return r.extract_answer
    return extract_answer


class HackingWatch:
    def __init__(self, cfg: RecipeConfig, rewards: list[Any], world: World, output_dir: Path,
                 history: list[dict] | None = None):
        self.cfg, self.world, self.output_dir = cfg, world, output_dir
        self.thresholds = cfg.guard.alarms
        self.enabled = cfg.guard.on_hacking != "off"
        self.stops = cfg.guard.on_hacking == "stop"
        self.roles = roles_of(rewards)
        self.context = Context(learned=self.roles.learned, kl_measured=cfg.train.beta > 0)
        self.answer_of = answer_reader(rewards)
        self.rows: list[Row] = []
        self.streaks: dict[str, int] = {a.name: 0 for a in ALARMS}
        self.firing: dict[str, Firing] = {}
        self.new: list[Firing] = []  # alarms that started firing at the latest step: printed by act()
        for record in history or []:  # a resumed run: replay its figures, quietly
            self._judge(self._row(record))
        self.new = []

    def observe(self, step: int, episodes: list[Any], metrics: dict[str, float]) -> dict[str, float]:
        """This step's hacking/* signals and alarms/* flags (rank 0; {} elsewhere or when off)."""
        self.new = []
        if not self.enabled or not self.world.is_main:
            return {}
        samples = [Sample(e.group_id, e.reward, e.per_reward,
                          [t for s in e.segments if s.trained for t in s.token_ids],
                          e.tools.final_text if e.tools is not None else e.text) for e in episodes]
        out = step_signals(samples, self.roles, self.answer_of)
        self._judge(self._row({"step": step, **metrics, **out}))
        out.update({f"alarms/{name}": 1.0 for name in self.firing})
        return out

    def act(self, step: int) -> None:
        """Print the alarms that started firing at this step; with guard.on_hacking = stop, end the run (every rank,
        at the same step)."""
        new, self.new = self.new, []
        for firing in new:
            print(f"warning: {describe(firing, step)}", file=sys.stderr, flush=True)
        if not self.stops:
            return
        if self.world.max(float(bool(new))):
            checkpoint = latest_checkpoint(self.output_dir)
            where = f" The latest checkpoint: {checkpoint}." if checkpoint else ""
            told = "; ".join(describe(f, step) for f in new) or "a reward-hacking alarm fired on rank 0"
            keys = ", ".join(f"guard.alarms.{k}" for f in new for k in f.alarm.settings) or "guard.alarms.*"
            raise UserError(f"{told}. guard.on_hacking = stop ended the run.{where} Fix the cause, or set "
                            f"guard.on_hacking=warn to train on, or change the alarm's thresholds ({keys}).")

    def _row(self, record: dict) -> Row:
        learned = tuple(f"reward/{n}/" for n in self.roles.learned)
        return {k: v for k, v in record.items()
                if k == "step" or k in KEPT or k.startswith("hacking/") or EVAL_ACCURACY.fullmatch(k)
                or k.startswith(learned)}

    def _judge(self, row: Row) -> None:
        self.rows.append(row)
        for alarm in ALARMS:
            seen = alarm.rule(self.rows, self.thresholds, self.context)
            self.streaks[alarm.name] = self.streaks[alarm.name] + 1 if seen else 0
            if not seen:
                self.firing.pop(alarm.name, None)
            elif alarm.name in self.firing:
                self.firing[alarm.name].seen = seen
            elif self.streaks[alarm.name] >= self.thresholds.steps:
                since = self.rows[-self.streaks[alarm.name]]["step"]
                self.firing[alarm.name] = firing = Firing(alarm, int(since), seen)
                self.new.append(firing)


def describe(firing: Firing, step: int) -> str:
    return (f"reward-hacking alarm '{firing.alarm.name}' ({firing.alarm.title}) at step {step}, holding since step "
            f"{firing.since}: {firing.seen}. Look at {firing.alarm.look_at}")
