"""What stops a run that trains on garbage: a reward that keeps failing, and updates whose loss or gradient is
not a finite number. Each check reads figures every rank agrees on (summed over ranks, or already global), so
every rank takes the same decision at the same step."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from grpo.config import RecipeConfig
from grpo.errors import UserError
from grpo.parallel import World
from grpo.rundir import latest_checkpoint
from grpo.trend import Trend
from grpo.train.episodes import Experience, UpdateStats
from rewards.scoring import NamedReward


class Health:
    def __init__(self, cfg: RecipeConfig, rewards: list[NamedReward], world: World, output_dir: Path):
        self.cfg, self.rewards, self.world = cfg, rewards, world
        self.output_dir = output_dir  # its latest checkpoint is looked up only to word an error
        self.failing = [0] * len(rewards)  # steps in a row over the reward's error fraction
        self.nonfinite = 0  # updates in a row with a NaN/inf loss or gradient
        g = cfg.guard
        # The update's size (log grad norm: it spans orders of magnitude) and the policy's entropy against their
        # own trends; both are global figures (summed over ranks), so every rank decides alike.
        self.trends = {"log grad norm": Trend(warmup=g.divergence_warmup, floor_abs=0.1),
                       "entropy": Trend(warmup=g.divergence_warmup, floor_abs=0.01, floor_rel=0.1)} \
            if g.divergence_z else {}
        self.diverging = 0  # steps in a row far from the trend

    def check_rewards(self, exp: Experience, step: int) -> None:
        counts = []
        for r in self.rewards:
            counts += [exp.reward_errors.get(r.name, 0), len(exp.reward_values.get(r.name, []))]
        counts = self.world.sum(counts)  # the global step's figures
        for i, (reward, spec) in enumerate(zip(self.rewards, self.cfg.rewards)):
            errors, n = counts[2 * i], counts[2 * i + 1]
            self.failing[i] = self.failing[i] + 1 if n and errors / n > spec.max_error_fraction else 0
            if self.failing[i] >= spec.max_error_steps:
                checkpoint = latest_checkpoint(self.output_dir)
                where = f"; the same command resumes from {checkpoint}" if checkpoint else ""
                raise UserError(
                    f"reward '{reward.name}' failed on {int(errors)} of {int(n)} completions at step {step}, and on more "
                    f"than rewards[{i}].max_error_fraction = {spec.max_error_fraction:g} of each batch for "
                    f"{self.failing[i]} steps in a row: training on its zeros teaches nothing. Its last error: "
                    f"{reward.failures.last or '(on another rank)'}. Fix the reward{where}; or raise "
                    f"rewards[{i}].max_error_fraction / max_error_steps to go on anyway.")

    def update_metrics(self, update: UpdateStats | None) -> dict[str, float]:
        """A metric only on steps whose update was not finite, so healthy runs log exactly what they did."""
        if update is None or _finite(update):
            return {}
        return {"update/nonfinite": 1.0, "update/skipped": float(bool(getattr(update, "skipped", False)))}

    def check_update(self, update: UpdateStats | None, step: int) -> None:
        if update is None or _finite(update):
            self.nonfinite = 0
            self.check_divergence(update, step)
            return
        self.nonfinite += 1
        limit = self.cfg.guard.max_nonfinite_updates
        what = f"loss = {update.loss}, grad_norm = {update.grad_norm}"
        checkpoint = latest_checkpoint(self.output_dir)
        back = f"resume from {checkpoint} (the same command)" if checkpoint else "start again"
        if not getattr(update, "skipped", False):
            # The optimizer stepped with that gradient: the weights may now hold NaN, and every later step with them.
            raise UserError(f"step {step}: the update was not finite ({what}) and was applied, so the weights can no "
                            f"longer be trusted. Lower train.lr or check the rewards' scale, then {back}.")
        if self.world.is_main:
            print(f"warning: step {step}: {what}: update skipped ({self.nonfinite} in a row; the run stops at "
                  f"guard.max_nonfinite_updates = {limit})", file=sys.stderr, flush=True)
        if self.nonfinite >= limit:
            raise UserError(f"step {step}: {self.nonfinite} updates in a row had a non-finite loss or gradient "
                            f"({what}); each was skipped, and the run stops (guard.max_nonfinite_updates = {limit}). "
                            f"Lower train.lr, check the rewards' scale (rewards[].max_abs), then {back}.")


    def check_divergence(self, update: UpdateStats | None, step: int) -> None:
        """Stop a run whose update size or entropy leaves its own trend upwards for guard.divergence_steps steps in
        a row: a learning rate far too high destroys the weights in a few steps while every number stays finite,
        the updates growing and the policy spreading towards uniform. Falling is not divergence: a run that has
        solved its batches has groups with no signal and a gradient near zero, and a converging policy's entropy
        falls (tools demo: grad norm 1e-30 once every group was right, which a two-sided test stopped)."""
        if update is None or not self.trends:
            return
        g = self.cfg.guard
        values = {"log grad norm": math.log(max(update.grad_norm, 1e-30)), "entropy": update.entropy}
        scores = {name: self.trends[name].score(v) for name, v in values.items()}
        far = {name: z for name, z in scores.items() if z is not None and z > g.divergence_z}
        if not far:
            self.diverging = 0
            for name, v in values.items():  # only healthy steps make the trend
                self.trends[name].add(v)
            return
        self.diverging += 1
        name = max(far, key=lambda n: abs(far[n]))
        shown = f"{math.exp(values[name]):.4g}" if name == "log grad norm" else f"{values[name]:.4g}"
        usual = self.trends[name].median()
        usual = f"{math.exp(usual):.4g}" if name == "log grad norm" else f"{usual:.4g}"
        what = (f"{name.removeprefix('log ')} {shown} is {far[name]:+.1f} deviations from this run's trend (median "
                f"{usual} over the last {len(self.trends[name].values)} healthy steps)")
        if self.diverging < g.divergence_steps:
            if self.world.is_main:
                print(f"warning: step {step}: {what}; the run stops if it stays there (guard.divergence_z = "
                      f"{g.divergence_z:g}, {g.divergence_steps} steps)", file=sys.stderr, flush=True)
            return
        checkpoint = latest_checkpoint(self.output_dir)
        back = f"resume from {checkpoint} (the same command)" if checkpoint else "start again"
        raise UserError(f"step {step}: the run is diverging: {what}, {self.diverging} steps in a row. The weights are "
                        f"being destroyed: lower train.lr (now {self.cfg.train.lr:g}) or train.max_grad_norm, then "
                        f"{back}; or raise guard.divergence_z (0: off) if this change is expected.")


def _finite(update: UpdateStats) -> bool:
    return math.isfinite(update.loss) and math.isfinite(update.grad_norm)
