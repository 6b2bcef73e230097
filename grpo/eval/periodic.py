"""Evaluation during training (`eval.every`): built once at setup, by the command that starts training, and handed
to the loop, so the trainer never imports eval and the sets are read, checked and rendered, and the grader built,
once per run rather than at every evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from grpo.config import EnvironmentConfig, EvalConfig
from grpo.data import PromptRenderer
from grpo.errors import ConfigError
from grpo.eval.run import Item, close_grader, load_grader, load_model, render_items, sample_grade_report
from grpo.eval.sets import load_eval_sets
from grpo.eval.summary import flat_metrics
from grpo.parallel import World
from grpo.resolve import eval_sampler
from grpo.rules import eval_rules


class PeriodicEval:
    """Call it with the live policy every step; it evaluates on the steps `eval.every` names and returns flat
    metrics for the training log (eval/avg@k, eval/pass@j, eval/maj@k, eval/length_mean, eval/truncation_rate, and
    the same under eval/<dataset>/ when several sets are evaluated); files go to OUTPUT_DIR/eval/step_NNNNNN/."""

    def __init__(self, cfg: EvalConfig, training_backend: str, environment: EnvironmentConfig | None = None):
        problems = eval_rules(cfg)
        if problems:
            raise ConfigError(problems, "eval config")
        self.cfg = cfg
        self.environment = environment  # for a sampler of its own; the training sampler already runs episodes
        # Reuse the training sampler (its weights are synced each step) unless eval asks for another backend;
        # a second vLLM engine would not fit beside training's, so the policy then generates through transformers.
        self.reuse_training_sampler = eval_sampler(cfg.sampler, training_backend) == "training"
        self.sets = load_eval_sets(cfg)  # a bad path or column fails at setup, before any model loads
        self.grader = load_grader(cfg.grader)
        self._items: list[Item] | None = None  # rendered with the policy's tokenizer at the first evaluation

    def close(self) -> None:
        """End the grader's worker (a user's grader; nothing for grpo's own). atexit does it too, and the worker
        dies with the trainer."""
        close_grader(self.grader)

    def due(self, step: int) -> bool:
        return bool(self.cfg.every) and step % self.cfg.every == 0

    def __call__(self, policy: Any, tokenizer: Any, sampler: Any, output_dir: Path, step: int,
                 world: World = World.single()) -> dict[str, float]:
        if not self.due(step):
            return {}
        import torch

        if self._items is None:
            self._items = render_items(self.sets, PromptRenderer(tokenizer, self.cfg), self.cfg)
        own = None if self.reuse_training_sampler else "hf"
        loaded = load_model(self.cfg, policy, tokenizer, None, sampler if own is None else None, "auto",
                            next(policy.parameters()).device.type, None, world, backend=own,
                            environment=self.environment)
        cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        try:
            summary = sample_grade_report(self.cfg, self.sets, self._items, self.grader, loaded,
                                          Path(output_dir) / "eval" / f"step_{step:06d}", step, progress=False,
                                          console=False, world=world)
        finally:
            if cuda_states is not None:  # the sampler reseeds every device; training's own draws must not move
                torch.cuda.set_rng_state_all(cuda_states)
        return flat_metrics(summary)
