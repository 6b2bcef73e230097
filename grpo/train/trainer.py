"""`grpo train`: set up once, then a loop that reads top to bottom, one named call per stage of a step."""

from __future__ import annotations

import contextlib
import random
import statistics
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from grpo import io, resolve
from grpo.config import RecipeConfig
from grpo.data import PromptRenderer, PromptStream, load_rows, usable_rows
from grpo.errors import UserError
from grpo.hacking.watch import HackingWatch
from grpo.modeling import build_reference, load_policy, load_tokenizer, resolve_device, resolve_model_path
from grpo.objectives.advantages import ADVANTAGES, AdvantageFn
from grpo.parallel import World, close_world, init_world, launched_world, rank_device
from grpo.recipe import to_dict
from grpo.rules import precision_warnings
from grpo.rundir import checkpoint_dir, latest_checkpoint, set_aside
from grpo.sampling.base import Sampler
from grpo.sampling.factory import build_sampler
from grpo.sampling.base import SamplerGone
from grpo.schedule import lr_factor
from grpo.train.checkpoint import (load_optimizer_state, load_trainer_state, newest_complete, restore_policy_weights,
                                   restore_rng, rng_state, save_checkpoint)
from grpo.train.disk import sweep_stale_temps
from grpo.train.environment import environment
from grpo.train.health import Health
from grpo.train.layout import training_layout
from grpo.lock import RunLock
from grpo.train.metrics import MetricsLog, SilentLog
from grpo.train.packing import Layout
from grpo.train.precision import Precision, resolve_precision
from grpo.train.profiling import StepProfiler, stage
from grpo.train.progress import Progress
from grpo.train.resume import check_resume, rows_fingerprint
from grpo.train.episodes import Experience, UpdateStats, merge_experience, token_batch, tool_figures
from grpo.train.inflight import EpisodeSource, Synchronous, episode_source
from grpo.train.sharding import (full_model_state, full_optimizer_state, gathered, load_full_optimizer_state,
                                 reshard_all, unwrap, wrap_from_rank0)
from grpo.train.signals import StopFlag, Stopped
from grpo.train.summary import closing_summary, read_metrics
from grpo.train.update import Objective, TrainingPass, build_objective, policy_update, training_pass
from rewards.scoring import NamedReward, build_rewards, close_rewards


class PeriodicEvaluator(Protocol):
    """Evaluation during training (grpo.eval.periodic.PeriodicEval, built by the command that starts training):
    the trainer only calls it, so train/ never imports eval/."""

    def __call__(self, policy: torch.nn.Module, tokenizer: Any, sampler: Sampler, output_dir: Path, step: int,
                 world: World) -> dict[str, float]: ...


@dataclass
class Run:
    """Everything the loop needs, built once by setup()."""

    cfg: RecipeConfig
    output_dir: Path
    device: torch.device
    tokenizer: Any
    policy: torch.nn.Module
    reference: torch.nn.Module | None
    sampler: Sampler
    rewards: list[NamedReward]
    advantage_fn: AdvantageFn
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    stream: PromptStream
    renderer: PromptRenderer
    log: MetricsLog | SilentLog
    start_step: int
    world: World = field(default_factory=World.single)
    data_fingerprint: str = ""
    objective: Objective | None = None  # the loss's parts, picked once from the recipe (grpo/train/update.py)
    training_pass: TrainingPass | None = None  # how the update runs: layout, temperature, precision, ranks
    strategy: str = "none"  # none | ddp | fsdp (grpo.resolve.strategy)
    precision: Precision | None = None  # compute and master dtypes, and how the forward casts between them
    evaluator: PeriodicEvaluator | None = None  # eval.every's evaluation; None: no periodic eval
    # where each step's episodes come from: sampled now, or requested ahead (train.max_staleness)
    source: EpisodeSource = field(default_factory=Synchronous)


