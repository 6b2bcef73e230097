"""`grpo eval`: the command-line face of grpo.evaluate. Registered by grpo.cli as `app.command("eval")`.

Settings come from, lowest to highest: EvalConfig defaults, the `eval:` section of --recipe, command-line options.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from grpo.config import EvalConfig, RecipeConfig, parse_recipe
from grpo.errors import ConfigError, UserError


def load_eval_section(recipe: str | Path) -> tuple[EvalConfig, RecipeConfig]:
    """The eval section of a recipe. A recipe may hold only an `eval:` section: the training-only
    requirements (data.path, rewards) that every default-built recipe lacks are not problems here; anything
    else (unknown keys, wrong types, bad values) still is."""
    cfg, problems = parse_recipe(recipe)
    _, baseline = parse_recipe(None)
    problems = [p for p in problems if p not in baseline]
    if problems:
        raise ConfigError(problems, str(recipe))
    return cfg.eval, cfg


def resolve_eval_model(path: str) -> str:
    """A model directory, a checkpoint, or a training run directory (its latest checkpoint)."""
    local = Path(path).expanduser()
    if local.is_dir() and not (local / "config.json").is_file():
        from grpo.checkpoint import latest_checkpoint

        latest = latest_checkpoint(local) if (local / "checkpoints").is_dir() else None
        if latest is not None:
            return str(latest)
    return path


def default_output_dir(model: str, cfg: EvalConfig) -> Path:
    """eval_results/<model>__<data>__k<k>_t<T>: distinct protocols never overwrite each other."""
    model_name = Path(model.rstrip("/")).name.replace(":", "-") or "model"
    data_name = "+".join(Path(s).stem or s.replace("/", "-") for s in cfg.data.split(",") if s.strip()) or "data"
    return Path("eval_results") / f"{model_name}__{data_name}__k{cfg.k}_t{cfg.temperature:g}_seed{cfg.seed}"


def eval_command(
    model: str = typer.Option(..., "--model", help="model directory, checkpoint, training run directory (its latest "
                                                   "checkpoint), hub id, or demo:tiny-arith"),
    data: Optional[List[str]] = typer.Option(None, "--data", help="jsonl/json/parquet/csv file or datasets name; "
                                                                  "repeat for several (each reported separately)"),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="YAML recipe whose eval: section gives defaults"),
    k: Optional[int] = typer.Option(None, "--k", help="samples per problem (avg@k, pass@1..k, maj@k)"),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="0 is greedy"),
    top_p: Optional[float] = typer.Option(None, "--top-p"),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="max new tokens per completion"),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="hf or vllm"),
    prompt_template: Optional[str] = typer.Option(None, "--prompt-template",
                                                  help="format string over the data's columns, e.g. '{problem}'"),
    use_chat_template: Optional[bool] = typer.Option(None, "--use-chat-template/--no-chat-template",
                                                     help="wrap the prompt in the tokenizer's chat template"),
    system_prompt: Optional[str] = typer.Option(None, "--system-prompt", help="with --use-chat-template"),
    answer_column: Optional[str] = typer.Option(None, "--answer-column", help="column passed to the grader as answer="),
    grader: Optional[str] = typer.Option(None, "--grader", help="a reward name (math) or module:function; "
                                                                "correct when it scores >= 1.0"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    limit: Optional[int] = typer.Option(None, "--limit", help="first N problems of each dataset"),
    split: Optional[str] = typer.Option(None, "--split", help="hub split (ignored for local files)"),
    bootstrap: Optional[int] = typer.Option(None, "--bootstrap", help="resamples for the 95% intervals (0: off)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="hf sampler: rows generated at once"),
    group_by: Optional[str] = typer.Option(None, "--group-by", help="also report per value of this column"),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", help="default: eval_results/<model>__<data>__..."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, "
                                                      "float16"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
):
    """Evaluate a model: avg@k, unbiased pass@k, maj@k, lengths and truncation, with 95% bootstrap intervals."""
    try:
        _run(**locals())
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2)


def _run(model: str, data, recipe, k, temperature, top_p, max_tokens, sampler, prompt_template, use_chat_template,
         system_prompt, answer_column, grader, seed, limit, split, bootstrap, batch_size, group_by, output_dir,
         dtype, device) -> dict:
    from grpo.evaluate import run_eval

    cfg = EvalConfig()
    vllm_options: dict = {}
    if recipe:
        cfg, full = load_eval_section(recipe)
        vllm_options = {"enable_prefix_caching": full.sampler.vllm.enable_prefix_caching,
                        "enforce_eager": full.sampler.vllm.enforce_eager}
        if full.sampler.vllm.kv_cache_memory_bytes is not None:
            vllm_options["kv_cache_memory_bytes"] = full.sampler.vllm.kv_cache_memory_bytes
    given = {"data": ",".join(data) if data else None, "k": k, "temperature": temperature, "top_p": top_p,
             "max_new_tokens": max_tokens, "sampler": sampler, "prompt_template": prompt_template,
             "use_chat_template": use_chat_template, "system_prompt": system_prompt, "answer_column": answer_column,
             "grader": grader, "seed": seed, "limit": limit, "split": split, "bootstrap": bootstrap,
             "generation_batch_size": batch_size, "group_by": group_by}
    for key, value in given.items():
        if value is not None:
            setattr(cfg, key, value)
    if cfg.sampler not in ("hf", "vllm", "same"):
        raise UserError(f"--sampler: {cfg.sampler!r} is not one of hf, vllm")
    if dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise UserError(f"--dtype: {dtype!r} is not one of auto, float32, bfloat16, float16")
    if not cfg.data:
        raise UserError("--data: required (a local .jsonl/.json/.parquet/.csv file or a datasets hub name), "
                        "unless --recipe has eval.data")
    model_path = resolve_eval_model(model)
    out = Path(output_dir) if output_dir else default_output_dir(model, cfg)
    return run_eval(cfg, model_path=model_path, output_dir=out, dtype=dtype, device=device,
                    vllm_options=vllm_options)
