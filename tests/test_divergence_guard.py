"""The divergence guard (guard.divergence_*) on its trend detector (grpo/trend.py): a run whose update size or
entropy leaves its own trend stops with the step and the figure; a healthy, noisy run never does."""

from __future__ import annotations

import random

import pytest

from grpo.config import RecipeConfig
from grpo.errors import UserError
from grpo.parallel import World
from grpo.rules import guard_rules
from grpo.train.health import Health
from grpo.train.update import UpdateStats
from grpo.trend import Trend


def test_the_trend_scores_against_median_and_mad():
    trend = Trend(window=5, warmup=3, floor_abs=0.5)
    assert trend.score(10.0) is None  # not judged before the warm-up
    for v in (1.0, 2.0, 3.0):
        trend.add(v)
    assert trend.score(2.0) == 0.0
    assert trend.score(2.0 + 1.4826 * 1.0 * 4) == pytest.approx(4.0)  # MAD 1 -> sigma 1.4826
    flat = Trend(warmup=3, floor_abs=0.01, floor_rel=0.1)
    for _ in range(3):
        flat.add(2.0)
    assert flat.score(2.2) == pytest.approx(1.0)  # the spread is floored at 10% of the median, not zero


def health(tmp_path, **guard) -> Health:
    cfg = RecipeConfig()
    for key, value in guard.items():
        setattr(cfg.guard, key, value)
    return Health(cfg, [], World.single(), tmp_path)


def healthy(rng: random.Random, step: int) -> UpdateStats:
    # a noisy but sound run: grad norm wandering over a factor of 3, entropy drifting down slowly
    return UpdateStats(loss=rng.gauss(0, 0.05), entropy=2.0 - 0.005 * step + rng.gauss(0, 0.05),
                       grad_norm=0.5 * 3 ** rng.random())


def test_a_healthy_noisy_run_never_stops(tmp_path):
    guard, rng = health(tmp_path), random.Random(0)
    for step in range(1, 301):
        guard.check_update(healthy(rng, step), step)  # raises on a false alarm


def test_an_exploding_update_warns_once_then_stops_with_the_step_and_figure(tmp_path, capsys):
    guard, rng = health(tmp_path), random.Random(1)
    for step in range(1, 11):
        guard.check_update(healthy(rng, step), step)
    guard.check_update(UpdateStats(entropy=1.95, grad_norm=3e4), 11)  # one spike: said, not fatal
    assert "warning: step 11: grad norm 3e+04 is" in capsys.readouterr().err
    guard.check_update(healthy(rng, 12), 12)  # back on trend: the count starts again
    guard.check_update(UpdateStats(entropy=1.9, grad_norm=5e4), 13)
    with pytest.raises(UserError) as info:
        guard.check_update(UpdateStats(entropy=7.6, grad_norm=8e5), 14)  # entropy at uniform: destroyed
    message = str(info.value)
    assert message.startswith("step 14: the run is diverging:") and "2 steps in a row" in message
    assert "lower train.lr" in message and "guard.divergence_z" in message


def test_the_guard_can_be_turned_off(tmp_path):
    guard, rng = health(tmp_path, divergence_z=0.0), random.Random(2)
    for step in range(1, 11):
        guard.check_update(healthy(rng, step), step)
    for step in range(11, 15):
        guard.check_update(UpdateStats(entropy=7.6, grad_norm=1e9), step)


def test_a_learning_rate_that_destroys_the_model_in_one_step_is_refused():
    cfg = RecipeConfig()
    cfg.train.lr = 1e30
    assert any(p.startswith("train.lr: 1e+30 moves every weight") for p in guard_rules(cfg))
    cfg.train.lr = 1e-4
    assert not any(p.startswith("train.lr") for p in guard_rules(cfg))


def test_a_run_that_solved_its_batches_is_not_diverging(tmp_path):
    """Every group right: no advantage, a gradient of ~0 and entropy falling. That is convergence, not the
    destroyed weights the guard is for (it stopped the tool demo at step 61 when it tested both ways)."""
    guard, rng = health(tmp_path), random.Random(3)
    for step in range(1, 41):
        guard.check_update(healthy(rng, step), step)
    for step in range(41, 61):
        guard.check_update(UpdateStats(entropy=0.01, grad_norm=0.0), step)
