"""The console view of a run: a progress bar with the live figures a user watches."""

from __future__ import annotations

import sys

from tqdm import tqdm

SHOWN = [("reward/mean", "reward", "{:.3f}"), ("accuracy", "acc", "{:.2f}"), ("completion/length_mean", "len", "{:.0f}"),
         ("kl", "kl", "{:.4f}"), ("clip_fraction", "clip", "{:.3f}"), ("time/step_s", "s/step", "{:.1f}")]


class Progress:
    def __init__(self, total: int, start: int, enabled: bool = True):
        self.enabled = enabled
        # A terminal gets a live bar; a log file (CI, nohup) gets one plain line per step instead.
        self.bar = tqdm(total=total, initial=start, desc="grpo", dynamic_ncols=True) if enabled and sys.stderr.isatty() else None

    def update(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        shown = {label: fmt.format(metrics[key]) for key, label, fmt in SHOWN if key in metrics}
        line = f"step {step:>5}  " + "  ".join(f"{k} {v}" for k, v in shown.items())
        if self.bar is not None:  # the step's line stays above the live bar, so the history is not overwritten
            self.bar.write(line)
            self.bar.set_postfix(shown, refresh=False)
            self.bar.update(1)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
