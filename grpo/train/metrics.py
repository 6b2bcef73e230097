"""Where a run's figures go: metrics.jsonl every step (always), samples.jsonl, TensorBoard / W&B when asked."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from grpo.errors import UserError
from grpo.io import write_lines


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
        """On resume, drop lines of steps after the checkpoint: they will be written again, exactly."""
        for path in (self.metrics_path, self.samples_path):
            if not path.is_file():
                continue
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= step]
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
    # One write per line, flushed: a crash loses at most the line being written, never earlier ones.
    with path.open("a") as f:
        f.write(json.dumps(record, default=float) + "\n")
        f.flush()


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
