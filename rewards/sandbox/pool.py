"""Bounded parallelism: at most max_parallel sandboxes at once. Each job is its own process tree with its own
limits, so a hostile job costs its neighbours at most a share of the CPU, never their results."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Pool:
    def __init__(self, max_parallel: int = 8):
        self.max_parallel = max(1, int(max_parallel))
        self._threads = ThreadPoolExecutor(max_workers=self.max_parallel, thread_name_prefix="sandbox")

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        return list(self._threads.map(fn, items))

    def close(self) -> None:
        self._threads.shutdown(wait=True)