def train(cfg: RecipeConfig, world: World | None = None, evaluator: PeriodicEvaluator | None = None) -> Path:
    """The run, holding output_dir's lock (rank 0) throughout, and the signal handlers once training starts (a
    Ctrl-C during the model load just interrupts it: there is nothing to save yet). `world`: this process's place
    in the launch (default: what torchrun's environment says); `evaluator`: required when eval.every is set."""
    world = world or launched_world()
    if cfg.eval.every and evaluator is None:
        raise ValueError("eval.every is set but no evaluator was given: pass "
                         "grpo.eval.periodic.PeriodicEval(cfg.eval, cfg.sampler.backend), as `grpo train` does")
    lock = RunLock(Path(cfg.output_dir)).acquire() if world.is_main else None
    try:
        run = setup(cfg, world, evaluator)
        with StopFlag(announce=world.is_main) as stop:
            return _train(run, stop)
    finally:
        if not world.distributed:
            close_world(world)  # the group of one that FSDP's mixed precision made, if any
        if lock is not None:
            lock.release()


def _train(run: Run, stop: StopFlag) -> Path:
    cfg = run.cfg
    health = Health(cfg, run.rewards, run.world, run.output_dir)
    # A resumed run's alarms replay its figures so far (metrics.jsonl, already cut back to the checkpoint's step).
    history = read_metrics(run.output_dir / "metrics.jsonl") if run.start_step and run.world.is_main else []
    alarms = HackingWatch(cfg, run.rewards, run.world, run.output_dir, history)
    progress = Progress(cfg.train.steps, run.start_step, enabled=cfg.logging.progress_bar and run.world.is_main)
    profiler = StepProfiler(cfg.logging.profile_step, cfg.logging.profiler, run.output_dir, run.world.is_main)
    profiler.warn_if_outside(run.start_step + 1, cfg.train.steps)
    try:
        run.source.start(run)  # with bounded staleness: the first steps' requests go out now
        for step in range(run.start_step + 1, cfg.train.steps + 1):
            profiler.begin(step)
            with stage("grpo/step") as whole:
                exp = run.source.experience(run, step)  # this rank's share of the step's groups
                health.check_rewards(exp, step)
                with stage("grpo/train") as training:
                    update = update_policy(run, exp)
                with stage("grpo/sync") as syncing:
                    run.source.after_update(run, step)  # the weights to the sampler (and the next request)
                check_sampler_matches_policy(run, update, step, exp)
                parts = run.world.gather_to_main(exp)  # every rank sends its share; rank 0 logs the global step
                step_exp = merge_experience(parts) if run.world.distributed and parts else exp
            metrics = step_metrics(run, step_exp, update, training.seconds, syncing.seconds, whole.seconds)
            metrics.update(health.update_metrics(update))
            metrics.update(periodic_eval(run, step))
            metrics.update(alarms.observe(step, step_exp.episodes, metrics))  # hacking/* signals, alarms/* flags
            run.log.log(step, metrics)
            write_samples(run, step_exp, step)
            health.check_update(update, step)  # after its line is logged
            alarms.act(step)  # print what started firing; guard.on_hacking = stop ends the run here
            saved = save_if_due(run, step)
            progress.update(step, metrics)
            profiler.end(step)
            # One collective a step: every rank stops after the same step, whichever ranks got the signal.
            signum = int(run.world.max(float(stop.signum)))
            if signum:
                saved = saved or save_if_due(run, step, force=True)
                raise Stopped(signum, step, saved)
    except SamplerGone as exc:  # the run's files are as the last step left them: say where to go on from
        latest = latest_checkpoint(run.output_dir)
        where = (f"The same command resumes from {latest}." if latest is not None else
                 "No checkpoint was written yet: the same command starts over.")
        raise type(exc)(f"{exc} {where}") from None
    finally:
        progress.close()
        run.log.close()
        run.sampler.close()  # before the process group goes: a vLLM engine under torchrun holds groups in it
        close_rewards(run.rewards)  # the plugin rewards' worker processes
    if run.world.is_main:
        print(closing_summary(read_metrics(run.output_dir / "metrics.jsonl"), run.output_dir,
                              latest_checkpoint(run.output_dir), run.cfg.eval.data or None), flush=True)
    return run.output_dir


