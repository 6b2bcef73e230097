"""The tool demo's task: products of two 2-digit numbers ("What is 37 * 48?"). A 1M-parameter
character model cannot multiply 37 by 48 in its head; with the calculator environment (environments/calculator.py)
it only has to copy the numbers into a call and the result into its answer.

The warm start's teacher calls the calculator on `call_fraction` of the problems and guesses on the rest (a number
of about the right size, almost never right): the model imitating it can use the tool but seldom does, which the
reward tells apart and GRPO learns from. Regenerate the shipped files (data/tools/train.jsonl, test.jsonl):

    python -m grpo.demo.products
"""

from __future__ import annotations

import random
from pathlib import Path

from environments.calculator import CLOSE, OPEN, RESULT
from grpo.demo.task import write_jsonl

PROMPT_TEMPLATE = "Question: {question}\nAnswer:"  # the recipe's data.prompt_template; the warm start trains on it

TRAIN_SEED, TEST_SEED = 11, 12
TRAIN_ROWS, TEST_ROWS = 2000, 200


def make_problem(rng: random.Random) -> dict:
    """Operands from 32 to 99, so every product has four digits: the numbers the model copies (into its call, and
    from the calculator's output into its answer) then always stand at the same distance back, which a
    1M-parameter model learns to copy in a few hundred steps; copying from varying places (word problems, 3- or
    4-digit results) it had not learned after 2,000."""
    a, b = rng.randint(32, 99), rng.randint(32, 99)
    return {"question": f"What is {a} * {b}?", "answer": str(a * b), "a": a, "b": b}


def make_problems(count: int, seed: int, exclude: frozenset[str] | set[str] = frozenset(),
                  unique: bool = True) -> list[dict]:
    """`count` rows from `seed`, none in `exclude`; without repeats when `unique` (there are 4,624 products)."""
    rng = random.Random(seed)
    rows: list[dict] = []
    seen = set(exclude)
    while len(rows) < count:
        row = make_problem(rng)
        if row["question"] not in seen:
            if unique:
                seen.add(row["question"])
            rows.append(row)
    return rows


GUESSES = ("any", "hundreds")


def teacher_pieces(row: dict, calls: bool, rng: random.Random, guess: str = "any") -> list[tuple[str, bool]]:
    """The teacher's answer as (text, trained) pieces: with the calculator, the call (trained), its output (read,
    not trained) and the answer; without, a guess in the products' range: any number (guess="any"), or a round
    hundred ("hundreds": fewer digits to imitate, so the warm start's loss is less noise and more copying)."""
    if calls:
        return [(f" {OPEN}{row['a']}*{row['b']}{CLOSE}", True), (RESULT.format(row["a"] * row["b"]), False),
                (f" The answer is {row['answer']}.", True)]
    value = rng.randint(1024, 9801) if guess == "any" else rng.randint(11, 98) * 100
    return [(f" The answer is {value}.", True)]


def warm_start_pairs(count: int, seed: int, call_fraction: float,
                     guess: str = "any") -> list[tuple[str, list[tuple[str, bool]]]]:
    """The warm start's (prompt, pieces): never a held-out question."""
    rng = random.Random(seed + 1)
    held_out = {r["question"] for r in make_problems(TEST_ROWS, TEST_SEED)}
    return [(PROMPT_TEMPLATE.format(**row), teacher_pieces(row, rng.random() < call_fraction, rng, guess))
            for row in make_problems(count, seed, exclude=held_out, unique=False)]


def write_shipped_files(root: Path) -> None:
    """Test questions are distinct, and none of them is in the train file; the warm start's seed is apart."""
    test = make_problems(TEST_ROWS, TEST_SEED)
    train = make_problems(TRAIN_ROWS, TRAIN_SEED, exclude={r["question"] for r in test})
    keep = ("question", "answer")
    write_jsonl([{k: r[k] for k in keep} for r in train], root / "train.jsonl")
    write_jsonl([{k: r[k] for k in keep} for r in test], root / "test.jsonl")


if __name__ == "__main__":
    out = Path(__file__).resolve().parents[2] / "data" / "tools"
    write_shipped_files(out)
    print(f"wrote {out}/train.jsonl ({TRAIN_ROWS} rows) and {out}/test.jsonl ({TEST_ROWS} rows)")
