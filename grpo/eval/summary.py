"""Report: the summary's tables (markdown file, console) and the flat figures the training log takes."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from grpo import io
from grpo.config import EvalConfig
from grpo.eval.metrics import aggregate, report_ks
from grpo.eval.sets import model_fingerprint


def build_summary(cfg: EvalConfig, sets: list, graded: Any, grader: Any, *, step: int | None, seconds: float,
                  backend: str, chunk: int, model: Any, model_path: Any, device: Any, dtype: str,
                  tools: dict | None = None) -> dict:
    """The scores with everything that says how they were made (summary.json). tools: the environment the
    episodes called and its limits (tool_protocol), None for one-turn sampling."""
    import grpo

    keys = [r["dataset"] for r in graded.records]
    metrics = aggregate(graded.results, keys, cfg.bootstrap, cfg.seed)
    if cfg.group_by:
        group_keys = [f"{r['dataset']}/{cfg.group_by}={r['group']}" for r in graded.records]
        metrics["groups"] = aggregate(graded.results, group_keys, cfg.bootstrap, cfg.seed)["by"]
    fn = grader.fn
    return {
        "grpo_version": grpo.__version__,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "step": step,
        "protocol": protocol_line(cfg) + (f", tool {tools['environment']} (at most {tools['limits']['max_turns']} "
                                          f"turns, {tools['limits']['max_tool_calls']} calls, "
                                          f"{tools['limits']['max_total_tokens']} tokens)" if tools else ""),
        "model": {**model_fingerprint(model_path, model), "device": str(device),
                  "dtype": str(next(model.parameters()).dtype).removeprefix("torch.") if model is not None
                  else dtype},
        "data": [{"name": s.name, "source": s.source, "split": None if s.file_sha256 else cfg.split,
                  "problems": len(s.rows), "file_sha256": s.file_sha256, "rows_sha256": s.rows_sha256}
                 for s in sets],
        "sampling": {"sampler": backend, "k": cfg.k, "temperature": cfg.temperature, "top_p": cfg.top_p,
                     "top_k": None, "max_new_tokens": cfg.max_new_tokens, "stop": list(cfg.stop),
                     "generation_batch_size": cfg.generation_batch_size, "problems_per_generate_call": chunk},
        "prompt": {"template": cfg.prompt_template, "use_chat_template": cfg.use_chat_template,
                   "system_prompt": cfg.system_prompt, "answer_column": cfg.answer_column,
                   "answer_pattern": cfg.answer_pattern},
        "grader": {"name": cfg.grader, "function": f"{getattr(fn, '__module__', '?')}:"
                                                    f"{getattr(fn, '__qualname__', '?')}",
                   "correct_if": "score >= 1.0", "errors": graded.grader_errors,
                   "not_applicable": graded.not_applicable},
        **({"tools": {**tools, **tool_figures(graded.records)}} if tools else {}),
        "seed": cfg.seed,
        "bootstrap_resamples": cfg.bootstrap,
        "environment": environment(),
        "seconds": round(seconds, 2),
        "config": asdict(cfg),
        "metrics": metrics,
    }


def tool_protocol(sampler: Any) -> dict | None:
    """What a tool-using sampler's episodes were allowed: the environment, its args and stop strings, the limits."""
    from dataclasses import fields

    from grpo.config import EpisodeLimits
    from grpo.sampling.tools import ToolSampler

    if not isinstance(sampler, ToolSampler):
        return None
    env = sampler.environment
    limits = {f.name: getattr(sampler.limits, f.name) for f in fields(EpisodeLimits)}
    return {"environment": env.name, "args": dict(env.args), "stop": list(env.stop), "limits": limits}


def tool_figures(records: list[dict]) -> dict:
    """How the episodes used the tool: calls per completion, failed calls, completions that made any call."""
    samples = [x for r in records for x in r.get("samples", [])]
    calls = [len(x.get("tool_calls", [])) for x in samples]
    return {"calls_mean": sum(calls) / max(len(calls), 1),
            "completions_calling": sum(c > 0 for c in calls) / max(len(calls), 1),
            "errors": sum(bool(c.get("error")) for x in samples for c in x.get("tool_calls", []))}


def environment() -> dict:
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "platform": platform.platform()}


def write_eval_files(out: Path, records: list[dict], summary: dict, console: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    io.write_lines(out / "samples.jsonl", [json.dumps(r, ensure_ascii=False) for r in records])
    io.write_text(out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    io.write_text(out / "summary.md", markdown_report(summary))
    if console:
        print(console_table(summary), flush=True)
        print(f"wrote {out / 'samples.jsonl'}, {out / 'summary.json'}, {out / 'summary.md'}", flush=True)


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
    if "tools" in summary:
        t = summary["tools"]
        lines += [f"| tool | {t['environment']} (args {t['args']}, stop {t['stop']}) |",
                  f"| tool limits | {', '.join(f'{k} {v}' for k, v in t['limits'].items())} |",
                  f"| tool use | {t['calls_mean']:.2f} calls per completion, {100 * t['completions_calling']:.1f}% "
                  f"of completions call, {t['errors']} failed call(s) |"]
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
