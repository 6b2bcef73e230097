"""Preference pairs over the demo's word problems (grpo.demo.task): the chosen completion is the right worked
answer; the rejected one is wrong in one of the ways the demo policy goes wrong: a bare guess of the answer
(" The answer is 4.", no working), or working whose last result is miscopied into the answer. For the RLHF
pipeline's tests (reward model, then RL on it) and for trying `grpo rm` on a CPU:

    python -m grpo.rm.arith_pairs OUT_DIR      # OUT_DIR/prefs-train.jsonl and OUT_DIR/prefs-test.jsonl
"""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path

from grpo.demo.task import PROMPT_TEMPLATE, TEST_SEED, TRAIN_SEED, make_problems, write_jsonl

WRONG_KINDS = ("guess", "miscopied")


def wrong_completion(row: dict, rng: random.Random) -> str:
    """A completion of `row` whose final answer is wrong (a different digit from the gold answer)."""
    answer = int(row["answer"])
    wrong = rng.choice([d for d in range(10) if d != answer])
    if rng.choice(WRONG_KINDS) == "guess":
        return f" The answer is {wrong}."
    # the working kept, its final answer replaced: the answer no longer follows from the working
    return re.sub(r"The answer is \d+\.$", f"The answer is {wrong}.", row["solution"])


def make_pairs(problems: list[dict], seed: int) -> list[dict]:
    """Rows {prompt, chosen, rejected, answer} from demo problems (grpo.demo.task.make_problems)."""
    rng = random.Random(seed)
    return [{"prompt": PROMPT_TEMPLATE.format(**row), "chosen": row["solution"],
             "rejected": wrong_completion(row, rng), "answer": row["answer"]} for row in problems]


def write_pair_files(out_dir: Path, train_rows: int = 2000, test_rows: int = 200) -> tuple[Path, Path]:
    """Held-out questions are distinct and none of them appears in the training file (the shipped demo split)."""
    test = make_problems(test_rows, seed=TEST_SEED, unique=True)
    train = make_problems(train_rows, seed=TRAIN_SEED, exclude={r["question"] for r in test})
    paths = (out_dir / "prefs-train.jsonl", out_dir / "prefs-test.jsonl")
    write_jsonl(make_pairs(train, seed=TRAIN_SEED), paths[0])
    write_jsonl(make_pairs(test, seed=TEST_SEED), paths[1])
    return paths


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    for path in write_pair_files(target):
        print(f"wrote {path}")
