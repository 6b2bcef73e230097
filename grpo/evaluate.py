"""`grpo eval`: sample k completions per problem, grade them, and write numbers that say how they were made.

Order matters for the user: the config and the data are checked before any model loads, so a typo in a path
costs a second, not a model load. Every sampling setting, the grader, the seed, the data hashes and the model
fingerprint go into the summary beside the scores: a number without its protocol cannot be compared.

Reproducibility: problems are generated in fixed chunks (hf: `generation_batch_size // k` problems; vLLM:
2048 // k), each chunk seeded from (seed, index of its first problem), so the same config, data and machine give
the same numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from grpo.config import EvalConfig, ModelConfig
from grpo.data import PromptRenderer, check_template, load_rows
from grpo.errors import ConfigError, UserError
from grpo.eval_metrics import ProblemResult, aggregate, majority_vote, normalize_answer, report_ks
from grpo.sampling.base import Group, Sampler, SamplingSettings

VLLM_ROWS_PER_CALL = 2048  # completions per vLLM generate call
SEED_STRIDE = 1_000_003  # chunk seed = seed * SEED_STRIDE + first problem index: distinct for any realistic size


@dataclass
class EvalSet:
    name: str  # short label used in tables: file stem or hub name
    source: str  # as given
    rows: list[dict]
    file_sha256: str | None  # of the file's bytes (local files); None for hub datasets
    rows_sha256: str  # of the rows actually evaluated (after --limit), canonical JSON


# ---------------------------------------------------------------------------------------------------------------
# Checks and data


def check_eval_config(cfg: EvalConfig) -> list[str]:
    """Value rules for the eval section, beyond what the recipe loader checks."""
    p = []
    if not cfg.data.strip():
        p.append("eval.data: required: a local .jsonl/.json/.parquet/.csv file or a datasets hub name")
    if cfg.k < 1:
        p.append(f"eval.k: samples per problem must be >= 1, got {cfg.k}")
    if cfg.temperature < 0:
        p.append(f"eval.temperature: must be >= 0 (0 is greedy), got {cfg.temperature}")
    if not 0 < cfg.top_p <= 1:
        p.append(f"eval.top_p: must be in (0, 1], got {cfg.top_p}")
    if cfg.max_new_tokens < 1:
        p.append(f"eval.max_new_tokens: must be >= 1, got {cfg.max_new_tokens}")
    if cfg.limit is not None and cfg.limit < 1:
        p.append(f"eval.limit: must be >= 1 (or unset for every problem), got {cfg.limit}")
    if cfg.bootstrap < 0:
        p.append(f"eval.bootstrap: must be >= 0 (0 turns confidence intervals off), got {cfg.bootstrap}")
    if cfg.generation_batch_size < 1:
        p.append(f"eval.generation_batch_size: must be >= 1, got {cfg.generation_batch_size}")
    if cfg.system_prompt and not cfg.use_chat_template:
        p.append("eval.system_prompt: only used with eval.use_chat_template=true; set it or drop the system prompt")
    if cfg.answer_pattern is not None:
        try:
            if re.compile(cfg.answer_pattern).groups < 1:
                p.append(f"eval.answer_pattern: {cfg.answer_pattern!r} has no group; wrap the answer in ( )")
        except re.error as exc:
            p.append(f"eval.answer_pattern: {cfg.answer_pattern!r} is not a valid regex ({exc})")
    return p


def data_sources(cfg: EvalConfig) -> list[str]:
    return [s.strip() for s in cfg.data.split(",") if s.strip()]


def load_eval_sets(cfg: EvalConfig) -> list[EvalSet]:
    """Every dataset in cfg.data, checked against the template, answer column and group_by column."""
    sets: list[EvalSet] = []
    problems: list[str] = []
    names: set[str] = set()
    for source in data_sources(cfg):
        rows = load_rows(source, cfg.split, cfg.subset, cfg.limit)
        local = Path(source).expanduser()
        file_sha = _file_sha256(local) if local.is_file() else None
        name = local.stem if file_sha else source
        while name in names:  # two files with one stem: keep both, distinguishable
            name += "'"
        names.add(name)
        where = f"eval data {source}"
        problems += check_template(cfg.prompt_template, rows, "eval.prompt_template", where)
        for key, column in (("eval.answer_column", cfg.answer_column), ("eval.group_by", cfg.group_by)):
            if column and column not in rows[0]:
                problems.append(f"{key}: column '{column}' is not in {where}; its columns are {', '.join(rows[0])}")
        sets.append(EvalSet(name, source, rows, file_sha, _rows_sha256(rows)))
    if problems:
        raise ConfigError(problems, "eval config")
    return sets


def gold_answer(row: dict, cfg: EvalConfig, source: str, index: int) -> Any:
    value = row.get(cfg.answer_column)
    if cfg.answer_pattern is None or value is None:
        return value
    match = re.search(cfg.answer_pattern, str(value), flags=re.DOTALL)
    if match is None:
        raise UserError(f"eval.answer_pattern: {cfg.answer_pattern!r} does not match the {cfg.answer_column} of "
                        f"row {index + 1} of {source} ({str(value)[:80]!r}). Fix the pattern or the data.")
    return match.group(1).strip()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _rows_sha256(rows: list[dict]) -> str:
    text = json.dumps(rows, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def model_fingerprint(path: Path | str | None, model: Any = None) -> dict:
    """Path plus a hash of the directory's file names and sizes and of config.json's bytes: cheap on 10 GB of
    weights, and different whenever a checkpoint is replaced or retrained in place (sizes aside, by config)."""
    out: dict[str, Any] = {"path": str(path) if path is not None else None}
    if model is not None:
        out["class"] = type(model).__name__
        out["parameters"] = sum(p.numel() for p in model.parameters())
        out.setdefault("name_or_path", getattr(getattr(model, "config", None), "_name_or_path", None))
    local = Path(path) if path is not None else None
    if local is not None and local.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in local.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(local).as_posix()}\0{f.stat().st_size}\n".encode())
        if (local / "config.json").is_file():
            h.update((local / "config.json").read_bytes())
        out["files_sha256"] = h.hexdigest()
    return out


# ---------------------------------------------------------------------------------------------------------------
# Grader and answer extraction


def load_grader(name: str) -> tuple[Callable[..., list], Callable[[str], str | None]]:
    """The grader reward and the answer extractor used for majority votes: the math reward's own extractor
    when the grader is the math reward, otherwise the stripped completion."""
    from rewards.registry import load_reward

    fn = load_reward(name)
    extract: Callable[[str], str | None] = lambda text: text.strip() or None  # noqa: E731
    if getattr(fn, "__module__", "") == "rewards.math":
        import rewards.math

        extract = getattr(rewards.math, "extract_answer", extract)
    return fn, extract


def safe_extract(extract: Callable[[str], str | None], text: str) -> str | None:
    """A model's odd output gives no answer, never a crash."""
    try:
        value = extract(text)
    except Exception:  # noqa: BLE001 - the extractor sees arbitrary model text; failure means "no answer"
        return None
    return normalize_answer(value) if isinstance(value, str) else None


