"""Every random stream in a run derives from the recipe's seed through this one function, so no two streams share
numbers and a given stream gets the same numbers in every run.

    derive_seed(seed, index)                  step `index` (training), or an eval chunk's first problem, or an epoch
    derive_seed(seed, index, rank=r)          rank r's draws of that step (rank 0 and a single process: unchanged)
    derive_seed(seed, rank=r)                 rank r's vLLM engine
    derive_seed(step_seed, round=k)           the k-th dynamic-sampling round of a step
"""

from __future__ import annotations

INDEX_STRIDE = 1_000_003  # seed * this + index: distinct for any realistic count of steps, epochs or problems
RANK_STRIDE = 7_919_111  # apart enough that ranks never meet another rank's indices
ROUND_STRIDE = 7_919  # a step's resampling rounds


def derive_seed(seed: int, index: int | None = None, *, rank: int = 0, round: int = 0) -> int:
    base = seed if index is None else seed * INDEX_STRIDE + index
    return base + rank * RANK_STRIDE + round * ROUND_STRIDE
