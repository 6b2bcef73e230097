"""sampler.backend=hf_worker: the transformers sampler on a copy of the policy, in a process of its own, so that
generation can run while the trainer trains (train.max_staleness; grpo/train/inflight.py).

The trainer side is WorkerSampler. Requests go to the worker through a pipe and are served in order (FIFO), weight
pushes included, so a request sent after a push is always sampled by the pushed weights: that order is what bounds
staleness. Weights travel through shared-memory copies of the state dict (staging slots, one per step generated
ahead): push p fills slot p % slots once the worker has acknowledged the push that used it last, so neither side
ever reads a half-written tensor, and with k slots that acknowledgement is already in when the trainer needs it
(push t - k sits in the queue right behind the generation step t took).

Two threads own the pipe on this side: a reader that files every reply as it comes (the worker never blocks on a
full pipe, whatever the trainer is doing) and a writer that sends what the trainer queues (the trainer never blocks
on a worker busy generating). The trainer waits only in _await, which gives up when the worker has said nothing for
sampler.worker.timeout_s (progress, not total time: an eval queued behind k steps' generation is not a hang), and
notices a dead worker within a second. The worker dies with the trainer (PR_SET_PDEATHSIG), SIGKILL included."""

from __future__ import annotations

import copy
import multiprocessing
import os
import queue
import threading
import time
from typing import Any

import torch

from grpo.errors import UserError
from grpo.sampling.base import QueuedSampler, Reply, SamplerGone, SamplingSettings

POLL_S = 1.0  # how often a waiting trainer checks that the worker is alive


class SamplerWorkerGone(SamplerGone):
    """The generation worker died, hung, or failed."""


