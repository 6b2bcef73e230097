"""Load: the eval sets, their gold answers, and the hashes that pin down exactly what was evaluated."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpo.config import EvalConfig
from grpo.data import check_template, load_rows
from grpo.errors import ConfigError, UserError


@dataclass
class EvalSet:
    name: str  # short label used in tables: file stem or hub name
    source: str  # as given
    rows: list[dict]
    file_sha256: str | None  # of the file's bytes (local files); None for hub datasets
    rows_sha256: str  # of the rows actually evaluated (after --limit), canonical JSON


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
