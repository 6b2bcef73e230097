"""The demo task: small one- and two-step word problems with a worked line of arithmetic, generated from a
seed so every machine gets the same data. Answers are non-negative integers, checked by the math reward.

Regenerate the shipped files (data/arith/train.jsonl, data/arith/test.jsonl):

    python -m grpo.demo.task
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from grpo.io import write_lines

# The prompt the RL recipe renders (recipes/tiny.yaml) and the SFT warm start trains on: they must be the same
# string, or RL starts from a distribution the warm start never saw.
PROMPT_TEMPLATE = "Question: {question}\nAnswer:"

NAMES = ["Tom", "Ana", "Ben", "Mia", "Sam", "Lea", "Max", "Zoe", "Ian", "Eva"]
ITEMS = ["apple", "book", "coin", "card", "shell", "stamp", "egg", "pen", "cup", "toy"]
GAIN = ["buys", "finds", "gets"]
LOSS = ["eats", "loses", "gives away"]
KINDS = ["add", "sub", "mul", "add_sub", "sub_add"]

# Shipped files: seeds apart from the ones the demo model's warm start draws from (grpo.demo.BUILDS).
TRAIN_SEED, TEST_SEED = 1, 2
TRAIN_ROWS, TEST_ROWS = 2000, 200


def _count(n: int, item: str) -> str:
    return f"{n} {item}" if n == 1 else f"{n} {item}s"


def make_problem(rng: random.Random) -> dict:
    """One row: question, answer (a string, as a dataset column would hold it) and the worked solution the
    model learns to write after "Answer:" (leading space, steps, then "The answer is N.")."""
    name, item, kind = rng.choice(NAMES), rng.choice(ITEMS), rng.choice(KINDS)
    gain, loss = rng.choice(GAIN), rng.choice(LOSS)
    ask = f"How many {item}s now?"
    # Every number in a problem, its steps and its answer is a single digit (0-9): one token each for the
    # character tokenizer, so a minute of warm start gets the model right often, not always.
    if kind == "add":
        a = rng.randint(1, 8)
        b = rng.randint(1, 9 - a)
        question = f"{name} has {_count(a, item)} and {gain} {b} more. {ask}"
        steps, answer = [f"{a} + {b} = {a + b}."], a + b
    elif kind == "sub":
        a = rng.randint(2, 9)
        b = rng.randint(1, a - 1)
        question = f"{name} has {_count(a, item)} and {loss} {b}. {ask}"
        steps, answer = [f"{a} - {b} = {a - b}."], a - b
    elif kind == "mul":
        a, b = rng.choice([(2, 2), (2, 3), (2, 4), (3, 2), (3, 3), (4, 2)])
        question = f"{name} has {a} bags of {_count(b, item)}. How many {item}s in all?"
        steps, answer = [f"{a} * {b} = {a * b}."], a * b
    elif kind == "add_sub":
        a = rng.randint(1, 8)
        b = rng.randint(1, 9 - a)
        c = rng.randint(1, a + b - 1)
        question = f"{name} has {_count(a, item)}, {gain} {b} more, then {loss} {c}. {ask}"
        steps, answer = [f"{a} + {b} = {a + b}.", f"{a + b} - {c} = {a + b - c}."], a + b - c
    else:  # sub_add
        a = rng.randint(2, 9)
        b = rng.randint(1, a - 1)
        c = rng.randint(1, 9 - (a - b))
        question = f"{name} has {_count(a, item)}, {loss} {b}, then {gain} {c} more. {ask}"
        steps, answer = [f"{a} - {b} = {a - b}.", f"{a - b} + {c} = {a - b + c}."], a - b + c
    solution = " " + " ".join(steps) + f" The answer is {answer}."
    return {"question": question, "answer": str(answer), "solution": solution}


def make_problems(count: int, seed: int, exclude: set[str] | frozenset[str] = frozenset(),
                  unique: bool = False) -> list[dict]:
    """`count` rows from `seed`; questions in `exclude` are skipped (a held-out set), and repeats too when
    `unique` (the single-digit space is small enough that a few hundred draws repeat)."""
    rng = random.Random(seed)
    rows: list[dict] = []
    seen = set(exclude)
    while len(rows) < count:
        row = make_problem(rng)
        if row["question"] in seen:
            continue
        if unique:
            seen.add(row["question"])
        rows.append(row)
    return rows


def with_guesses(problems: list[dict], fraction: float, seed: int) -> list[dict]:
    """The warm start's sloppy teacher: on `fraction` of the problems it skips the working and guesses a digit
    (" The answer is 4.", right one time in ten). A model imitating it has the skill but does not always use it,
    which is the situation RL with a verifiable reward exists for: the reward tells working (often right) from
    guessing (rarely right), and the policy learns to work every problem out."""
    rng = random.Random(seed)
    out = []
    for row in problems:
        if rng.random() < fraction:
            row = {**row, "solution": f" The answer is {rng.randint(0, 9)}."}
        out.append(row)
    return out


def write_jsonl(rows: list[dict], path: Path) -> None:
    """Written to a temporary name then renamed, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_lines(path, [json.dumps(r) for r in rows])


def write_shipped_files(root: Path) -> None:
    """The test questions are distinct and none of them is in the train file."""
    test = make_problems(TEST_ROWS, seed=TEST_SEED, unique=True)
    write_jsonl(make_problems(TRAIN_ROWS, seed=TRAIN_SEED, exclude={r["question"] for r in test}), root / "train.jsonl")
    write_jsonl(test, root / "test.jsonl")


if __name__ == "__main__":
    out = Path(__file__).resolve().parents[2] / "data" / "arith"
    write_shipped_files(out)
    print(f"wrote {out}/train.jsonl ({TRAIN_ROWS} rows) and {out}/test.jsonl ({TEST_ROWS} rows)")
