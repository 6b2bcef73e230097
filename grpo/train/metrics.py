"""Where a run's figures go: metrics.jsonl every step (always), samples.jsonl, TensorBoard / W&B when asked."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from grpo.errors import UserError
from grpo.io import write_lines
from grpo.train.disk import DiskFull, is_disk_full


class MetricsLog:
    def __init__(self, output_dir: Path, run_name: str, tensorboard: bool | str = False, wandb: bool = False,
                 wandb_project: str = "grpo", config: dict | None = None):
        self.metrics_path = output_dir / "metrics.jsonl"
        self.samples_path = output_dir / "samples.jsonl"
        self._tb = None
        self._wandb = None
        if tensorboard == "auto":  # on by default where it is installed; an explicit true without it is an error
            tensorboard = importlib.util.find_spec("tensorboard") is not None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise UserError("logging.tensorboard is true but tensorboard is not installed: "
                                "`pip install tensorboard`, or set logging.tensorboard=false.") from exc
            self._tb = SummaryWriter(str(output_dir / "tensorboard"))
        if wandb:
            try:
                import wandb as wandb_module
            except ImportError as exc:
                raise UserError("logging.wandb is true but wandb is not installed: `pip install wandb`, "
                                "or set logging.wandb=false.") from exc
            self._wandb = wandb_module.init(project=wandb_project, name=run_name, config=config)

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines of steps after the checkpoint: they will be written again, exactly. A torn line
        (a crash or a full disk in the middle of an append) is dropped with a note, never fatal."""
        for path in (self.metrics_path, self.samples_path):
            if not path.is_file():
                continue
            kept, torn = [], []
            for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    torn.append(lineno)
                    continue
                if isinstance(record, dict) and record.get("step", 0) <= step:
                    kept.append(line)
            if torn:
                print(f"note: {path.name}: dropped {len(torn)} unreadable line(s) (line {', '.join(map(str, torn[:5]))}"
                      f"), left by a run that stopped while writing", file=sys.stderr)
            write_lines(path, kept)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        _append(self.metrics_path, {"step": step, **metrics})
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            _append(self.samples_path, {"step": step, **row})

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _append(path: Path, record: dict[str, Any]) -> None:
    # One unbuffered write per line: a crash loses at most the line being written, never earlier ones.
    data = (json.dumps(record, default=float) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            written = os.write(fd, data)
            if written != len(data):  # a short write: the disk filled in the middle of the line
                raise OSError(28, "No space left on device (short write)")
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            os.ftruncate(fd, size)  # no torn line left behind: the file ends at the last whole record
            raise DiskFull(f"{path}: the disk is full (writing step {record.get('step')}). Free some space, then "
                           f"rerun the same command: it resumes from the last checkpoint.") from exc
    finally:
        os.close(fd)


class SilentLog:
    """The log of a rank other than 0: only rank 0 writes files."""

    def truncate_after(self, step: int) -> None:
        pass

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        pass

    def samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        pass

    def close(self) -> None:
        pass