# ---------------------------------------------------------------------------------------------------- setup

@dataclass
class Resume:
    """Where a resumed run starts: the checkpoint directory and its trainer state (the optimizer's is read later,
    by rank 0 alone when the policy is sharded)."""

    path: Path
    state: dict


@dataclass
class Model:
    path: str
    tokenizer: Any
    policy: torch.nn.Module
    reference: torch.nn.Module | None


def setup(cfg: RecipeConfig, world: World, evaluator: PeriodicEvaluator | None = None) -> Run:
    """Five builders, in the order their failures are cheapest: the resume point and the data (seconds), the
    model and its wrapping, the layout probe, the optimizer and schedule, the sampler and the logs."""
    import transformers

    transformers.utils.logging.disable_progress_bar()  # per-shard bars drown the step lines
    output_dir = Path(cfg.output_dir)
    _seed_everything(cfg.seed)
    device = rank_device(resolve_device(cfg.device), world)
    strategy = resolve.strategy(cfg.distributed, world.size, cfg.model)
    init_world(world, device, cfg.distributed.timeout_s, group_of_one=strategy == "fsdp",
               heartbeat_s=cfg.distributed.heartbeat_s)
    resume = resume_point(cfg, output_dir, world)  # after init_world: the ranks agree on it
    precision = resolve_precision(cfg.model, strategy, device, cfg.distributed.reduce_dtype)
    if world.is_main:
        for warning in precision_warnings(cfg):  # pure bf16 at an lr it cannot represent: said, not refused
            print(f"warning: {warning}", file=sys.stderr)

    # A bad reward name fails here, before the policy loads; a reward model (a reward factory) loads here, once,
    # on this rank's device in the compute dtype.
    rewards = build_rewards(cfg.rewards, device=device, dtype=precision.compute)
    rows, fingerprint = load_training_rows(cfg, resume, output_dir, world)
    model = build_model(cfg, world, device, strategy, precision, resume)
    layout = probe_layout(cfg, model, device, precision)
    optimizer, scheduler = build_optimizer(cfg, model.policy, device, resume, strategy, world)
    stream = PromptStream(rows, cfg.seed, cfg.data.shuffle)
    start_step = 0
    if resume is not None:
        stream.load_state_dict(resume.state["data"])
        restore_rng(resume.state, world.rank, world.size)
        start_step = int(resume.state["step"])
        if world.is_main:
            print(f"resuming from {resume.path} (step {start_step})")
    sampler, log = build_sampler_and_logs(cfg, model, world, strategy, precision, start_step, device, layout)
    # The objective and the passes are fixed here, once: the loop hands them to every update as they are.
    objective = build_objective(cfg.train, resolve.sampler_correction(cfg.train, cfg.sampler.backend),
                                resolve.loss_constant(cfg.train, cfg.sampler, cfg.environment),
                                off_policy=cfg.train.max_staleness > 0)
    passes = training_pass(cfg.train, layout, cfg.sampler.temperature, device, world, precision.autocast)
    return Run(cfg=cfg, output_dir=output_dir, device=device, tokenizer=model.tokenizer, policy=model.policy,
               reference=model.reference, sampler=sampler, rewards=rewards,
               advantage_fn=ADVANTAGES[cfg.train.advantage], optimizer=optimizer, scheduler=scheduler, stream=stream,
               renderer=PromptRenderer(model.tokenizer, cfg.data), log=log, start_step=start_step, world=world,
               data_fingerprint=fingerprint, objective=objective, training_pass=passes, strategy=strategy,
               precision=precision, evaluator=evaluator,
               source=episode_source(cfg.train.max_staleness, world.distributed))


