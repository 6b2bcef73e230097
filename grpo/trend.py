"""A series' own trend, and how far a new value sits from it: the one detector behind the divergence guard
(guard.divergence_*) and, later, the reward-hacking alarms. Pure Python, no torch.

The trend is the median of the last `window` values and its spread the median absolute deviation (MAD), both
robust to the spikes a noisy RL run has; a value's score is its distance from the median in units of that spread.
A spread of zero (a flat series) would make any change infinite, so it is floored by `floor_abs` and by
`floor_rel` of the median's size.
"""

from __future__ import annotations

import statistics
from collections import deque

MAD_TO_SIGMA = 1.4826  # the MAD of a normal distribution times this is its standard deviation


class Trend:
    def __init__(self, window: int = 20, warmup: int = 5, floor_abs: float = 1e-6, floor_rel: float = 0.0):
        self.values: deque[float] = deque(maxlen=window)
        self.warmup, self.floor_abs, self.floor_rel = warmup, floor_abs, floor_rel

    def score(self, value: float) -> float | None:
        """(value - median) / spread of the values seen so far; None until `warmup` values are in."""
        if len(self.values) < self.warmup:
            return None
        median = statistics.median(self.values)
        mad = statistics.median(abs(v - median) for v in self.values)
        spread = max(MAD_TO_SIGMA * mad, self.floor_rel * abs(median), self.floor_abs)
        return (value - median) / spread

    def add(self, value: float) -> None:
        self.values.append(value)

    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")
