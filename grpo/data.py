"""Prompts: rows from a local file or a `datasets` hub name, rendered through a template (and optionally
the model's chat template), served in a seeded order that a checkpoint can resume exactly."""

from __future__ import annotations

import csv
import io
import json
import random
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpo.config import PromptConfig
from grpo.errors import UserError
from grpo.seeds import derive_seed

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


def load_rows(path: str, split: str = "train", subset: str | None = None, limit: int | None = None) -> list[dict]:
    """Every row as a dict of columns. Local files by suffix; anything else is tried as a hub dataset."""
    local = Path(path).expanduser()
    if local.suffix in LOCAL_SUFFIXES or local.exists():
        rows = _load_local(local)
    else:
        rows = _load_hub(path, split, subset)
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise UserError(f"dataset {path}: no rows. Point data.path at a file with at least one row.")
    return rows


def _load_local(path: Path) -> list[dict]:
    if not path.is_file():
        raise UserError(f"dataset {path}: no such file. Check data.path (relative paths start at the "
                        f"directory you run grpo from).")
    suffix = path.suffix
    if suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(read_text(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise UserError(f"dataset {path}, line {lineno}: not valid JSON ({exc.msg}). "
                                f"Each line of a .jsonl file must be one JSON object.") from exc
        _check_objects(rows, path)
        return rows
    if suffix == ".json":
        try:
            data = json.loads(read_text(path))
        except json.JSONDecodeError as exc:
            raise UserError(f"dataset {path}, line {exc.lineno}: not valid JSON ({exc.msg}). A .json data file "
                            f"holds one JSON list of objects (or {{\"data\": [...]}}).") from exc
        rows = data if isinstance(data, list) else data.get("data") if isinstance(data, dict) else None
        if not isinstance(rows, list):
            raise UserError(f"dataset {path}: expected a JSON list of objects (or {{\"data\": [...]}}).")
        _check_objects(rows, path)
        return rows
    if suffix == ".csv":
        return list(csv.DictReader(io.StringIO(read_text(path), newline="")))
    if suffix == ".parquet":
        import pyarrow.parquet as pq  # installed with `datasets`

        try:
            return pq.read_table(path).to_pylist()
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for one cause: an unreadable file
            raise UserError(f"dataset {path}: not a readable Parquet file ({type(exc).__name__}: {exc}). Check "
                            f"that it was written completely, or convert it to .jsonl.") from exc
    raise UserError(f"dataset {path}: unsupported file type '{suffix}'. Use one of {', '.join(LOCAL_SUFFIXES)}.")


def read_text(path: Path) -> str:
    """A data file's text: UTF-8, with or without a byte-order mark. Anything else names the line and the byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise UserError(f"dataset {path}, line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                        f"{exc.start}). Save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 {path.name} > "
                        f"{path.stem}.utf8{path.suffix}`.") from None


def _check_objects(rows: list, path: Path) -> None:
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise UserError(f"dataset {path}: row {i + 1} is {type(row).__name__}, expected a JSON object of columns.")


def _load_hub(name: str, split: str, subset: str | None) -> list[dict]:
    import datasets

    try:
        ds = datasets.load_dataset(name, subset, split=split)
    except Exception as exc:  # noqa: BLE001 - the hub raises many types; all mean "could not load"
        raise UserError(
            f"dataset '{name}' (split {split!r}): could not load it from the Hugging Face hub ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). If this machine is offline, download it elsewhere "
            f"and point data.path at a local .jsonl/.parquet/.csv file."
        ) from exc
    return [dict(row) for row in ds]


def template_fields(template: str) -> list[str]:
    """Column names a format template reads, e.g. "Q: {question}" -> ["question"]."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def check_template(template: str, rows: list[dict], where: str, source: str) -> list[str]:
    """Problems (as messages) if the template names a column that no row has. A column only some rows lack is
    those rows' problem (check_rows, data.on_bad_row), not the file's: the first row is not the file."""
    if not rows:
        return []
    columns = list(dict.fromkeys(key for row in rows for key in row))
    missing = [f for f in template_fields(template) if f not in columns]
    return [f"{where}: uses column {{{f}}} that {source} does not have; its columns are {', '.join(columns)}"
            for f in missing]


@dataclass
class BadRows:
    """Rows that cannot train: (1-based row number, why), in file order."""

    total: int
    bad: list[tuple[int, str]]

    def summary(self, shown: int = 5) -> str:
        first = "; ".join(f"row {n}: {why}" for n, why in self.bad[:shown])
        more = f"; and {len(self.bad) - shown} more" if len(self.bad) > shown else ""
        return f"{len(self.bad)} of {self.total} rows cannot train ({first}{more})"


def check_rows(rows: list[dict], template: str, answer_column: str) -> BadRows:
    """Every row, before any training: the template's columns present, the answer present, and a prompt that is
    not empty once rendered. A row missing a column used to end the run at the step that drew it; a row without
    an answer trained as a silent 0."""
    fields = template_fields(template)
    bad = []
    for n, row in enumerate(rows, 1):
        missing = [f for f in fields if f not in row]
        answer = row.get(answer_column)
        if missing:
            bad.append((n, f"no column {', '.join(missing)} (used by prompt_template)"))
        elif answer is None or isinstance(answer, str) and not answer.strip():
            bad.append((n, f"no answer in column {answer_column!r}"))
        else:
            try:
                text = template.format_map(row)
            except (KeyError, IndexError, ValueError, AttributeError) as exc:
                bad.append((n, f"prompt_template cannot be filled ({type(exc).__name__}: {exc})"))
                continue
            if not text.strip():
                bad.append((n, "the prompt is empty once rendered"))
    return BadRows(len(rows), bad)


def usable_rows(rows: list[dict], template: str, answer_column: str, on_bad_row: str) -> list[dict]:
    """The rows to train on, per data.on_bad_row; a warning (skip) or an error (error) names the bad ones."""
    import sys

    found = check_rows(rows, template, answer_column)
    if not found.bad:
        return rows
    if len(found.bad) == len(rows):
        raise UserError(f"data: {found.summary()}: no row can train. Check data.prompt_template and "
                        f"data.answer_column against the file's columns.")
    if on_bad_row == "error":
        raise UserError(f"data: {found.summary()}. Fix those rows, or set data.on_bad_row=skip to train without "
                        f"them.")
    print(f"warning: data: {found.summary()}; skipping them (data.on_bad_row=skip; set it to error to stop "
          f"instead)", file=sys.stderr, flush=True)
    skipped = {n for n, _ in found.bad}
    return [row for n, row in enumerate(rows, 1) if n not in skipped]


class PromptRenderer:
    """Row -> prompt text -> prompt token ids, the same way for training, eval and tests."""

    def __init__(self, tokenizer: Any, prompt: PromptConfig):
        self.tokenizer = tokenizer
        self.template = prompt.prompt_template
        self.use_chat_template = prompt.use_chat_template
        self.system_prompt = prompt.system_prompt
        if self.use_chat_template and not getattr(tokenizer, "chat_template", None):
            raise UserError("use_chat_template is true but the model's tokenizer has no chat template. "
                            "Set use_chat_template: false and write the prompt format into prompt_template.")

    def text(self, row: dict) -> str:
        try:
            content = self.template.format_map(row)
        except (KeyError, IndexError, ValueError) as exc:
            raise UserError(f"prompt_template {self.template!r} cannot be filled from row with columns "
                            f"{', '.join(row)}: {exc}") from exc
        if not self.use_chat_template:
            return content
        messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else [])
        messages.append({"role": "user", "content": content})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def ids(self, text: str) -> list[int]:
        # A chat template already writes the BOS token into the text; adding it again would double it.
        return self.tokenizer(text, add_special_tokens=not self.use_chat_template)["input_ids"]


@dataclass
class PromptStreamState:
    epoch: int = 0
    position: int = 0


class PromptStream:
    """Rows in a seeded order, epoch after epoch; `state` is saved in checkpoints for an exact resume."""

    def __init__(self, rows: list[dict], seed: int, shuffle: bool = True):
        self.rows = rows
        self.seed = seed
        self.shuffle = shuffle
        self.state = PromptStreamState()
        self._order = self._order_for(0)

    def _order_for(self, epoch: int) -> list[int]:
        order = list(range(len(self.rows)))
        if self.shuffle:
            random.Random(derive_seed(self.seed, epoch)).shuffle(order)
        return order

    def take(self, count: int) -> list[dict]:
        out = []
        while len(out) < count:
            if self.state.position >= len(self._order):
                self.state = PromptStreamState(self.state.epoch + 1, 0)
                self._order = self._order_for(self.state.epoch)
            out.append(self.rows[self._order[self.state.position]])
            self.state.position += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.state.epoch, "position": self.state.position}

    def load_state_dict(self, state: dict) -> None:
        self.state = PromptStreamState(int(state["epoch"]), int(state["position"]))
        self._order = self._order_for(self.state.epoch)
