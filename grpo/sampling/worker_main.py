"""The generation worker's side of sampler.backend=hf_worker (the trainer's side: grpo/sampling/worker.py).

One loop, one message at a time, in the order sent: a weight push is copied in before any request sent after it
is served, so every reply names the one version that sampled all of it."""

from __future__ import annotations

import os
import signal
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

import torch

from rewards.mathcheck.worker import die_with_parent


def serve(conn: Connection, model: torch.nn.Module, slots: list[dict[str, torch.Tensor]], tokenizer: Any,
          generation_batch_size: int, threads: int, cores: list[int], parent_pid: int) -> None:
    # A Ctrl-C in the terminal, or a scheduler's SIGTERM to the job, reaches the whole process group: the trainer
    # finishes its step and saves (it needs this process for that), then closes it. Only the trainer decides when
    # the worker ends, or its death (PR_SET_PDEATHSIG).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent(parent_pid)
    if cores:
        os.sched_setaffinity(0, cores)
    if threads:
        torch.set_num_threads(threads)
    from grpo.sampling.hf import HFSampler

    sampler = HFSampler(model, tokenizer, generation_batch_size)
    weights = model.state_dict()
    version = -1  # no push yet: the trainer pushes before its first request
    waiting_since = time.monotonic()
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the trainer is gone
            return
        idle_s = time.monotonic() - waiting_since
        kind = message[0]
        if kind == "close":
            return
        try:
            if kind == "weights":
                _, push, version, slot = message
                with torch.no_grad():
                    for name, tensor in weights.items():
                        tensor.copy_(slots[slot][name])
                conn.send(("ack", push, idle_s))
            elif kind == "generate":
                _, key, prompt_ids, settings = message
                started = time.monotonic()
                groups = sampler.generate(prompt_ids, settings)
                conn.send(("groups", key, version, groups, time.monotonic() - started, idle_s))
        except Exception:  # noqa: BLE001 - the trainer reports it and stops; this process has nothing left to do
            conn.send(("error", traceback.format_exc(limit=8)))
            return
        waiting_since = time.monotonic()

