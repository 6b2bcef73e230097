"""samples.partial.jsonl: every problem's record appended as soon as it is graded, so a crash, a kill or Ctrl-C
mid-eval keeps what was done. samples.jsonl and summary.json are written (atomically) only once every problem is
graded; then this file goes. A previous complete eval in the same folder stays whole until the new one is.

Only the main rank writes it (rank 0 writes every file); under torchrun the other ranks' shares are gathered at
the end, as before."""

from __future__ import annotations

import json
import sys
from pathlib import Path

PARTIAL_FILE = "samples.partial.jsonl"


class PartialSamples:
    def __init__(self, out: Path, total: int):
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / PARTIAL_FILE
        self.total = total
        self.count = 0
        self.file = self.path.open("w", encoding="utf-8")  # a stale one from an earlier stopped eval is replaced

    def add(self, records: list[dict]) -> None:
        for record in records:
            self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.file.flush()  # in the OS's hands: a crash or kill of this process cannot lose it
            self.count += 1

    def stopped(self) -> None:
        """The eval ended early: keep the file and say where it is."""
        self.file.close()
        print(f"eval stopped after {self.count} of {self.total} problems; their samples are in {self.path} "
              f"(samples.jsonl and summary.json are written only when every problem is graded: rerun to get "
              f"them)", file=sys.stderr, flush=True)

    def done(self) -> None:
        """samples.jsonl and the summary are written: this copy is no longer needed."""
        self.file.close()
        self.path.unlink(missing_ok=True)