class WorkerSampler(QueuedSampler):
    backend = "hf_worker"

    def __init__(self, model: torch.nn.Module, tokenizer: Any, generation_batch_size: int, *, timeout_s: float,
                 threads: int = 0, cores: list[int] | None = None, first_version: int = 0, slots: int = 1):
        """Starts the worker on a copy of `model` (its weights as they are now). Weight pushes (sync_weights) are
        labelled first_version, first_version + 1, ...: the trainer's setup push is the resumed step's version,
        and the loop pushes once a step. slots: staging copies of the weights (train.max_staleness, at least 1)."""
        if next(model.parameters()).device.type != "cpu":
            raise UserError("sampler.backend=hf_worker runs the transformers sampler in a CPU process of its own; "
                            "on a GPU use sampler.backend=vllm (colocated) or hf.")
        self.timeout_s = timeout_s
        self._next_version = first_version
        self._pushes = 0
        self._sent = 0
        self._outstanding: set = set()  # requests sent and not yet taken
        self._replies: dict[tuple, Any] = {}
        self._failure: str | None = None  # what the worker reported before it stopped
        self._heard = threading.Condition()  # the reader files a reply (or a failure) under it
        self._last_heard = time.monotonic()
        self.idle_s = 0.0  # the worker's waiting time, added up since the caller last took it (take_idle)
        self.transfer_s = 0.0  # staging copies of the weights, since take_transfer_s
        with torch.no_grad():
            self._slots = [{k: v.detach().to("cpu", copy=True).share_memory_() for k, v in model.state_dict().items()}
                           for _ in range(max(1, slots))]
        self.bytes_per_push = sum(t.numel() * t.element_size() for t in self._slots[0].values())
        replica = copy.deepcopy(model).eval()
        for p in replica.parameters():
            p.requires_grad_(False)
        context = multiprocessing.get_context("spawn")  # never fork a process that holds torch's threads
        self._conn, child = context.Pipe(duplex=True)
        from grpo.sampling.worker_main import serve

        self._process = context.Process(target=serve, name="grpo-generation-worker", daemon=True,
                                        args=(child, replica, self._slots, tokenizer, generation_batch_size,
                                              threads, list(cores or []), os.getpid()))
        self._process.start()
        child.close()
        del replica  # the worker holds it now (its tensors went over in shared memory)
        self._outbox: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, name="grpo-worker-reader", daemon=True).start()
        threading.Thread(target=self._write, name="grpo-worker-writer", daemon=True).start()

    # ------------------------------------------------------------------------------------------ the Sampler protocol

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Push `model`'s weights as the next version, into the slot whose last push the worker has taken."""
        slot = self._pushes % len(self._slots)
        if self._pushes >= len(self._slots):
            self._await(("ack", self._pushes - len(self._slots)), "a weight push")
        started = time.monotonic()
        with torch.no_grad():
            for name, tensor in model.state_dict().items():
                self._slots[slot][name].copy_(tensor.detach())
        self.transfer_s += time.monotonic() - started
        self._send(("weights", self._pushes, self._next_version, slot))
        self._pushes += 1
        self._next_version += 1

    def sleep(self) -> None:
        """Nothing to free in this process: the worker holds the generation memory."""

    def wake(self) -> None:
        """See sleep()."""

    def close(self) -> None:
        """Ask the worker to leave; kill it when it is busy with requests nobody will take."""
        if self._process.is_alive() and not self._outstanding:
            self._outbox.put(("close",))
            self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout=5)
        self._outbox.put(None)  # the writer's end

    # ------------------------------------------------------------------------------------------ asynchronous use

    def submit(self, key: Any, prompt_ids: list[list[int]], settings: SamplingSettings) -> None:
        """Queue a request; its reply is kept under `key` until take(key)."""
        self._sent += 1
        self._outstanding.add(key)
        self._send(("generate", key, [list(ids) for ids in prompt_ids], settings))

    def take(self, key: Any) -> Reply:
        """The reply to the request sent under `key`, waiting while the worker keeps answering."""
        reply = self._await(("groups", key), "a generate request")
        self._outstanding.discard(key)
        return reply

    def take_idle(self) -> float:
        """The worker's waiting time since the last call (who waited for whom: the trainer's side is its own clock)."""
        with self._heard:
            idle, self.idle_s = self.idle_s, 0.0
        return idle

    def take_transfer_s(self) -> float:
        """Seconds spent copying weights into the staging slots since the last call (the worker's side reads them
        in shared memory: its copy is part of its generation time)."""
        spent, self.transfer_s = self.transfer_s, 0.0
        return spent

    @property
    def pid(self) -> int | None:
        return self._process.pid

    # ------------------------------------------------------------------------------------------ the pipe

    def _send(self, message: tuple) -> None:
        if self._failure is not None or not self._process.is_alive():
            self._gone(self._failure or "died")
        self._outbox.put(message)

    def _write(self) -> None:
        while (message := self._outbox.get()) is not None:
            try:
                self._conn.send(message)
            except (OSError, ValueError):  # the worker is gone: the next wait says so
                return

    def _read(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                return
            with self._heard:
                self._last_heard = time.monotonic()
                self._file(message)
                self._heard.notify_all()

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
            self._failure = f"failed:\n{message[1]}"

    def _await(self, want: tuple, what: str) -> Any:
        started = time.monotonic()  # silence before this wait (the worker idle while the trainer trained) is fine
        with self._heard:
            while want not in self._replies:
                if self._failure is not None:
                    break
                if not self._process.is_alive():
                    self._heard.wait(POLL_S)  # its last words (an error's traceback) may still be in the pipe
                    if want in self._replies or self._failure is not None:
                        continue
                    self._gone("died")
                if time.monotonic() - max(self._last_heard, started) > self.timeout_s:
                    self._process.kill()
                    self._gone(f"said nothing for sampler.worker.timeout_s = {self.timeout_s:g} s while the "
                               f"trainer waited for {what} (killed)")
                self._heard.wait(POLL_S)
            if self._failure is not None:
                self._process.kill()
                self._gone(self._failure)
            return self._replies.pop(want)

    def _gone(self, how: str) -> None:
        code = self._process.exitcode
        status = f", exit code {code}" if code is not None else ""
        raise SamplerWorkerGone(f"sampler.backend=hf_worker: the generation worker (pid {self._process.pid}{status}) "
                                f"{how}; the run stops.")
