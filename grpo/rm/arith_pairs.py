"""Preference pairs over the demo's word problems (grpo.demo.task): the chosen completion is the right worked
answer; the rejected one is wrong in one of the ways a policy goes wrong, each a quarter of the pairs:

- guess: a bare guess of the answer (" The answer is 4.", no working);
- miscopied: the working right, its last result miscopied into the answer;
- miscalculated: one step's result wrong and carried on, so the answer follows from wrong working;
- other problem: right working of another problem (its numbers not the question's) and its answer.

Only the first two can be told apart without doing the arithmetic and reading the question. A reward model that
has not seen the last two rewards any working that looks like working: RL against it raises its score while the
answers get worse (measured on pairs of the first two kinds only: over 58 steps of
recipes/tiny-reward-model.yaml, first vs last 20 steps, its score -1.68 -> +1.32 while the math checker's accuracy
went 0.42 -> 0.31, the policy writing wrong working such as " 8 - 5 = 5. 5 + 3 = 9."): the reward hacking a
reward model invites. For the RLHF pipeline's tests (reward model, then RL on it) and for
trying `grpo rm` on a CPU:

    python -m grpo.rm.arith_pairs OUT_DIR      # OUT_DIR/prefs-train.jsonl and OUT_DIR/prefs-test.jsonl
"""

from __future__ import annotations

import operator
import random
import re
import sys
from pathlib import Path

from grpo.demo.task import PROMPT_TEMPLATE, TEST_SEED, TRAIN_SEED, make_problems, write_jsonl

WRONG_KINDS = ("guess", "miscopied", "miscalculated", "other problem")
STEP = re.compile(r"(\d+) ([-+*]) (\d+) = (-?\d+)\.")
OPERATIONS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def wrong_completion(row: dict, others: list[dict], rng: random.Random) -> str:
    """A completion of `row` whose final answer is wrong (never the gold answer), of a kind drawn from
    WRONG_KINDS; `others` are problems to borrow working from."""
    answer = int(row["answer"])
    kind = rng.choice(WRONG_KINDS)
    if kind == "guess":
        return f" The answer is {rng.choice([d for d in range(10) if d != answer])}."
    if kind == "miscopied":  # the working kept, its final answer replaced
        wrong = rng.choice([d for d in range(10) if d != answer])
        return re.sub(r"The answer is \d+\.$", f"The answer is {wrong}.", row["solution"])
    if kind == "miscalculated":
        return miscalculated(row["solution"], rng)
    other = rng.choice([o for o in others if o["answer"] != row["answer"]])
    return other["solution"]


def miscalculated(solution: str, rng: random.Random) -> str:
    """`solution` with one step's result wrong; the steps after it compute right from the wrong value, and the
    answer is their last result. The wrong step's operation is + or - or *, each one-to-one in its first operand
    for the step that follows (+ and -), so the final answer cannot come back to the right one."""
    steps = [list(m.groups()) for m in STEP.finditer(solution)]
    i = rng.randrange(len(steps))
    right = int(steps[i][3])
    steps[i][3] = str(rng.choice([d for d in range(10) if d != right]))
    for j in range(i + 1, len(steps)):
        steps[j][0] = steps[j - 1][3]
        steps[j][3] = str(OPERATIONS[steps[j][1]](int(steps[j][0]), int(steps[j][2])))
    return " " + " ".join(f"{a} {op} {b} = {c}." for a, op, b, c in steps) + f" The answer is {steps[-1][3]}."


def make_pairs(problems: list[dict], seed: int) -> list[dict]:
    """Rows {prompt, chosen, rejected, answer} from demo problems (grpo.demo.task.make_problems)."""
    rng = random.Random(seed)
    return [{"prompt": PROMPT_TEMPLATE.format(**row), "chosen": row["solution"],
             "rejected": wrong_completion(row, problems, rng), "answer": row["answer"]} for row in problems]


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