def resume_point(cfg: RecipeConfig, output_dir: Path, world: World) -> Resume | None:
    """checkpoint.resume resolved: auto (output_dir's newest complete checkpoint, if any), never, or a directory."""
    if world.is_main:  # under the lock: no live trainer writes here, so temp files of dead ones can go
        swept = sweep_stale_temps(output_dir, output_dir / "checkpoints")
        if swept:
            print(f"note: removed {len(swept)} temporary file(s) left by a run that died while writing: "
                  f"{', '.join(p.name for p in swept[:4])}", file=sys.stderr)
    mode = cfg.checkpoint.resume
    resume = None
    if mode == "auto":
        path, state, skipped = newest_complete(output_dir, checksums=world.is_main)
        # Every rank must resume from the same step: rank 0 alone reads every byte, so the oldest choice wins.
        step = -world.max(-float(state["step"] if state is not None else -1))
        if state is not None and step != state["step"]:
            path = checkpoint_dir(output_dir, int(step)) if step >= 0 else None
            state = load_trainer_state(path, checksums=False) if path is not None else None  # rank 0 checked it
        resume = Resume(path, state) if path is not None else None
        if world.is_main:
            for line in skipped:  # damaged ones stay where they are, for a look; never deleted
                print(f"note: checkpoint {line}; passed over", file=sys.stderr, flush=True)
            if skipped and resume is not None:
                print(f"note: resuming from {resume.path}, the newest complete checkpoint", file=sys.stderr)
    elif mode != "never":
        if not Path(mode).is_dir():
            raise UserError(f"checkpoint.resume: {mode} is not auto, never, or a checkpoint directory.")
        resume = Resume(Path(mode), load_trainer_state(Path(mode), checksums=world.is_main))
    if resume is None and world.is_main and (output_dir / "metrics.jsonl").is_file():
        # An earlier run that cannot be resumed (it died before its first checkpoint, or resume=never): start over,
        # keeping every file it wrote rather than overwriting its logs or refusing the same command again.
        why = "checkpoint.resume=never" if mode == "never" else "it has no complete checkpoint to resume from"
        kept = set_aside(output_dir)
        print(f"note: {output_dir} held an earlier run and {why}: its files are kept in {kept}; this run starts "
              f"over", file=sys.stderr, flush=True)
    return resume


def load_training_rows(cfg: RecipeConfig, resume: Resume | None, output_dir: Path,
                       world: World) -> tuple[list[dict], str]:
    """The usable rows and the fingerprint of all of them; a resume whose recipe or data changed fails here,
    before any model loads."""
    all_rows = load_rows(cfg.data.path, cfg.data.split, cfg.data.subset, cfg.data.limit)
    fingerprint = rows_fingerprint(all_rows)
    if resume is not None and "config" in resume.state:
        saved_fp = resume.state.get("data_fingerprint")
        changed = f"the rows of {cfg.data.path} differ" if saved_fp and saved_fp != fingerprint else None
        check_resume(resume.state["config"], cfg, changed, resume.path, output_dir, write=world.is_main)
    rows = usable_rows(all_rows, cfg.data.prompt_template, cfg.data.answer_column, cfg.data.on_bad_row)
    return rows, fingerprint


def build_model(cfg: RecipeConfig, world: World, device: torch.device, strategy: str, precision: Precision,
                resume: Resume | None) -> Model:
    """Tokenizer, policy (resumed weights in, then wrapped for the strategy) and the frozen reference."""
    path = resolve_model_path(cfg.model.path)
    tokenizer = load_tokenizer(path, cfg.model.trust_remote_code)
    # Under torchrun only rank 0 reads the weights; the others build the model on the meta device and receive
    # theirs from rank 0 as it is sharded (wrap_from_rank0).
    empty = world.distributed and not world.is_main
    policy = load_policy(cfg.model, path, device, precision.load_dtype, empty=empty)
    reference = build_reference(policy, cfg.model) if cfg.train.beta > 0 else None  # the start, not the resume
    if resume is not None and not empty:
        restore_policy_weights(policy, resume.path)  # whole weights into the whole model, before any sharding
    policy = wrap_from_rank0(policy, strategy, cfg.distributed, device, world, precision=precision)
    if reference is not None:
        reference = wrap_from_rank0(reference, strategy, cfg.distributed, device, world, trainable=False,
                                    precision=precision)
    return Model(path, tokenizer, policy, reference)