# ---------------------------------------------------------------------------------------------------------------
# Model and sampler


def build_sampler(cfg: EvalConfig, backend: str, model: Any, tokenizer: Any, model_path: Path | str | None,
                  dtype: str, vllm_options: dict | None = None) -> Sampler:
    if backend == "vllm":
        if model_path is None:
            raise UserError("eval.sampler=vllm needs a model directory (vLLM loads the weights itself); give "
                            "--model DIR or use --sampler hf.")
        try:
            from grpo.sampling.vllm import VLLMSampler
        except ImportError as exc:
            raise UserError(f"--sampler vllm: the vLLM sampler cannot be imported ({exc}). Install it with "
                            f"`pip install 'grpo[vllm]'`, or use --sampler hf.") from exc
        options = {"gpu_memory_utilization": 0.85, **(vllm_options or {})}
        return VLLMSampler(str(model_path), tokenizer=tokenizer, seed=cfg.seed,
                           dtype="auto" if dtype == "auto" else dtype, **options)
    from grpo.sampling.hf import HFSampler

    return HFSampler(model, tokenizer, generation_batch_size=cfg.generation_batch_size)


def _pick_dtype(dtype: str, device: Any) -> str:
    if dtype != "auto":
        return dtype
    return "bfloat16" if getattr(device, "type", str(device)) == "cuda" else "float32"


# ---------------------------------------------------------------------------------------------------------------
# The run


