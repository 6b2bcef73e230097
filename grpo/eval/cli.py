"""`grpo eval`: the command-line face of grpo.eval.run. Registered by grpo.cli as `app.command("eval")`.

Every option sets the EvalConfig field of the same name (the table in `_run` is the whole mapping), so the CLI,
a recipe's `eval:` section and periodic eval in training read one dataclass. Settings come from, lowest to
highest: EvalConfig defaults, the `eval:` section of --recipe, command-line options.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from grpo.config import EvalConfig, VllmConfig
from grpo.dtypes import DTYPES
from grpo.errors import UserError
from grpo.rundir import latest_checkpoint

# Without a recipe the engine has the GPU to itself (no trainer beside it), so it may take most of it.
STANDALONE_ENGINE = VllmConfig(gpu_memory_utilization=0.85)


def resolve_eval_model(path: str) -> str:
    """A model directory, a checkpoint, or a training run directory (its latest checkpoint)."""
    local = Path(path).expanduser()
    if local.is_dir() and not (local / "config.json").is_file():
        latest = latest_checkpoint(local) if (local / "checkpoints").is_dir() else None
        if latest is not None:
            return str(latest)
    return path


def default_output_dir(model: str, cfg: EvalConfig) -> Path:
    """eval_results/<model>__<data>__k<k>_t<T>_seed<S>[_limit<N>]: distinct protocols never overwrite each other."""
    model_name = Path(model.rstrip("/")).name.replace(":", "-") or "model"
    data_name = "+".join(Path(s).stem or s.replace("/", "-") for s in cfg.data.split(",") if s.strip()) or "data"
    limit = f"_limit{cfg.limit}" if cfg.limit is not None else ""
    return Path("eval_results") / f"{model_name}__{data_name}__k{cfg.k}_t{cfg.temperature:g}_seed{cfg.seed}{limit}"


def eval_command(
    model: str = typer.Option(..., "--model", help="model directory, checkpoint, training run directory (its latest "
                                                   "checkpoint), hub id, or demo:tiny-arith"),
    data: Optional[List[str]] = typer.Option(None, "--data", help="jsonl/json/parquet/csv file or datasets name; "
                                                                  "repeat for several (each reported separately)"),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="YAML recipe whose eval: section (and sampler.vllm) "
                                                                "give defaults"),
    k: Optional[int] = typer.Option(None, "--k", help="samples per problem (avg@k, pass@1..k, maj@k)"),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="0 is greedy"),
    top_p: Optional[float] = typer.Option(None, "--top-p"),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-tokens", "--max-new-tokens",
                                                 help="max new tokens per completion"),
    stop: Optional[List[str]] = typer.Option(None, "--stop", help="stop string (repeat for several)"),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="hf or vllm"),
    prompt_template: Optional[str] = typer.Option(None, "--prompt-template",
                                                  help="format string over the data's columns, e.g. '{problem}'"),
    use_chat_template: Optional[bool] = typer.Option(None, "--use-chat-template/--no-chat-template",
                                                     help="wrap the prompt in the tokenizer's chat template"),
    system_prompt: Optional[str] = typer.Option(None, "--system-prompt", help="with --use-chat-template"),
    answer_column: Optional[str] = typer.Option(None, "--answer-column", help="column passed to the grader as answer="),
    answer_pattern: Optional[str] = typer.Option(None, "--answer-pattern",
                                                 help="regex whose group 1 is the gold answer (GSM8K: '####\\s*(.+)')"),
    grader: Optional[str] = typer.Option(None, "--grader", help="a reward name (math) or module:function; "
                                                                "correct when it scores >= 1.0"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    limit: Optional[int] = typer.Option(None, "--limit", help="first N problems of each dataset"),
    split: Optional[str] = typer.Option(None, "--split", help="hub split (ignored for local files)"),
    subset: Optional[str] = typer.Option(None, "--subset", help="hub configuration name"),
    bootstrap: Optional[int] = typer.Option(None, "--bootstrap", help="resamples for the 95% intervals (0: off)"),
    generation_batch_size: Optional[int] = typer.Option(None, "--batch-size", "--generation-batch-size",
                                                        help="hf sampler: rows generated at once"),
    group_by: Optional[str] = typer.Option(None, "--group-by", help="also report per value of this column"),
    environment: Optional[str] = typer.Option(None, "--environment", help="a tool the model may call mid-reasoning "
                                                                          "(calculator, python, module:function); "
                                                                          "default: --recipe's environment.name"),
    engine: Optional[List[str]] = typer.Option(None, "--vllm", help="a vLLM engine option as KEY=VALUE (a "
                                                                    "sampler.vllm key, e.g. gpu_memory_utilization=0.9)"),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", help="default: eval_results/<model>__<data>__..."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, "
                                                      "float16"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
):
    """Evaluate a model: avg@k, unbiased pass@k, maj@k, lengths and truncation, with 95% bootstrap intervals."""
    options = dict(locals())  # first: every parameter, nothing else
    from grpo.parallel import launched_world

    world = launched_world()  # `torchrun -m grpo eval ...`: each rank evaluates a share, rank 0 writes
    try:
        _run(world, **options)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2)
    except KeyboardInterrupt:  # what was graded is in samples.partial.jsonl (its line above says so)
        typer.echo("interrupted", err=True)
        raise typer.Exit(code=130)
    if world.distributed:  # under torchrun: leave before teardown (see grpo.cli train)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


# The options that are not EvalConfig fields; every other parameter of eval_command is one, by the same name.
NOT_FIELDS = ("model", "recipe", "engine", "output_dir", "dtype", "device", "environment")


def _run(world, model: str, recipe: str | None, engine: list[str] | None, output_dir: str | None, dtype: str,
         device: str, environment: str | None = None, **fields) -> dict:
    from grpo.eval.run import run_eval
    from grpo.modeling import resolve_device
    from grpo.parallel import close_world, init_world, rank_device
    from grpo.recipe import load_eval_section

    if fields.get("data"):
        fields["data"] = ",".join(fields["data"])
    if fields.get("stop") == []:
        fields["stop"] = None  # typer gives [] for an option not given; the recipe's value stays
    if dtype != "auto" and dtype not in DTYPES:
        raise UserError(f"--dtype: {dtype!r} is not one of auto, {', '.join(DTYPES)}")
    cfg, full = load_eval_section(recipe, values={f"eval.{name}": value for name, value in fields.items()},
                                  overrides=[f"sampler.vllm.{item}" for item in engine or []]
                                  + ([f"environment.name={environment}"] if environment else []))
    if not cfg.data:
        raise UserError("--data: required (a local .jsonl/.json/.parquet/.csv file or a datasets hub name), "
                        "unless --recipe has eval.data")
    out = Path(output_dir) if output_dir else default_output_dir(model, cfg)
    if world.distributed:
        rank_dev = rank_device(resolve_device(device), world)
        init_world(world, rank_dev, timeout_s=full.distributed.timeout_s)
        device = str(rank_dev)
    try:
        return run_eval(cfg, model_path=resolve_eval_model(model), output_dir=out, dtype=dtype, device=device,
                        engine=full.sampler.vllm if recipe or engine else STANDALONE_ENGINE, world=world,
                        console=world.is_main, environment=full.environment)
    finally:
        close_world(world)