def probe_layout(cfg: RecipeConfig, model: Model, device: torch.device, precision: Precision) -> Layout:
    """train.packing for this model, proven on a probe batch. Its forward leaves FSDP's root gathered: resharded
    here, so the optimizer (built next) holds the shards."""
    t = cfg.train
    layout = training_layout(t.packing, t.micro_batch_size, t.max_tokens_per_micro_batch, model.policy,
                             model.tokenizer.pad_token_id, device, precision.compute, precision.autocast)
    reshard_all(model.policy)
    return layout


def build_optimizer(cfg: RecipeConfig, policy: torch.nn.Module, device: torch.device, resume: Resume | None,
                    strategy: str, world: World) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the trainable parameters (fused: one kernel over all of them, 7x faster than the per-tensor loop
    for a 135M model on CPU) and the lr schedule, both resumed when there is a checkpoint."""
    t = cfg.train
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=t.lr,
                                  betas=tuple(t.adam_betas), weight_decay=t.weight_decay,
                                  fused=device.type in ("cpu", "cuda"))
    factor = lambda done: lr_factor(done, t.steps, t.warmup_steps, t.lr_schedule)  # noqa: E731
    if resume is None:
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    sharded = strategy != "none"  # then rank 0 alone reads the optimizer's file, and broadcasts it
    saved = load_optimizer_state(resume.path, resume.state) if world.is_main or not sharded else None
    load_full_optimizer_state(policy, optimizer, saved, sharded)
    if resume.state.get("config", {}).get("train") == to_dict(t):
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        scheduler.load_state_dict(resume.state["scheduler"])
        return optimizer, scheduler
    # train.lr or train.steps changed: the new ones rule from the next step on, as recipe.resolved.json says.
    # A scheduler built at the saved step from the new base lr (the constructor takes one step: hence - 1).
    for group in optimizer.param_groups:
        group["initial_lr"] = t.lr
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor,
                                                        last_epoch=resume.state["scheduler"]["last_epoch"] - 1)


def build_sampler_and_logs(cfg: RecipeConfig, model: Model, world: World, strategy: str, precision: Precision,
                           start_step: int, device: torch.device,
                           layout: Layout) -> tuple[Sampler, MetricsLog | SilentLog]:
    """The sampler, holding the policy's current weights, and (rank 0) the metrics log and the run's records."""
    policy = model.policy
    sampler = build_sampler(cfg.sampler.backend, model=unwrap(policy), tokenizer=model.tokenizer,
                            model_path=model.path, generation_batch_size=cfg.sampler.generation_batch_size,
                            engine=cfg.sampler.vllm, seed=cfg.seed, dtype=cfg.model.dtype,
                            max_model_len=resolve.max_model_len(cfg.data, cfg.sampler, cfg.environment),
                            environment=cfg.environment,
                            synced=strategy == "fsdp" and world.distributed, world=world,
                            rows_per_step=-(-cfg.train.prompts_per_step // world.size) * cfg.sampler.group_size,
                            decode_context=lambda: _decoding(policy, precision, cfg.distributed.reshard_after_forward),
                            worker=cfg.sampler.worker, server=cfg.sampler.server, first_version=start_step,
                            weight_slots=max(1, cfg.train.max_staleness))
    sampler.sync_weights(unwrap(policy))  # a resumed or LoRA-wrapped policy differs from the weights on disk
    log: MetricsLog | SilentLog = SilentLog()  # only rank 0 writes files
    output_dir = Path(cfg.output_dir)
    if world.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        log = MetricsLog(output_dir, cfg.name, cfg.logging.tensorboard, cfg.logging.wandb,
                         cfg.logging.wandb_project, to_dict(cfg))
        log.truncate_after(start_step)
        io.write_json(output_dir / "recipe.resolved.json", to_dict(cfg))
        io.write_json(output_dir / "environment.json",
                      environment(device, world, strategy, layout.kind, precision.names()))
    world.barrier()
    return sampler, log


@contextlib.contextmanager
def _decoding(policy: torch.nn.Module, precision: Precision, reshard_after_forward: bool) -> Iterator[None]:
    """The transformers sampler decodes as the trainer computes: in the compute dtype (FSDP's gathered copies, or
    autocast), with a sharded policy's weights gathered once for the whole decode rather than per token."""
    with gathered(policy, reshard_after_forward), precision.autocast():
        yield


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------------- one step