def run_eval(cfg: EvalConfig, model: Any = None, tokenizer: Any = None, model_path: Path | str | None = None,
             sampler: Sampler | None = None, output_dir: Path | str = Path("eval"), step: int | None = None, *,
             dtype: str = "auto", device: str = "auto", vllm_options: dict | None = None,
             progress: bool = True, console: bool = True) -> dict:
    """Evaluate and write samples.jsonl, summary.json and summary.md under output_dir; returns the summary.

    Give a loaded `model` + `tokenizer` (during training), or `model_path` (a directory, checkpoint or demo:NAME)
    to load from. `sampler` overrides the one built from cfg.sampler ("same" means hf here)."""
    problems = check_eval_config(cfg)
    if problems:
        raise ConfigError(problems, "eval config")
    sets = load_eval_sets(cfg)  # before the model: a bad path fails in a second
    grader, extract = load_grader(cfg.grader)
    backend = "vllm" if cfg.sampler == "vllm" else "hf"

    from grpo.modeling import load_policy, load_tokenizer, resolve_device, resolve_model_path

    torch_device = resolve_device(device)
    chosen_dtype = _pick_dtype(dtype, torch_device)
    resolved_path = resolve_model_path(str(model_path)) if model_path is not None else None
    if tokenizer is None:
        if resolved_path is None:
            raise UserError("eval: no model given. Pass --model DIR (a Hugging Face directory or a checkpoint).")
        tokenizer = load_tokenizer(resolved_path)
    if sampler is None:
        if model is None and backend == "hf":
            model = load_policy(ModelConfig(path=str(resolved_path), dtype=chosen_dtype), resolved_path, torch_device)
        sampler = build_sampler(cfg, backend, model, tokenizer, resolved_path, chosen_dtype, vllm_options)
    else:
        name = type(sampler).__name__
        backend = {"HFSampler": "hf", "VLLMSampler": "vllm"}.get(name, name)

    renderer = PromptRenderer(tokenizer, cfg.prompt_template, cfg.use_chat_template, cfg.system_prompt)
    items = []  # (set, row index, row, prompt text, prompt ids, gold)
    for s in sets:
        for i, row in enumerate(s.rows):
            text = renderer.text(row)
            items.append((s, i, row, text, renderer.ids(text), gold_answer(row, cfg, s.source, i)))

    settings = SamplingSettings(n=cfg.k, temperature=cfg.temperature, top_p=cfg.top_p,
                                max_new_tokens=cfg.max_new_tokens, stop=tuple(cfg.stop), seed=cfg.seed)
    # hf: one generate call is one padded batch, so the chunk is the batch. vLLM schedules its own batches and
    # is fastest given much at once; its chunks only pace the progress bar.
    chunk = max(1, (VLLM_ROWS_PER_CALL if backend == "vllm" else cfg.generation_batch_size) // cfg.k)
    started = time.perf_counter()
    records: list[dict] = []
    results: list[ProblemResult] = []
    grader_errors = 0
    not_applicable = 0  # samples the grader returned None for (e.g. a row with no gold answer): counted wrong
    bar = _progress_bar(len(items), enabled=progress)
    from rewards.scoring import NamedReward, score

    grader_named = [NamedReward(cfg.grader, grader, 1.0)]
    try:
        for start in range(0, len(items), chunk):
            part = items[start:start + chunk]
            chunk_settings = replace(settings, seed=cfg.seed * SEED_STRIDE + start)
            groups = sampler.generate([it[4] for it in part], chunk_settings)
            errors, skipped = _grade_chunk(part, groups, grader_named, score, extract, cfg, records, results)
            grader_errors += errors
            not_applicable += skipped
            if bar is not None:
                bar.update(len(part))
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - started

    keys = [r["dataset"] for r in records]
    metrics = aggregate(results, keys, cfg.bootstrap, cfg.seed)
    if cfg.group_by:
        group_keys = [f"{r['dataset']}/{cfg.group_by}={r['group']}" for r in records]
        metrics["groups"] = aggregate(results, group_keys, cfg.bootstrap, cfg.seed)["by"]

    import grpo

    summary = {
        "grpo_version": grpo.__version__,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "step": step,
        "protocol": protocol_line(cfg),
        "model": {**model_fingerprint(resolved_path, model), "device": str(torch_device),
                  "dtype": str(next(model.parameters()).dtype).removeprefix("torch.") if model is not None
                  else chosen_dtype},
        "data": [{"name": s.name, "source": s.source, "split": None if s.file_sha256 else cfg.split,
                  "problems": len(s.rows), "file_sha256": s.file_sha256, "rows_sha256": s.rows_sha256}
                 for s in sets],
        "sampling": {"sampler": backend, "k": cfg.k, "temperature": cfg.temperature, "top_p": cfg.top_p,
                     "top_k": None, "max_new_tokens": cfg.max_new_tokens, "stop": list(cfg.stop),
                     "generation_batch_size": cfg.generation_batch_size, "problems_per_generate_call": chunk},
        "prompt": {"template": cfg.prompt_template, "use_chat_template": cfg.use_chat_template,
                   "system_prompt": cfg.system_prompt, "answer_column": cfg.answer_column,
                   "answer_pattern": cfg.answer_pattern},
        "grader": {"name": cfg.grader, "function": f"{getattr(grader, '__module__', '?')}:"
                                                    f"{getattr(grader, '__qualname__', '?')}",
                   "correct_if": "score >= 1.0", "errors": grader_errors, "not_applicable": not_applicable},
        "seed": cfg.seed,
        "bootstrap_resamples": cfg.bootstrap,
        "environment": _environment(),
        "seconds": round(seconds, 2),
        "config": asdict(cfg),
        "metrics": metrics,
    }
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "samples.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    write_atomic(out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    write_atomic(out / "summary.md", markdown_report(summary))
    if console:
        print(console_table(summary), flush=True)
        print(f"wrote {out / 'samples.jsonl'}, {out / 'summary.json'}, {out / 'summary.md'}", flush=True)
    return summary


def _grade_chunk(part, groups: list[Group], grader_named, score, extract, cfg: EvalConfig,
                 records: list[dict], results: list[ProblemResult]) -> tuple[int, int]:
    """Grade every completion of a chunk in one grader call; append one record and one result per problem."""
    prompts, completions, columns_rows, ids, reasons = [], [], [], [], []
    for (s, i, row, text, _, gold), group in zip(part, groups):
        for c in group.completions:
            prompts.append(text)
            completions.append(c.text)
            columns_rows.append({**row, "answer": gold})
            ids.append(c.token_ids)
            reasons.append(c.finish_reason)
    columns: dict[str, Any] = {}
    for key in dict.fromkeys(k for r in columns_rows for k in r):
        columns[key] = [r.get(key) for r in columns_rows]
    columns.update(completion_ids=ids, finish_reasons=reasons, max_new_tokens=cfg.max_new_tokens)
    scores = score(grader_named, prompts, completions, columns)
    values = scores.per_reward[cfg.grader]
    at = 0
    for (s, i, row, text, _, gold), group in zip(part, groups):
        samples = []
        for c in group.completions:
            value = values[at]
            at += 1
            samples.append({"text": c.text, "extracted": safe_extract(extract, c.text),
                            "score": value, "correct": value is not None and value >= 1.0,
                            "tokens": len(c.token_ids), "finish_reason": c.finish_reason})
        result = ProblemResult(correct=[x["correct"] for x in samples], answers=[x["extracted"] for x in samples],
                               lengths=[x["tokens"] for x in samples],
                               truncated=[x["finish_reason"] == "length" for x in samples])
        vote = majority_vote(result.answers)
        results.append(result)
        records.append({"dataset": s.name, "index": i, "group": row.get(cfg.group_by) if cfg.group_by else None,
                        "prompt": text, "answer": gold if _jsonable(gold) else str(gold),
                        "num_correct": sum(result.correct), "majority_answer": None if vote is None else
                        result.answers[vote], "majority_correct": vote is not None and result.correct[vote],
                        "samples": samples})
    return sum(scores.errors.values()), sum(v is None for v in values)


def _jsonable(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool, type(None), list, dict))


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="eval", unit="problem", dynamic_ncols=True, file=sys.stderr)


