"""`grpo eval`: sample k completions per problem, grade them, and write numbers that say how they were made.

The pipeline reads as its four stages: load (the sets, the grader, the model and sampler), sample, grade,
report. Config and data are checked before any model loads, so a typo in a path costs a second, not a model
load. Every sampling setting, the grader, the seed, the data hashes and the model fingerprint go into the
summary beside the scores: a number without its protocol cannot be compared.

Reproducibility: problems are generated in fixed chunks (hf: `generation_batch_size // k` problems; vLLM:
2048 // k), each chunk seeded from (seed, index of its first problem), so the same config, data and machine give
the same numbers.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from grpo.config import EnvironmentConfig, EvalConfig, ModelConfig, VllmConfig
from grpo.data import PromptRenderer
from grpo.errors import ConfigError, UserError
from grpo.eval.metrics import ProblemResult, majority_vote, normalize_answer
from grpo.eval.partial import PartialSamples
from grpo.eval.sets import EvalSet, gold_answer, load_eval_sets
from grpo.eval.summary import build_summary, tool_protocol, write_eval_files
from grpo.parallel import World
from grpo.rules import eval_rules
from grpo.resolve import eval_sampler
from grpo.sampling.base import Completion, Group, Sampler, SamplingSettings
from grpo.seeds import derive_seed
from rewards.scoring import NamedReward, reward_columns, score

VLLM_ROWS_PER_CALL = 2048  # completions per vLLM generate call


@dataclass
class Item:
    """One problem, rendered."""

    set: EvalSet
    index: int  # row index within its set
    row: dict
    prompt: str
    prompt_ids: list[int]
    gold: Any
    order: int = 0  # position among all the problems: chunk seeds and the merged order come from it
    padding: bool = False  # a repeat that keeps the ranks' generate calls in step; never graded


@dataclass
class Graded:
    records: list[dict] = field(default_factory=list)  # one per problem, samples inside (samples.jsonl)
    results: list[ProblemResult] = field(default_factory=list)  # one per problem, for the metrics
    orders: list[int] = field(default_factory=list)  # each problem's Item.order
    grader_errors: int = 0
    not_applicable: int = 0  # samples the grader returned None for (e.g. a row with no gold answer): counted wrong


def run_eval(cfg: EvalConfig, model: Any = None, tokenizer: Any = None, model_path: Path | str | None = None,
             sampler: Sampler | None = None, output_dir: Path | str = Path("eval"), step: int | None = None, *,
             dtype: str = "auto", device: str = "auto", engine: VllmConfig | None = None,
             progress: bool = True, console: bool = True, world: World = World.single(),
             environment: EnvironmentConfig | None = None) -> dict:
    """Evaluate and write samples.jsonl, summary.json and summary.md under output_dir; returns the summary.
    While it runs, each graded problem is appended to output_dir/samples.partial.jsonl (grpo/eval/partial.py),
    which a crash or Ctrl-C leaves behind and a finished eval removes.

    Give a loaded `model` + `tokenizer` (during training), or `model_path` (a directory, checkpoint or demo:NAME)
    to load from. `sampler` overrides the one built from cfg.sampler ("same" means hf here); `engine` holds the
    vLLM options (a recipe's sampler.vllm). On several ranks each evaluates its share of the problems; rank 0
    gathers them and writes the files. `environment` (a recipe's): episodes call its tool, as in training."""
    problems = eval_rules(cfg)
    if problems:
        raise ConfigError(problems, "eval config")
    sets = load_eval_sets(cfg)  # before the model: a bad path fails in a second
    grader = load_grader(cfg.grader)  # a user's grader: imported in its worker, never here
    try:
        if model is None and sampler is None:  # a protocol that cannot fit is refused before anything loads
            check_protocol_fits(cfg, sum(len(s.rows) for s in sets), model_path, dtype, device)
        # A sharded model (FSDP, during training) decodes in lockstep over the ranks.
        loaded = load_model(cfg, model, tokenizer, model_path, sampler, dtype, device, engine, world,
                            environment=environment)
        try:
            items = render_items(sets, PromptRenderer(loaded.tokenizer, cfg), cfg)
            return sample_grade_report(cfg, sets, items, grader, loaded, output_dir, step, progress, console,
                                       world)
        finally:
            if sampler is None:  # ours to close (an engine under torchrun must go before the process group)
                loaded.sampler.close()
    finally:
        close_grader(grader)


def sample_grade_report(cfg: EvalConfig, sets: list[EvalSet], items: list[Item], grader: NamedReward,
                        loaded: "Loaded", output_dir: Path | str, step: int | None, progress: bool, console: bool,
                        world: World) -> dict:
    started = time.perf_counter()
    graded = Graded()
    chunk = problems_per_call(cfg, loaded.sampler.backend)
    mine = rank_share(items, world)
    bar = _progress_bar(len(mine), enabled=progress and world.is_main)
    # Each graded problem goes to samples.partial.jsonl at once: a crash or Ctrl-C keeps what was done.
    log = PartialSamples(Path(output_dir), sum(not it.padding for it in mine)) if world.is_main else None
    try:
        try:
            for start in range(0, len(mine), chunk):
                part = mine[start:start + chunk]
                settings = SamplingSettings.of(cfg, n=cfg.k, seed=derive_seed(cfg.seed, part[0].order))
                groups = loaded.sampler.generate([it.prompt_ids for it in part], settings, rows=[it.row for it in part])
                real = [it for it in part if not it.padding]
                before = len(graded.records)
                grade(real, groups[:len(real)], grader, cfg, graded)
                if log is not None:
                    log.add(graded.records[before:])
                if bar is not None:
                    bar.update(len(part))
        finally:
            if bar is not None:
                bar.close()  # before any message below
        if world.distributed:
            graded = merge_graded(world.gather(graded))
        summary = build_summary(cfg, sets, graded, grader, step=step, seconds=time.perf_counter() - started,
                                backend=loaded.sampler.backend, chunk=chunk, model=loaded.model,
                                model_path=loaded.path, device=loaded.device, dtype=loaded.dtype,
                                tools=tool_protocol(loaded.sampler))
        if log is not None:
            write_eval_files(Path(output_dir), graded.records, summary, console)
    except BaseException:
        if log is not None:
            log.stopped()
        raise
    if log is not None:
        log.done()
    return summary


def rank_share(items: list[Item], world: World) -> list[Item]:
    """This rank's consecutive share of the problems, padded with repeats of its last one so that every rank
    makes the same generate calls (a sharded model decodes in lockstep over the ranks)."""
    if not world.distributed:
        return items
    per = -(-len(items) // world.size)  # ceil
    mine = items[world.rank * per:(world.rank + 1) * per]
    filler = mine[-1] if mine else items[-1]
    return mine + [replace(filler, padding=True) for _ in range(per - len(mine))]


def merge_graded(parts: list[Graded]) -> Graded:
    """Every rank's problems in their original order, and the summed counts."""
    rows = sorted(((o, rec, res) for p in parts for o, rec, res in zip(p.orders, p.records, p.results)),
                  key=lambda row: row[0])
    return Graded(records=[r[1] for r in rows], results=[r[2] for r in rows], orders=[r[0] for r in rows],
                  grader_errors=sum(p.grader_errors for p in parts),
                  not_applicable=sum(p.not_applicable for p in parts))


# ---------------------------------------------------------------------------------------------------- load


# A user's grader runs in a worker process; a call that hangs is abandoned (the worker killed and replaced, the
# chunk's completions counted as grader errors) after this long per completion of the chunk, at least the minimum.
GRADER_S_PER_COMPLETION = 1.0
GRADER_MIN_S = 60.0


@dataclass
class _GraderSpec:
    """What rewards.scoring.build_rewards reads of a recipe's reward, for the one eval grades with."""

    name: str
    weight: float = 1.0
    args: dict = field(default_factory=dict)
    timeout_s: float = 0.0  # grpo's own graders: inline, no limit; a user's gets one per chunk (grade_time_limit)
    max_abs: float = math.inf


def load_grader(name: str) -> NamedReward:
    """The grader reward, with its answer extractor for majority votes (the stripped completion when the
    reward declares none). grpo's own graders run here; a user's grader runs in a worker process, as in training
    (rewards/plugin_pool.py), so an os._exit, a crash, a leak or a hang in it costs that worker, never the eval:
    end it with close_grader."""
    from rewards.scoring import build_rewards

    [grader] = build_rewards([_GraderSpec(name)])
    if grader.extract_answer is None:
        grader.extract_answer = lambda text: text.strip() or None
    return grader


def close_grader(grader: NamedReward) -> None:
    from rewards.scoring import close_rewards

    close_rewards([grader])


def grade_time_limit(grader: NamedReward, completions: int) -> float | None:
    """The time one grader call on `completions` may take: none for grpo's own (in this process, proven safe),
    a limit scaled to the chunk for a user's grader in its worker."""
    from rewards.plugin_pool import PluginReward

    if not isinstance(grader.fn, PluginReward):
        return grader.timeout_s
    return max(GRADER_MIN_S, GRADER_S_PER_COMPLETION * completions)


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    sampler: Sampler
    path: Path | str | None
    device: Any
    dtype: str


def load_model(cfg: EvalConfig, model, tokenizer, model_path, sampler, dtype: str, device: str,
               engine: VllmConfig | None, world: World = World.single(), backend: str | None = None,
               environment: EnvironmentConfig | None = None) -> Loaded:
    """The model, tokenizer and sampler to evaluate with: those given, the rest loaded. `backend` overrides
    the sampler cfg.sampler names (periodic eval: hf, when it cannot reuse training's). A sampler built here runs
    tool-using episodes when `environment` names one (a given sampler already does, or does not)."""
    import transformers

    from grpo.modeling import load_policy, load_tokenizer, resolve_device, resolve_model_path
    from grpo.sampling.factory import build_sampler

    transformers.utils.logging.disable_progress_bar()  # the eval bar is the one to watch

    torch_device = resolve_device(device)
    dtype = eval_dtype(dtype, torch_device.type)
    path = resolve_model_path(str(model_path)) if model_path is not None else None
    if tokenizer is None:
        if path is None:
            raise UserError("eval: no model given. Pass --model DIR (a Hugging Face directory or a checkpoint).")
        tokenizer = load_tokenizer(path)
    if sampler is None:
        backend = backend or eval_sampler(cfg.sampler)
        if model is None and backend == "hf":
            model = load_policy(ModelConfig(path=str(path), dtype=dtype), path, torch_device)
        sampler = build_sampler(backend, model=model, tokenizer=tokenizer, model_path=path,
                                generation_batch_size=cfg.generation_batch_size, engine=engine or VllmConfig(),
                                seed=cfg.seed, dtype=dtype, synced=world.distributed, world=world,
                                max_model_len=(engine or VllmConfig()).max_model_len, environment=environment)
    return Loaded(model, tokenizer, sampler, path, torch_device, dtype)


def eval_dtype(dtype: str, device_type: str) -> str:
    """--dtype auto: bfloat16 on a GPU, float32 on a CPU."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if device_type == "cuda" else "float32"


def check_protocol_fits(cfg: EvalConfig, problems: int, model_path: Path | str | None, dtype: str,
                        device: str) -> None:
    import json

    from grpo.dtypes import DTYPES
    from grpo.eval.budget import available_bytes, check_fits, eval_memory_bytes
    from grpo.modeling import resolve_device, resolve_model_path
    from grpo.plan import model_shape

    device_type = resolve_device(device).type
    shape = None
    try:
        config = Path(resolve_model_path(str(model_path))) / "config.json"
        shape = model_shape(json.loads(config.read_text()), str(config))
    except (UserError, OSError, ValueError, TypeError):
        pass  # a hub id, or a config grpo plan cannot read: the KV term is left out, the rest still counts
    terms = eval_memory_bytes(cfg, problems, eval_sampler(cfg.sampler), shape, DTYPES[eval_dtype(dtype, device_type)])
    check_fits(terms, available_bytes(device_type), cfg, problems)


def render_items(sets: list[EvalSet], renderer: PromptRenderer, cfg: EvalConfig) -> list[Item]:
    items = []
    for s in sets:
        for i, row in enumerate(s.rows):
            text = renderer.text(row)
            items.append(Item(s, i, row, text, renderer.ids(text), gold_answer(row, cfg, s.source, i),
                              order=len(items)))
    return items


def problems_per_call(cfg: EvalConfig, backend: str) -> int:
    """hf: one generate call is one padded batch, so the chunk is the batch. vLLM schedules its own batches and
    is fastest given much at once; its chunks only pace the progress bar."""
    return max(1, (VLLM_ROWS_PER_CALL if backend == "vllm" else cfg.generation_batch_size) // cfg.k)


# ---------------------------------------------------------------------------------------------------- grade


def answer_text(c: Completion) -> str:
    """Where a completion's answer is read: after the last tool output of a tool-using episode, else all of it."""
    return c.tools.final_text if c.tools is not None else c.text


def grade(part: list[Item], groups: list[Group], grader: NamedReward, cfg: EvalConfig, graded: Graded) -> None:
    """Grade every completion of a chunk in one grader call; add one record and one result per problem."""
    flat = [(it, c) for it, group in zip(part, groups) for c in group.completions]
    columns = reward_columns([it.row for it, _ in flat], [it.gold for it, _ in flat],
                             [c.token_ids for _, c in flat], [c.finish_reason for _, c in flat], cfg.max_new_tokens,
                             tools=[c.tools for _, c in flat])
    grader.timeout_s = grade_time_limit(grader, len(flat))
    scores = score([grader], [it.prompt for it, _ in flat], [c.text for _, c in flat], columns)
    values = iter(scores.per_reward[grader.name])
    for it, group in zip(part, groups):
        samples = []
        for c in group.completions:
            value = next(values)
            graded.not_applicable += value is None
            samples.append({"text": c.text, "extracted": safe_extract(grader.extract_answer, answer_text(c)),
                            "score": value, "correct": value is not None and value >= 1.0,
                            "tokens": len(c.token_ids), "finish_reason": c.finish_reason,
                            **({"tool_calls": c.tools.calls, "turns": c.tools.transcript}
                               if c.tools is not None else {})})
        result = ProblemResult(correct=[x["correct"] for x in samples], answers=[x["extracted"] for x in samples],
                               lengths=[x["tokens"] for x in samples],
                               truncated=[x["finish_reason"] == "length" for x in samples])
        vote = majority_vote(result.answers)
        graded.results.append(result)
        graded.orders.append(it.order)
        graded.records.append({
            "dataset": it.set.name, "index": it.index, "group": it.row.get(cfg.group_by) if cfg.group_by else None,
            "prompt": it.prompt, "answer": it.gold if _jsonable(it.gold) else str(it.gold),
            "num_correct": sum(result.correct), "majority_answer": None if vote is None else result.answers[vote],
            "majority_correct": vote is not None and result.correct[vote], "samples": samples})
    graded.grader_errors += sum(scores.errors.values())


def safe_extract(extract: Callable[[str], str | None], text: str) -> str | None:
    """A model's odd output gives no answer, never a crash."""
    try:
        value = extract(text)
    except Exception:  # noqa: BLE001 - the extractor sees arbitrary model text; failure means "no answer"
        return None
    return normalize_answer(value) if isinstance(value, str) else None


def _jsonable(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool, type(None), list, dict))


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="eval", unit="problem", dynamic_ncols=True, file=sys.stderr)
