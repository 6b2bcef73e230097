"""`grpo rm RECIPE.yaml [key=value ...]`: the command's one entry point, so the CLI needs a few lines only."""

from __future__ import annotations

from pathlib import Path


def run_rm_command(recipe_path: str | Path | None, overrides: list[str] = ()) -> Path:
    """Read and check the recipe (every problem at once, exit 2 through UserError), train, and return the
    directory of the finished reward model."""
    from grpo.rm.config import load_rm_recipe
    from grpo.rm.train import train_reward_model

    cfg = load_rm_recipe(recipe_path, list(overrides))
    return train_reward_model(cfg)
