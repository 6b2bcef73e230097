"""The trainer's side of user reward plugins in worker processes (rewards/plugin_worker.py): one worker per
plugin reward, started at build time, killed and replaced when it dies, hangs or runs out of memory.

`PluginReward` is the callable a NamedReward holds for a plugin (its `fn`): `call(args, kwargs, deadline,
max_abs)` is what rewards/scoring.score uses; calling it like the plugin (`fn(prompts, completions, **cols)`)
works too, with no time limit. What it raises:
  PluginError  the plugin raised or returned junk: the text an in-process call would have given (the worker
               stays up, so scoring retries completion by completion as it always has);
  WorkerLost   the worker is gone: it exited (os._exit, sys.exit from a thread...), crashed (a signal), or ran
               past its memory cap; the message says which, and a fresh worker is already starting;
  RewardTimeout (rewards/guard.py) no reply within the time left: the worker was killed and replaced.

Workers are started from the long-lived spawner thread of rewards/mathcheck/worker.py with the parent's pid in
their environment (die_with_parent), so they die with the trainer however it ends, SIGKILL included; atexit and
`close()` end them on a normal exit. A forked child of the trainer does not share its parent's workers: it
starts its own on first use.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from typing import Any

from rewards.errors import UserError
from rewards.guard import Deadline, RewardTimeout
from rewards.mathcheck.worker import _PARENT_ENV, _SPAWNER
from rewards.plugin_worker import FrameReader, PipeClosed, PipeTimeout, encode, write_frame

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEMORY_ENV = "GRPO_REWARD_MEMORY_MB"
DEFAULT_MEMORY_MB = 2048
BOOT_S = 120.0  # a worker's start (python + the plugin's imports) on a busy machine; not the reward's time
_CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE}


class PluginError(Exception):
    """The plugin raised, or returned something that is not a score per completion (the message is the text)."""


class WorkerLost(Exception):
    """The plugin's worker is gone (exit, crash, memory cap); the message says what happened."""


def memory_cap_mb(value: Any = None) -> int:
    """A reward's memory cap in MB: its own (`value`, e.g. a spec's memory_mb), else $GRPO_REWARD_MEMORY_MB, else
    2048. 0: no cap."""
    if value is None:
        raw = os.environ.get(MEMORY_ENV, "").strip()
        if not raw:
            return DEFAULT_MEMORY_MB
        try:
            value = float(raw)
        except ValueError:
            raise UserError(f"{MEMORY_ENV}={raw!r}: expected a number of MB (0: no memory cap)") from None
    if value < 0:
        raise UserError(f"a reward's memory cap must be >= 0 MB (0: none), got {value}")
    return int(value)


class _Worker:
    """One worker process and its two pipes. `probe` is its first reply (what the plugin declares)."""

    def __init__(self, hello: dict, memory_mb: int):
        self.memory_mb = memory_mb
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        env = dict(os.environ)
        env["PYTHONPATH"] = _ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env[_PARENT_ENV] = str(os.getpid())
        try:
            self.p = _SPAWNER.popen([sys.executable, "-u", "-m", "rewards.plugin_worker", str(req_r), str(rep_w),
                                     str(memory_mb)], stdin=subprocess.DEVNULL, pass_fds=(req_r, rep_w), env=env,
                                    close_fds=True)
        finally:
            os.close(req_r)
            os.close(rep_w)
        self.wfd, self.rfd = req_w, rep_r
        os.set_blocking(self.wfd, False)
        os.set_blocking(self.rfd, False)
        self.reader = FrameReader(self.rfd)
        self.probe: dict | None = None
        self.hello = encode(hello)  # sent now as far as the pipe takes it, so the import starts at once
        try:
            self.hello = self.hello[os.write(self.wfd, self.hello):]
        except (BlockingIOError, BrokenPipeError, OSError):
            pass  # the rest goes in wait_probe (which also sees a dead worker)

    @property
    def pid(self) -> int:
        return self.p.pid

    def wait_probe(self, deadline: float) -> dict:
        """The worker's first reply; raises PipeClosed (it died) or PipeTimeout."""
        if self.probe is None:
            if self.hello:
                write_frame(self.wfd, self.hello, deadline)
                self.hello = b""
            self.probe = self.reader.read(deadline)
        return self.probe

    def ask(self, request: Any, deadline: float) -> Any:
        write_frame(self.wfd, request, deadline)
        return self.reader.read(deadline)

    def death(self) -> str:
        """What ended the worker, in words (after its pipe closed)."""
        try:
            code = self.p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            return "the reward's worker closed its pipe and was killed"
        if code < 0:
            sig = -code
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = f"signal {sig}"
            if sig in _CRASH_SIGNALS:
                why = "a crash in the reward or a library it calls"
            elif sig == signal.SIGABRT:
                why = "aborted in native code"
            elif sig == signal.SIGKILL:
                why = "killed from outside: the system's out-of-memory killer, or a user"
            else:
                why = "a signal it did not handle"
            if self.memory_mb and sig in _CRASH_SIGNALS | {signal.SIGABRT}:
                why += f", or an allocation refused by its memory cap of {self.memory_mb} MB"
            return f"the reward's worker was killed by {name} ({why})"
        return f"the reward's worker exited with code {code} (the reward ended its process: os._exit, or exit " \
               f"from a thread or native code)"

    def memory_text(self, detail: str) -> str:
        if self.memory_mb:
            return (f"the reward's worker was killed past its memory cap of {self.memory_mb} MB ({detail}; "
                    f"{MEMORY_ENV} sets the cap)")
        return f"the reward's worker ran out of memory ({detail})"

    def kill(self) -> None:
        try:
            self.p.kill()
        except OSError:
            pass
        try:
            self.p.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass  # stuck in the kernel: Popen's bookkeeping reaps it later
        self.close_fds()

    def close_fds(self) -> None:
        for fd in (self.wfd, self.rfd):
            try:
                os.close(fd)
            except OSError:
                pass
        self.wfd = self.rfd = -1

    def stop(self, wait_s: float = 1.0) -> None:
        """Closing its request pipe ends it (it reads EOF); killed if it has not left within wait_s."""
        try:
            os.close(self.wfd)
        except OSError:
            pass
        self.wfd = -1
        try:
            self.p.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            pass
        self.kill()


