"""The constitution a judge scores against: a YAML file of principles, each with its own instruction, scale and
weight. Read and checked here, with every problem named by file and key.

    name: helpful-honest              # optional: recorded with the run
    principles:
      - name: helpfulness              # letters, digits, _ - ; logged as reward/<reward>/helpfulness/mean
        instruction: Does the answer do what the question asks, completely and correctly?
        scale: [1, 10]                 # the judge's integer (or decimal) score, low = worst, high = best
        weight: 2                      # share of the aggregate (weights need not sum to 1)

A principle's score is mapped to [0, 1] ((s - low) / (high - low)); the reward is the weighted mean of those over
the principles, so it stays in [0, 1] whatever the scales.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from rewards.errors import UserError

NAME = re.compile(r"[A-Za-z0-9_\-]{1,48}")
PRINCIPLE_KEYS = ("name", "instruction", "scale", "weight")


@dataclass(frozen=True)
class Principle:
    name: str
    instruction: str
    low: float
    high: float
    weight: float

    def identity(self) -> str:
        """What a cached judgement of this principle depends on: its wording and scale (not its weight)."""
        return json.dumps([self.name, self.instruction, self.low, self.high])

    def normalized(self, score: float) -> float:
        return (score - self.low) / (self.high - self.low)


@dataclass(frozen=True)
class Constitution:
    name: str
    principles: tuple[Principle, ...]
    source: str  # the file it was read from

    def digest(self) -> str:
        """A short fingerprint of the principles, for the run's record."""
        text = json.dumps([[p.identity(), p.weight] for p in self.principles])
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def aggregate(self, scores: list[float]) -> float:
        """The weighted mean of the principles' [0, 1] scores (one per principle, in order)."""
        total = sum(p.weight for p in self.principles)
        return sum(p.weight * s for p, s in zip(self.principles, scores)) / total


def load_constitution(path: str, key: str = "args.constitution") -> Constitution:
    """The constitution in `path`; raises UserError naming the file and the key of every problem."""
    constitution, problems = read_constitution(path, key)
    if problems:
        raise UserError("; ".join(problems))
    assert constitution is not None
    return constitution


def read_constitution(path: str, key: str = "args.constitution") -> tuple[Constitution | None, list[str]]:
    """(the constitution, []) or (None, every problem found), for `grpo validate` and the reward alike."""
    import yaml

    file = Path(path).expanduser()
    if not path or not file.is_file():
        where = f" (relative paths start at {Path.cwd()})" if path and not file.is_absolute() else ""
        return None, [f"{key}: {path or '(empty)'} is not a file{where}; give a constitution YAML file with a "
                      f"'principles' list (see recipes/constitutions/)"]
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        said = " ".join(str(exc).split())[:300] or type(exc).__name__  # YAML's message names the line
        return None, [f"{file}: not readable as YAML ({said})"]
    if not isinstance(data, dict) or not isinstance(data.get("principles"), list) or not data["principles"]:
        return None, [f"{file}: needs a non-empty 'principles' list (each with name, instruction, scale, weight)"]
    unknown = [k for k in data if k not in ("name", "principles")]
    problems = [f"{file}: unknown key '{k}'; its keys are name, principles" for k in unknown]
    principles = []
    for i, item in enumerate(data["principles"]):
        principle, found = _principle(item, f"{file}: principles[{i}]")
        problems += found
        if principle is not None:
            principles.append(principle)
    names = [p.name for p in principles]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"{file}: principle '{name}' is named twice; names must differ (they name the metrics)")
    if principles and not problems and sum(p.weight for p in principles) <= 0:
        problems.append(f"{file}: the principles' weights sum to 0; give at least one a weight > 0")
    if problems:
        return None, problems
    return Constitution(str(data.get("name") or file.stem), tuple(principles), str(file)), []


def _principle(item: object, where: str) -> tuple[Principle | None, list[str]]:
    if not isinstance(item, dict):
        return None, [f"{where}: a principle is a mapping with name, instruction, scale, weight"]
    problems = [f"{where}.{k}: unknown key; a principle's keys are {', '.join(PRINCIPLE_KEYS)}"
                for k in item if k not in PRINCIPLE_KEYS]
    name, instruction = item.get("name"), item.get("instruction")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        problems.append(f"{where}.name: {name!r} is not a name (letters, digits, _ -, up to 48 characters); it "
                        f"names the metric reward/<reward>/<name>/mean")
    if not isinstance(instruction, str) or not instruction.strip():
        problems.append(f"{where}.instruction: required; say what the judge looks for under this principle")
    scale = item.get("scale", [1, 10])
    if not (isinstance(scale, list) and len(scale) == 2 and all(_is_number(v) for v in scale)
            and scale[0] < scale[1]):
        problems.append(f"{where}.scale: {scale!r} is not [low, high] with low < high (e.g. [1, 10])")
    weight = item.get("weight", 1.0)
    if not _is_number(weight) or weight < 0:
        problems.append(f"{where}.weight: {weight!r} must be a number >= 0")
    if problems:
        return None, problems
    return Principle(name, instruction.strip(), float(scale[0]), float(scale[1]), float(weight)), []


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