def update_policy(run: Run, exp: Experience) -> UpdateStats | None:
    if not exp.episodes:  # dynamic sampling found no group with any signal: nothing to learn this step
        run.scheduler.step()
        return None
    batch = token_batch(exp.episodes, run.tokenizer.pad_token_id)  # the step's per-token batch, built once
    stats = policy_update(run.policy, run.reference, run.optimizer, batch, run.objective, run.training_pass)
    run.scheduler.step()
    return stats


def check_sampler_matches_policy(run: Run, update: UpdateStats | None, step: int, exp: Experience) -> None:
    """The sampler's log-probs were measured against the policy before this step's update; a large gap
    means the last weight sync did not reach the sampler. Only a step sampled by that policy can say: an older
    episode's gap is also the policy's drift since (bounded staleness; its first step is always fresh)."""
    if update is None or any(e.policy_version != step - 1 for e in exp.episodes):
        return
    # Each rank checks its own engine, but all decide together: a rank stopping alone would leave the others
    # waiting in the next collective.
    worst = run.world.max(update.rank_logprob_gap)
    if worst > run.cfg.sampler.max_logprob_gap:
        where = f" (worst rank; this rank's: {update.rank_logprob_gap:.3f})" if run.world.distributed else ""
        raise RuntimeError(
            f"{run.world.tag()}step {step}: the sampler and the policy disagree: mean |sampler - trainer| token "
            f"log-prob = {worst:.3f}{where} > sampler.max_logprob_gap = {run.cfg.sampler.max_logprob_gap}. The weight "
            f"sync into the {run.cfg.sampler.backend} sampler probably failed; raise the limit only if the gap is "
            f"expected (e.g. bf16 sampling).")


def step_metrics(run: Run, exp: Experience, update: UpdateStats | None, train_s: float, sync_s: float,
                 step_s: float) -> dict[str, float]:
    episodes = exp.episodes
    totals = [e.reward for e in episodes]
    lengths = [e.length for e in episodes]
    advantages = [e.advantage for e in episodes]
    m: dict[str, float] = {
        "reward/mean": _mean(totals),
        "reward/std": statistics.pstdev(totals) if len(totals) > 1 else 0.0,
        "advantage/mean": _mean(advantages),
        "advantage/std": statistics.pstdev(advantages) if len(advantages) > 1 else 0.0,
        "advantage/abs_max": max((abs(a) for a in advantages), default=0.0),
        "groups/zero_variance_fraction": exp.zero_variance_groups / max(exp.sampled_groups, 1),
        "groups/dropped": exp.dropped_groups,
        "groups/trained": len(episodes) // exp.group_size,
        "completion/length_mean": _mean(lengths),
        "completion/length_max": max(lengths, default=0),
        "completion/truncated_fraction": _mean([e.finish_reason == "length" for e in episodes]),
        "prompts/skipped_too_long": exp.skipped_prompts,
        "lr": run.scheduler.get_last_lr()[0],
        "time/generate_s": exp.generate_s,
        "time/score_s": exp.score_s,
        "time/train_s": train_s,
        "time/sync_s": sync_s,
        "time/step_s": step_s,
        # the rest of the step: logging, samples, advantages, Python between the stages (a budget to keep small)
        "time/other_s": max(0.0, step_s - exp.blocked_s - train_s - sync_s),
        "throughput/generated_tokens_per_s": exp.generated_tokens / max(exp.generate_s, 1e-9),
        "throughput/tokens_per_s": exp.generated_tokens / max(step_s, 1e-9),
    }
    m.update(tool_figures(episodes, exp.tool_s))
    m.update(exp.figures)
    for reward in run.rewards:
        applied = [v for v in exp.reward_values.get(reward.name, []) if v is not None]
        m[f"reward/{reward.name}/mean"] = _mean(applied)
        m[f"reward/{reward.name}/std"] = statistics.pstdev(applied) if len(applied) > 1 else 0.0
        m[f"reward/{reward.name}/errors"] = exp.reward_errors.get(reward.name, 0)
        if reward.crash_counts is not None:
            m[f"reward/{reward.name}/crashes"] = exp.reward_crashes.get(reward.name, 0)
        for part, values in exp.reward_parts.get(reward.name, {}).items():  # a judge's principles, say
            m[f"reward/{reward.name}/{part}/mean"] = _mean([v for v in values if v is not None])
        for key, total in exp.reward_counts.get(reward.name, {}).items():  # summed over the step's calls and ranks
            m[f"reward/{reward.name}/{key}"] = total
        if reward.measures_correctness and "accuracy" not in m:  # the first correctness reward: 1.0 means right
            m["accuracy"] = _mean([v >= 1.0 for v in applied])
    if update is not None:
        m.update({"loss": update.loss, "kl": update.kl, "clip_fraction": update.clip_fraction,
                  "entropy": update.entropy, "grad_norm": update.grad_norm, "ratio_mean": update.ratio_mean,
                  "sampler/logprob_gap": update.logprob_gap, "batch/padded_fraction": update.padded_fraction})
        if update.correction != "none":  # only then: runs without a correction keep their metrics as they were
            m.update({"sampler/correction_weight_mean": update.correction_weight_mean,
                      "sampler/correction_flagged_fraction": update.correction_flagged_fraction})
    return m


