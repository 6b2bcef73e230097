"""Preference rows -> tokenized pairs. Rows are read by grpo.data's loaders (local files or a hub name); every
row is checked before any model loads, and each pair is tokenized exactly as the `reward_model` reward will
read it (rewards.reward_model.encode_pair), so training and scoring see the same text."""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass

from grpo.data import load_rows
from grpo.errors import UserError
from grpo.rm.config import RmDataConfig
from rewards.reward_model import encode_pair

# The held-out draw is fixed (not the run's seed): runs with different seeds are measured on the same pairs.
HOLDOUT_SEED = 0


@dataclass(frozen=True)
class Pair:
    chosen: list[int]  # token ids of prompt + chosen completion
    rejected: list[int]


def read_pair_rows(d: RmDataConfig) -> tuple[list[dict], list[dict]]:
    """(training rows, held-out rows), each checked (the columns exist; bad rows per data.on_bad_row)."""
    rows = checked_rows(load_rows(d.path, d.split, d.subset, d.limit), d, d.path)
    if d.eval_path is not None:
        return rows, checked_rows(load_rows(d.eval_path, d.eval_split, d.subset), d, d.eval_path)
    held = max(1, round(len(rows) * d.eval_fraction))
    if held >= len(rows):
        raise UserError(f"data: {d.path} has {len(rows)} usable pair(s); holding out {held} for evaluation "
                        f"(data.eval_fraction={d.eval_fraction}) leaves none to train on. Add rows, or give "
                        f"held-out pairs of their own with data.eval_path.")
    order = list(range(len(rows)))
    random.Random(HOLDOUT_SEED).shuffle(order)
    held_out = set(order[:held])
    return ([r for i, r in enumerate(rows) if i not in held_out], [r for i, r in enumerate(rows) if i in held_out])


def checked_rows(rows: list[dict], d: RmDataConfig, source: str) -> list[dict]:
    """The rows that can train. A column no row has is the recipe's mistake (an error naming it and the file's
    columns); a row with an empty or non-text value, or chosen == rejected (nothing to learn), is that row's:
    skipped with a warning, or an error with data.on_bad_row=error."""
    wanted = {"data.prompt_column": d.prompt_column, "data.chosen_column": d.chosen_column,
              "data.rejected_column": d.rejected_column}
    columns = list(dict.fromkeys(key for row in rows for key in row))
    missing = [f"{key}={name!r}" for key, name in wanted.items() if name not in columns]
    if missing:
        raise UserError(f"data: {source} has no column for {', '.join(missing)}; its columns are "
                        f"{', '.join(columns)}. Set those keys to the file's column names.")
    bad: list[str] = []
    good: list[dict] = []
    for n, row in enumerate(rows, 1):
        why = _row_problem(row, d)
        if why:
            bad.append(f"row {n}: {why}")
        else:
            good.append(row)
    if not bad:
        return good
    summary = f"{len(bad)} of {len(rows)} rows of {source} cannot train ({'; '.join(bad[:5])}" + \
              (f"; and {len(bad) - 5} more)" if len(bad) > 5 else ")")
    if not good:
        raise UserError(f"data: {summary}: no row can train. Check the data.*_column keys against the file.")
    if d.on_bad_row == "error":
        raise UserError(f"data: {summary}. Fix those rows, or set data.on_bad_row=skip to train without them.")
    print(f"warning: data: {summary}; skipping them (data.on_bad_row=skip)", file=sys.stderr, flush=True)
    return good


def _row_problem(row: dict, d: RmDataConfig) -> str | None:
    for column in (d.prompt_column, d.chosen_column, d.rejected_column):
        value = row.get(column)
        if not isinstance(value, str):
            kind = "missing" if value is None else f"a {type(value).__name__}, not text"
            return f"column {column!r} is {kind}"
    if not (row[d.chosen_column].strip() and row[d.rejected_column].strip()):
        return "an empty completion"
    if row[d.chosen_column] == row[d.rejected_column]:
        return "chosen and rejected are the same text"
    return None


def tokenize_pairs(rows: list[dict], tokenizer, d: RmDataConfig, what: str) -> list[Pair]:
    """Rows -> pairs of token ids; pairs longer than data.max_tokens are skipped with a count (never cut)."""
    pairs, too_long = [], 0
    for row in rows:
        prompt = row[d.prompt_column]
        pair = Pair(encode_pair(tokenizer, prompt, row[d.chosen_column]),
                    encode_pair(tokenizer, prompt, row[d.rejected_column]))
        if max(len(pair.chosen), len(pair.rejected)) > d.max_tokens:
            too_long += 1
            continue
        pairs.append(pair)
    if too_long:
        print(f"warning: data: {too_long} of {len(rows)} {what} pairs are longer than data.max_tokens="
              f"{d.max_tokens} tokens; skipped (raise data.max_tokens to keep them)", file=sys.stderr, flush=True)
    if not pairs:
        raise UserError(f"data: every {what} pair is longer than data.max_tokens={d.max_tokens} tokens; raise it.")
    return pairs


def collate(pairs: list[Pair], pad_id: int):
    """[2m, T] ids (the m chosen rows, then the m rejected rows), right-padded, and their attention mask."""
    from rewards.reward_model import right_padded

    return right_padded([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)