def _environment() -> dict:
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "platform": platform.platform()}


def write_atomic(path: Path, text: str) -> None:
    """Readers never see a half-written file: write beside it, then rename over it."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------------
# Reports


def protocol_line(cfg: EvalConfig) -> str:
    mode = "greedy" if cfg.temperature == 0 else f"T={cfg.temperature:g}, top_p={cfg.top_p:g}"
    return (f"{cfg.k} sample(s) per problem, {mode}, max {cfg.max_new_tokens} new tokens, grader {cfg.grader}, "
            f"seed {cfg.seed}")


def table_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """Header and one row per dataset (and group), then overall."""
    metrics = summary["metrics"]
    n = summary["sampling"]["k"]
    ks = report_ks(n)
    head = ["dataset", "problems", f"avg@{n}", *[f"pass@{k}" for k in ks if k > 1 or n == 1],
            *[f"maj@{k}" for k in ks if k > 1], "len", "trunc"]
    if n > 1:
        head.insert(3, "pass@1")

    def row(name: str, s: dict) -> list[str]:
        cells = [name, str(s["problems"])]
        for col in head[2:-2]:
            value = s["metrics"][col] * 100
            ci = s["ci95"].get(col)
            cells.append(f"{value:.1f} [{ci[0] * 100:.1f}, {ci[1] * 100:.1f}]" if ci and col == f"avg@{n}"
                         else f"{value:.1f}")
        return cells + [f"{s['length_mean']:.0f}", f"{s['truncation_rate'] * 100:.1f}%"]

    rows = [row(name, s) for name, s in metrics["by"].items()]
    rows += [row(name, s) for name, s in metrics.get("groups", {}).items()]
    if len(metrics["by"]) > 1 or metrics.get("groups"):
        rows.append(row("overall", metrics["overall"]))
    return head, rows


def markdown_report(summary: dict) -> str:
    head, rows = table_rows(summary)
    lines = [f"# grpo eval: {summary['model']['path'] or summary['model'].get('name_or_path')}", "",
             f"Protocol: {summary['protocol']}. Scores in %, avg@k with a 95% bootstrap interval over problems "
             f"({summary['bootstrap_resamples']} resamples).", "",
             "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(_md(c) for c in r) + " |" for r in rows]
    s = summary["sampling"]
    lines += ["", "| setting | value |", "|---|---|",
              f"| model | {summary['model']['path']} (files sha256 {summary['model'].get('files_sha256', '-')}) |",
              f"| dtype / device | {summary['model']['dtype']} / {summary['model']['device']} |"]
    lines += [f"| data {d['name']} | {d['source']} ({d['problems']} problems, sha256 {d['file_sha256'] or '-'}, "
              f"rows sha256 {d['rows_sha256']}) |" for d in summary["data"]]
    lines += [f"| sampler | {s['sampler']} |", f"| samples per problem (k) | {s['k']} |",
              f"| temperature | {s['temperature']} |", f"| top_p | {s['top_p']} |",
              f"| max new tokens | {s['max_new_tokens']} |", f"| stop | {s['stop']} |",
              f"| generation batch size | {s['generation_batch_size']} |",
              f"| prompt template | `{_md(repr(summary['prompt']['template']))}` |",
              f"| chat template | {summary['prompt']['use_chat_template']} |",
              f"| grader | {summary['grader']['name']} ({summary['grader']['function']}), correct if score >= 1.0, "
              f"{summary['grader']['errors']} grader error(s) |",
              f"| seed | {summary['seed']} |", f"| grpo | {summary['grpo_version']} |",
              f"| step | {summary['step']} |", f"| seconds | {summary['seconds']} |"]
    return "\n".join(lines) + "\n"


def _md(cell: str) -> str:
    """A table cell: a | or newline from a template or a column value must not break the table."""
    return cell.replace("|", "\\|").replace("\n", "\\n")


def console_table(summary: dict) -> str:
    head, rows = table_rows(summary)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [summary["protocol"], fmt.format(*head), "  ".join("-" * w for w in widths)]
    lines += [fmt.format(*r) for r in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# During training


def evaluate_during_training(policy: Any, tokenizer: Any, cfg: EvalConfig, output_dir: Path | str, step: int,
                             sampler: Sampler | None = None) -> dict[str, float]:
    """Evaluate the live policy; files go to OUTPUT_DIR/eval/step_NNNNNN/. Returns flat metrics for the training
    log: eval/avg@k, eval/pass@j (j = 1, 2, 4, ..., k), eval/maj@k, eval/length_mean, eval/truncation_rate, and the
    same under eval/<dataset>/ when several datasets are evaluated. Pass the trainer's `sampler` to reuse it (its
    weights must be synced); without one the policy generates through the transformers sampler."""
    import torch

    device = next(policy.parameters()).device
    if sampler is None and cfg.sampler == "vllm":
        cfg = replace(cfg, sampler="hf")  # a second vLLM engine beside training's would not fit; the policy generates
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        summary = run_eval(cfg, model=policy, tokenizer=tokenizer, sampler=sampler,
                           output_dir=Path(output_dir) / "eval" / f"step_{step:06d}", step=step,
                           device=device.type, progress=False, console=False)
    finally:
        if cuda_states is not None:  # the sampler reseeds every device; training's own draws must not move
            torch.cuda.set_rng_state_all(cuda_states)
    return flat_metrics(summary)


def flat_metrics(summary: dict, prefix: str = "eval") -> dict[str, float]:
    n = summary["sampling"]["k"]
    names = [f"avg@{n}", *[f"pass@{k}" for k in report_ks(n)], f"maj@{n}"]

    def flat(s: dict, where: str) -> dict[str, float]:
        out = {f"{where}/{name}": s["metrics"][name] for name in dict.fromkeys(names)}
        out[f"{where}/length_mean"] = s["length_mean"]
        out[f"{where}/truncation_rate"] = s["truncation_rate"]
        return out

    metrics = flat(summary["metrics"]["overall"], prefix)
    if len(summary["metrics"]["by"]) > 1:
        for name, s in summary["metrics"]["by"].items():
            metrics.update(flat(s, f"{prefix}/{name}"))
    return metrics
