"""sampler.backend=hf_worker: the transformers sampler on a copy of the policy, in a process of its own, so that
generation can run while the trainer trains (train.max_staleness; grpo/train/inflight.py).

The trainer side is WorkerSampler. Requests go to the worker through a pipe and are served in order (FIFO), weight
pushes included, so a request sent after a push is always sampled by the pushed weights: that order is what bounds
staleness. Weights travel through one shared-memory copy of the state dict (the staging buffer): the trainer writes
it only after the worker has acknowledged the previous push (copied it into its own model), so neither side ever
reads a half-written tensor. Every wait has a deadline (sampler.worker.timeout_s) and notices a dead worker within a
second; the worker dies with the trainer (PR_SET_PDEATHSIG), SIGKILL included."""

from __future__ import annotations

import copy
import multiprocessing
import os
import time
from dataclasses import dataclass
from typing import Any

import torch

from grpo.errors import UserError
from grpo.sampling.base import Group, SamplingSettings


class SamplerWorkerGone(UserError):
    """The generation worker died, hung, or failed: the run stops (grpo train's exit names the checkpoint)."""


@dataclass
class Reply:
    """One served request: the groups, the policy version that sampled them (every group of a request comes from
    one version: no partial rollouts), and the worker's own clock."""

    groups: list[Group]
    version: int
    generate_s: float  # the worker's time generating this request
    idle_s: float  # the worker's time waiting for work before it (waiting on the trainer)


class WorkerSampler:
    backend = "hf_worker"

    def __init__(self, model: torch.nn.Module, tokenizer: Any, generation_batch_size: int, *, timeout_s: float,
                 threads: int = 0, cores: list[int] | None = None, first_version: int = 0):
        """Starts the worker on a copy of `model` (its weights as they are now). Weight pushes (sync_weights) are
        labelled first_version, first_version + 1, ...: the trainer's setup push is the resumed step's version,
        and the loop pushes once a step."""
        if next(model.parameters()).device.type != "cpu":
            raise UserError("sampler.backend=hf_worker runs the transformers sampler in a CPU process of its own; "
                            "on a GPU use sampler.backend=vllm (colocated) or hf.")
        self.timeout_s = timeout_s
        self._next_version = first_version
        self._replies: dict[Any, Any] = {}
        self._sent = 0
        self._pushes = 0  # the staging buffer is free once the worker has acknowledged every push
        self.bytes_per_push = 0
        self.idle_s = 0.0  # the worker's waiting time, added up since the caller last took it (take_idle)
        with torch.no_grad():
            self._staging = {k: v.detach().to("cpu", copy=True).share_memory_() for k, v in model.state_dict().items()}
        self.bytes_per_push = sum(t.numel() * t.element_size() for t in self._staging.values())
        replica = copy.deepcopy(model).eval()
        for p in replica.parameters():
            p.requires_grad_(False)
        context = multiprocessing.get_context("spawn")  # never fork a process that holds torch's threads
        self._conn, child = context.Pipe(duplex=True)
        from grpo.sampling.worker_main import serve

        self._process = context.Process(target=serve, name="grpo-generation-worker", daemon=True,
                                        args=(child, replica, self._staging, tokenizer, generation_batch_size,
                                              threads, list(cores or []), os.getpid()))
        self._process.start()
        child.close()
        del replica  # the worker holds it now (its tensors went over in shared memory)

    # ------------------------------------------------------------------------------------------ the Sampler protocol

    def generate(self, prompt_ids: list[list[int]], settings: SamplingSettings,
                 rows: list[dict] | None = None) -> list[Group]:
        """Synchronous: served after everything already requested (an eval during an async run waits its turn)."""
        key = ("generate", self._sent)
        self.submit(key, prompt_ids, settings)
        return self.take(key).groups

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Push `model`'s weights as the next version. Waits (with the deadline) only for the worker to have taken
        the previous push, which it does before serving any later request."""
        self._await(("ack", self._pushes - 1), "a weight push") if self._pushes else None
        with torch.no_grad():
            for name, tensor in model.state_dict().items():
                self._staging[name].copy_(tensor.detach())
        self._send(("weights", self._pushes, self._next_version))
        self._pushes += 1
        self._next_version += 1

    def sleep(self) -> None:
        """Nothing to free in this process: the worker holds the generation memory."""

    def wake(self) -> None:
        """See sleep()."""

    def close(self) -> None:
        if self._process.is_alive():
            try:
                self._conn.send(("close",))
            except (OSError, ValueError):
                pass
            self._process.join(timeout=5)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(timeout=5)
        self._conn.close()

    # ------------------------------------------------------------------------------------------ asynchronous use

    def submit(self, key: Any, prompt_ids: list[list[int]], settings: SamplingSettings) -> None:
        """Queue a request; its reply is kept under `key` until take(key)."""
        self._sent += 1
        self._send(("generate", key, [list(ids) for ids in prompt_ids], settings))

    def take(self, key: Any) -> Reply:
        """The reply to the request sent under `key`, waiting for it up to timeout_s."""
        return self._await(("groups", key), "a generate request")

    def take_idle(self) -> float:
        """The worker's waiting time since the last call (who waited for whom: the trainer's side is its own clock)."""
        idle, self.idle_s = self.idle_s, 0.0
        return idle

    @property
    def pid(self) -> int | None:
        return self._process.pid

    # ------------------------------------------------------------------------------------------ the pipe

    def _send(self, message: tuple) -> None:
        if not self._process.is_alive():
            self._gone("died before a request could be sent")
        try:
            self._conn.send(message)
        except (OSError, ValueError) as exc:
            self._gone(f"could not be reached ({exc})")

    def _await(self, want: tuple, what: str) -> Any:
        deadline = time.monotonic() + self.timeout_s
        while want not in self._replies:
            left = deadline - time.monotonic()
            if left <= 0:
                self._process.kill()
                self._gone(f"did not answer {what} within sampler.worker.timeout_s = {self.timeout_s:g} s (killed)")
            try:
                ready = self._conn.poll(min(left, 1.0))
                message = self._conn.recv() if ready else None
            except (EOFError, OSError):
                message, ready = None, False
            if message is not None:
                self._file(message)
            elif not self._process.is_alive():
                self._gone("died")
        return self._replies.pop(want)

    def _file(self, message: tuple) -> None:
        kind = message[0]
        if kind == "groups":
            _, key, version, groups, generate_s, idle_s = message
            self.idle_s += idle_s
            self._replies[("groups", key)] = Reply(groups, version, generate_s, idle_s)
        elif kind == "ack":
            _, push, idle_s = message
            self.idle_s += idle_s
            self._replies[("ack", push)] = True
        elif kind == "error":
            self._process.kill()
            self._gone(f"failed: {message[1]}")

    def _gone(self, how: str) -> None:
        code = self._process.exitcode
        status = f", exit code {code}" if code is not None else ""
        raise SamplerWorkerGone(f"sampler.backend=hf_worker: the generation worker (pid {self._process.pid}{status}) "
                                f"{how}; the run stops.")