def periodic_eval(run: Run, step: int) -> dict[str, float]:
    if run.evaluator is None:
        return {}
    return run.evaluator(unwrap(run.policy), run.tokenizer, run.sampler, run.output_dir, step, run.world)


def write_samples(run: Run, exp: Experience, step: int) -> None:
    every = run.cfg.logging.samples_every
    if not every or step % every and step != run.cfg.train.steps or not exp.episodes:
        return
    picks = exp.episodes[:: max(1, len(exp.episodes) // max(run.cfg.logging.num_samples, 1))]
    run.log.samples(step, [{"prompt": e.prompt_text, "completion": e.text, "finish_reason": e.finish_reason,
                            "reward": e.reward, "rewards": e.per_reward, "advantage": e.advantage,
                            "answer": e.row.get(run.cfg.data.answer_column),
                            **({"reward_parts": e.reward_parts} if e.reward_parts else {}),
                            **({"tool_calls": e.tools.calls, "turns": e.tools.transcript}
                               if e.tools is not None else {})}
                           for e in picks[:run.cfg.logging.num_samples]])


def save_if_due(run: Run, step: int, force: bool = False) -> Path | None:
    every, last = run.cfg.checkpoint.every, run.cfg.train.steps
    if not force and step != last and (not every or step % every):
        return None
    # Every rank sends its shards of the weights and optimizer state; only rank 0 gathers them whole, and writes.
    sharded = run.strategy != "none"
    weights = full_model_state(run.policy) if sharded and not run.cfg.model.lora.enabled else None
    state = {"optimizer": full_optimizer_state(run.policy, run.optimizer, sharded),
             "scheduler": run.scheduler.state_dict(),
             "data": run.source.data_state(run), "config": to_dict(run.cfg), "world_size": run.world.size,
             "rng_per_rank": run.world.gather(rng_state()), "data_fingerprint": run.data_fingerprint}
    failure: Exception | None = None
    if run.world.is_main:
        try:
            save_checkpoint(run.output_dir, step, unwrap(run.policy), run.tokenizer, state,
                            run.cfg.checkpoint.keep_last, weights=weights)
        except Exception as exc:  # noqa: BLE001 - re-raised below, after every rank has heard of it
            failure = exc
    # Every rank learns rank 0's outcome (this is also the barrier), so none waits on a rank that stopped.
    if run.world.max(float(failure is not None)):
        raise failure or UserError(f"{run.world.tag()}rank 0 could not write the checkpoint of step {step}; its "
                                   f"message says why.")
    return checkpoint_dir(run.output_dir, step)


def _mean(values) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else 0.0
