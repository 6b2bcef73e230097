"""Evaluation metrics as pure functions: nothing here samples, grades or writes files.

Definitions (n samples drawn per problem, c of them graded correct):
- avg@n: mean over problems of c/n (the mean accuracy of a single sample; equals pass@1).
- pass@k: unbiased estimate of "at least one of k samples is correct", 1 - C(n-c, k)/C(n, k), averaged over
  problems (the Codex estimator). Computed as a product so it never forms huge binomials.
- maj@k: majority vote over the normalised answers of the first k samples; samples with no extracted answer
  do not vote. Ties go to the answer that appeared first (lowest sample index), so the result depends only on
  the samples and their order, never on hashing or dict order. The vote is correct when the first sample that
  gave the voted answer was graded correct. No answer at all counts as wrong.
- length_mean: mean completion length in tokens over every sample; truncation_rate: share of samples that hit
  max_new_tokens (finish_reason "length").
- Confidence intervals: percentile bootstrap over problems (problems resampled with replacement, samples kept
  together), seeded, so the same inputs and seed give the same interval.
- Aggregation: each problem weighs the same; "overall" pools the problems of every dataset (a micro average).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np


@dataclass
class ProblemResult:
    """Everything the metrics need about one problem's n samples (all lists have length n, in sample order)."""

    correct: list[bool]
    answers: list[str | None]  # normalised extracted answers; None where nothing could be extracted
    lengths: list[int] = field(default_factory=list)  # completion tokens per sample
    truncated: list[bool] = field(default_factory=list)  # hit max_new_tokens


# ---------------------------------------------------------------------------------------------------------------
# Per-problem values


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) is correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every draw of k must include a correct sample
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k/i): bounded factors, no overflow, no cancellation.
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def majority_vote(answers: list[str | None]) -> int | None:
    """Index of the first sample carrying the most frequent answer (ties: earliest first appearance);
    None when no sample has an answer."""
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, a in enumerate(answers):
        if a is None:
            continue
        counts[a] = counts.get(a, 0) + 1
        first.setdefault(a, i)
    if not counts:
        return None
    best = max(counts, key=lambda a: (counts[a], -first[a]))
    return first[best]


def maj_correct(result: ProblemResult, k: int) -> float:
    """1.0 if the majority answer of the first k samples was graded correct, else 0.0."""
    winner = majority_vote(result.answers[:k])
    return float(winner is not None and result.correct[winner])


_SPACES = re.compile(r"\s+")
_TEXT_WRAP = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")


def normalize_answer(answer: str | None) -> str | None:
    """A canonical string for voting: spacing, $...$, \\left/\\right, \\dfrac, trailing dots and plain-text
    wrappers do not split votes. Equivalence beyond that (0.5 vs 1/2) is the grader's job, not the vote's."""
    if answer is None:
        return None
    s = answer.strip().strip("$").strip()
    s = s.replace("\\left", "").replace("\\right", "").replace("\\!", "").replace("\\,", "").replace("\\ ", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _TEXT_WRAP.sub(r"\1", s)
    s = _SPACES.sub("", s).rstrip(".")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):  # 1,000 -> 1000
        s = s.replace(",", "")
    if re.fullmatch(r"-?\d+\.\d*", s):  # 12.0 and 12. -> 12; 0.50 -> 0.5
        s = s.rstrip("0").rstrip(".") or "0"
    return s or None


def report_ks(n: int) -> list[int]:
    """The k values shown in tables: powers of two below n, and n itself."""
    ks = [k for k in (2 ** i for i in range(n.bit_length())) if k < n]
    return ks + [n]


# ---------------------------------------------------------------------------------------------------------------
# Aggregation over problems


def per_problem_values(results: list[ProblemResult]) -> dict[str, np.ndarray]:
    """metric name -> one value per problem. Every problem must have the same number of samples n."""
    if not results:
        raise ValueError("no problems to score")
    n = len(results[0].correct)
    if n == 0 or any(len(r.correct) != n or len(r.answers) != n for r in results):
        raise ValueError("every problem needs the same number (>= 1) of samples, correct flags and answers")
    values: dict[str, np.ndarray] = {}
    counts = [sum(bool(x) for x in r.correct) for r in results]
    values[f"avg@{n}"] = np.array([c / n for c in counts])
    for k in range(1, n + 1):
        values[f"pass@{k}"] = np.array([pass_at_k(n, c, k) for c in counts])
    for k in report_ks(n):
        values[f"maj@{k}"] = np.array([maj_correct(r, k) for r in results])
    return values


def bootstrap_ci(values: dict[str, np.ndarray], resamples: int, seed: int,
                 level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap of the mean of each per-problem metric. The same resampled problem sets are used
    for every metric (one index matrix), so intervals of different metrics are comparable."""
    if resamples <= 0:
        return {}
    sizes = {len(v) for v in values.values()}
    if len(sizes) != 1:
        raise ValueError("every metric needs one value per problem")
    size = sizes.pop()
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, size, size=(resamples, size))  # [B, P]
    tail = (1.0 - level) / 2 * 100
    out = {}
    for name, v in values.items():
        means = v[picks].mean(axis=1)  # [B]
        lo, hi = np.percentile(means, [tail, 100 - tail])
        out[name] = (float(lo), float(hi))
    return out


def summarize(results: list[ProblemResult], resamples: int = 1000, seed: int = 0) -> dict:
    """{"problems", "samples_per_problem", "metrics": {name: mean}, "ci95": {name: [lo, hi]},
    "length_mean", "truncation_rate"} for one set of problems."""
    values = per_problem_values(results)
    lengths = [x for r in results for x in r.lengths]
    truncated = [x for r in results for x in r.truncated]
    ci = bootstrap_ci(values, resamples, seed)
    return {
        "problems": len(results),
        "samples_per_problem": len(results[0].correct),
        "metrics": {name: float(v.mean()) for name, v in values.items()},
        "ci95": {name: [lo, hi] for name, (lo, hi) in ci.items()},
        "length_mean": float(np.mean(lengths)) if lengths else 0.0,
        "truncation_rate": float(np.mean(truncated)) if truncated else 0.0,
    }


def aggregate(results: list[ProblemResult], keys: list[str], resamples: int = 1000, seed: int = 0) -> dict:
    """{"overall": summary, "by": {key: summary}}: one summary per distinct key (dataset name or a column's
    value), keys in first-seen order, plus the pooled summary over all problems."""
    if len(keys) != len(results):
        raise ValueError("one key per problem")
    groups: dict[str, list[ProblemResult]] = {}
    for key, r in zip(keys, results):
        groups.setdefault(key, []).append(r)
    return {"overall": summarize(results, resamples, seed),
            "by": {key: summarize(rs, resamples, seed) for key, rs in groups.items()}}
