"""The demo task: small one- and two-step word problems with a worked line of arithmetic, generated from a
seed so every machine gets the same data. Answers are integers, checked by the math reward."""

from __future__ import annotations

import json
import random
from pathlib import Path

NAMES = ["Tom", "Ana", "Ben", "Mia", "Sam", "Lea", "Max", "Zoe", "Ian", "Eva"]
ITEMS = ["apple", "book", "coin", "card", "shell", "stamp", "egg", "pen"]
PROMPT_TEMPLATE = "Q: {question}\nA:"


def make_problem(rng: random.Random) -> dict:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    kind = rng.choice(["add", "sub", "mul", "add_sub"])
    if kind == "add":
        a, b = rng.randint(1, 12), rng.randint(1, 12)
        q = f"{name} has {a} {item}s and gets {b} more. How many now?"
        steps, answer = [f"{a} + {b} = {a + b}."], a + b
    elif kind == "sub":
        a = rng.randint(2, 20)
        b = rng.randint(1, a - 1)
        q = f"{name} has {a} {item}s and gives away {b}. How many left?"
        steps, answer = [f"{a} - {b} = {a - b}."], a - b
    elif kind == "mul":
        a, b = rng.randint(2, 6), rng.randint(2, 6)
        q = f"{name} has {a} bags of {b} {item}s. How many {item}s?"
        steps, answer = [f"{a} * {b} = {a * b}."], a * b
    else:
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        c = rng.randint(1, a + b - 1)
        q = f"{name} has {a} {item}s, gets {b}, gives away {c}. How many left?"
        steps, answer = [f"{a} + {b} = {a + b}.", f"{a + b} - {c} = {a + b - c}."], a + b - c
    return {"question": q, "answer": str(answer), "solution": " " + " ".join(steps) + f" The answer is {answer}."}


def make_problems(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [make_problem(rng) for _ in range(count)]


def write_jsonl(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


if __name__ == "__main__":  # regenerate the shipped files: python -m grpo.demo.task
    root = Path(__file__).resolve().parents[2] / "data" / "arith"
    write_jsonl(make_problems(2000, seed=1), root / "train.jsonl")
    write_jsonl(make_problems(200, seed=2), root / "test.jsonl")
    print(f"wrote {root}/train.jsonl (2000 rows) and test.jsonl (200 rows)")