class PluginReward:
    """A user's reward function, living in a worker process; calls go to the worker, failures come back as
    exceptions of this module (never the trainer's death)."""

    def __init__(self, label: str, target: str, what: str, args: dict | None, memory_mb: int):
        self.label, self.target, self.what = label, target, what
        self.memory_mb = memory_mb
        path = [os.getcwd() if p == "" else p for p in sys.path]
        self.hello = {"target": target, "what": what, "label": label, "args": dict(args or {}), "sys_path": path}
        self.lock = threading.Lock()
        self.owner = os.getpid()
        self.closed = False
        self.boot_wait = 0.0  # seconds the last call waited for a (re)starting worker: not the reward's time
        self.__module__ = target.partition(":")[0]  # read by eval's summary (grader.function)
        self.__qualname__ = self.__name__ = target.partition(":")[2]
        self.worker: _Worker | None = _Worker(self.hello, memory_mb)
        self.measures_correctness = False
        self.shaping = self.learned = False  # what the plugin declares (fn.shaping, fn.learned), read by probe()
        self.has_extract_answer = False
        _LIVE.add(self)

    @property
    def pid(self) -> int | None:
        """The current worker's pid (None before one is started)."""
        return self.worker.pid if self.worker is not None else None

    # ---------------------------------------------------------------------------------------------- start
    def probe(self, timeout_s: float = BOOT_S) -> list[str]:
        """Wait for the worker to import the plugin; read what it declares. Returns its signature problems.
        Raises UserError when it cannot be imported (or its worker dies doing so)."""
        with self.lock:
            worker = self.worker
            try:
                probe = worker.wait_probe(time.monotonic() + timeout_s)
            except PipeClosed:
                text = worker.death()
                self._drop()
                raise UserError(f"{self.what}: {text} while importing it") from None
            except PipeTimeout:
                self._drop()
                raise UserError(f"{self.what}: its worker did not finish importing it in {timeout_s:g} s") from None
            if not probe["ok"]:
                self._drop()
                error = probe["error"]
                if probe.get("memory"):
                    error += f" ({worker.memory_text('while importing it')})"
                elif self.memory_mb and ("memory" in error.lower() or "map" in error.lower()):
                    error += (f" (its worker runs under a memory cap of {self.memory_mb} MB of address space; "
                              f"{MEMORY_ENV}=0 lifts it)")
                raise UserError(error)
            self.measures_correctness = probe["measures_correctness"]
            self.shaping, self.learned = bool(probe.get("shaping")), bool(probe.get("learned"))
            self.has_extract_answer = probe["extract_answer"]
            return list(probe["problems"])

    def _drop(self) -> None:
        if self.worker is not None:
            self.worker.kill()
        self.worker = None

    def _restart(self) -> None:
        self._drop()
        if not self.closed:
            self.worker = _Worker(self.hello, self.memory_mb)  # starts now, imports while the trainer goes on

    def _after_fork(self) -> None:
        """In a forked child the worker and its pipes are the parent's: leave them to it; start our own."""
        if os.getpid() != self.owner:
            self.owner, self.worker, self.lock = os.getpid(), None, threading.Lock()

    def _ready(self) -> _Worker:
        """A worker that has imported the plugin (waiting for a fresh one outside the reward's time)."""
        if self.closed:
            raise WorkerLost("the reward's worker was closed (close_rewards); no more calls")
        if self.worker is None:
            self.worker = _Worker(self.hello, self.memory_mb)
        worker = self.worker
        t0 = time.monotonic()
        try:
            probe = worker.wait_probe(t0 + BOOT_S)
        except PipeClosed:
            text = worker.death()
            self._restart()
            raise WorkerLost(f"{text} while restarting") from None
        except PipeTimeout:
            self._restart()
            raise WorkerLost(f"the reward's worker did not restart within {BOOT_S:g} s") from None
        finally:
            self.boot_wait = time.monotonic() - t0
        if not probe["ok"]:
            self._restart()
            raise WorkerLost(f"the reward's worker could not restart: {probe['error']}")
        return worker

    # ---------------------------------------------------------------------------------------------- calls
    def call(self, args: tuple, kwargs: dict, deadline: Deadline | None = None, max_abs: float = float("inf"),
             timeout_s: float | None = None):
        """The plugin's scores for one batch: checked values, one per completion. `deadline` bounds the wait
        (timeout_s, the reward's limit, only names it in the message)."""
        prompts, completions = args
        try:
            request = encode(("call", list(prompts), list(completions), kwargs, max_abs))
        except Exception as exc:  # noqa: BLE001 - a column that cannot be pickled fails this call, not the run
            raise PluginError(f"could not send the batch to the reward's worker: {type(exc).__name__}: {exc}") from None
        return self._ask(request, deadline, timeout_s)

    def extract(self, text: str, timeout_s: float | None = 30.0) -> str | None:
        """The plugin's extract_answer(text), run in the worker; None when it fails."""
        if not self.has_extract_answer:
            return None
        try:
            return self._ask(encode(("extract", text)), Deadline(timeout_s), timeout_s)
        except (PluginError, WorkerLost, RewardTimeout):
            return None

    def __call__(self, prompts, completions, **columns):
        return self.call((prompts, completions), columns)

    def _ask(self, request: bytes, deadline: Deadline | None, timeout_s: float | None = None):
        deadline = deadline or Deadline(None)
        self._after_fork()
        with self.lock:
            worker = self._ready()
            if deadline.limited:
                deadline.end += self.boot_wait  # a cold start is not the reward's time
            try:
                kind, value = worker.ask(request, deadline.end)
            except PipeTimeout:
                self._restart()
                after = f" after {timeout_s:g} s" if timeout_s else ""
                raise RewardTimeout(f"the reward's worker timed out{after} and was killed (a fresh one takes the "
                                    f"next call)") from None
            except PipeClosed:
                text = worker.death()
                self._restart()
                raise WorkerLost(text) from None
            except BaseException:
                self._restart()  # interrupted mid-call (a signal's exception): its reply would confuse the next
                raise
        if kind == "ok":
            return value
        if kind == "memory":
            text = worker.memory_text(value)
            with self.lock:
                if self.worker is worker:
                    self._restart()
            raise WorkerLost(text)
        if self.memory_mb and "memory" in value.lower():  # e.g. a library's own "out of memory" under the cap
            value += (f" (the reward's worker runs under a memory cap of {self.memory_mb} MB of address space; "
                      f"{MEMORY_ENV}=0 lifts it)")
        raise PluginError(value)

    def close(self) -> None:
        """End the worker (idempotent); later calls raise WorkerLost."""
        with self.lock:
            self.closed = True
            if self.worker is not None and os.getpid() == self.owner:
                self.worker.stop()
            self.worker = None
        _LIVE.discard(self)


class ExtractAnswer:
    """A plugin's declared extract_answer, called in its worker: str -> str | None (None on any failure)."""

    def __init__(self, reward: PluginReward, timeout_s: float | None):
        self.reward, self.timeout_s = reward, timeout_s

    def __call__(self, text: str) -> str | None:
        return self.reward.extract(text, self.timeout_s)


_LIVE: "weakref.WeakSet[PluginReward]" = weakref.WeakSet()


def start(label: str, target: str, what: str, args: dict | None, memory_mb: int) -> PluginReward:
    """Start a plugin's worker (it imports the plugin while the caller goes on; `probe()` waits for it)."""
    return PluginReward(label, target, what, args, memory_mb)


def close_all() -> None:
    for reward in list(_LIVE):
        try:
            reward.close()
        except Exception:  # noqa: BLE001 - at exit, best effort
            pass


atexit.register(close_all)
