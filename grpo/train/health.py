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
from grpo.train.rollouts import Experience
from grpo.train.update import UpdateStats
from rewards.scoring import NamedReward


class Health:
    def __init__(self, cfg: RecipeConfig, rewards: list[NamedReward], world: World, output_dir: Path):
        self.cfg, self.rewards, self.world = cfg, rewards, world
        self.output_dir = output_dir  # its latest checkpoint is looked up only to word an error
        self.failing = [0] * len(rewards)  # steps in a row over the reward's error fraction
        self.nonfinite = 0  # updates in a row with a NaN/inf loss or gradient

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


def _finite(update: UpdateStats) -> bool:
    return math.isfinite(update.loss) and math.isfinite(update.grad_norm)
