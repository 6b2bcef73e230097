"""The process a user's reward plugin runs in: `python -m rewards.plugin_worker IN_FD OUT_FD MEMORY_MB`.

Why a process: a plugin is code the trainer cannot vouch for. In the trainer's process an os._exit ends the run
with no word, a segfault kills it, and a leak grows it; a thread (rewards/guard.py) can stop none of these. Here
they cost this worker only: the trainer (rewards/plugin_pool.py) sees it die, scores that batch 0, counts it as
an error and starts a fresh one.

The worker never imports torch (nothing here does; a plugin may). Before the plugin is imported it arms
die-with-parent (rewards/mathcheck/worker.py: PR_SET_PDEATHSIG, so a SIGKILLed trainer leaves no worker behind),
ignores SIGINT and SIGTERM (Ctrl-C and a scheduler's SIGTERM reach the whole process group; the trainer decides
when its workers end), and caps its address space at MEMORY_MB (RLIMIT_AS; 0: no cap), so a leak ends in a
MemoryError here, not in the trainer's memory.

Protocol, on two pipes (IN_FD, OUT_FD; the plugin keeps stdin/stdout/stderr, so its prints cannot corrupt it):
frames of an 8-byte big-endian length and a pickle of plain data (lists, dicts, str, numbers, None).
  trainer -> {"target": "module:function", "what": str, "label": str, "args": dict, "sys_path": [str]}
  worker  -> {"ok": True, "measures_correctness": bool, "shaping": bool, "learned": bool, "extract_answer": bool,
              "problems": [str], "module": str, "qualname": str}  or  {"ok": False, "error": str, "memory": bool}
then per request:
  ("call", prompts, completions, columns, max_abs) -> ("ok", output)       | ("error", text) | ("memory", text)
  ("extract", text)                               -> ("ok", str | None)    | ("error", text) | ("memory", text)
The output has passed rewards/output.py's checks (one finite float or None per completion, within max_abs; or the
mapping with named parts and counts), so a plugin's numpy array or tensor never crosses the pipe; "error" carries the
same text an in-process call would have printed. After a "memory" reply the worker exits: what leaked is gone with it.
"""

from __future__ import annotations

import os
import pickle
import select
import struct
import sys
import time

_HEADER = struct.Struct("!Q")


class PipeClosed(Exception):
    """The other side closed its end (or died)."""


class PipeTimeout(Exception):
    """No complete frame before the deadline."""


def encode(obj) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


def write_frame(fd: int, frame: bytes, deadline: float = float("inf")) -> None:
    """Write all of `frame` to `fd` (blocking or not), giving up at `deadline` (time.monotonic())."""
    view = memoryview(frame)
    while view:
        left = deadline - time.monotonic()
        if left <= 0:
            raise PipeTimeout()
        _, ready, _ = select.select([], [fd], [], min(left, 3600.0))
        if not ready:
            continue
        try:
            sent = os.write(fd, view)
        except BlockingIOError:
            continue
        except (BrokenPipeError, OSError) as exc:
            raise PipeClosed() from exc
        view = view[sent:]


class FrameReader:
    """Frames from one fd, with a deadline per frame; bytes past a frame are kept for the next."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buf = bytearray()

    def _fill(self, size: int, deadline: float) -> None:
        while len(self.buf) < size:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PipeTimeout()
            ready, _, _ = select.select([self.fd], [], [], min(left, 3600.0))
            if not ready:
                continue
            try:
                chunk = os.read(self.fd, max(size - len(self.buf), 1 << 16))
            except BlockingIOError:
                continue
            except OSError as exc:
                raise PipeClosed() from exc
            if not chunk:
                raise PipeClosed()
            self.buf += chunk

    def read(self, deadline: float = float("inf")):
        self._fill(_HEADER.size, deadline)
        (size,) = _HEADER.unpack_from(self.buf)
        self._fill(_HEADER.size + size, deadline)
        data = bytes(self.buf[_HEADER.size:_HEADER.size + size])
        del self.buf[:_HEADER.size + size]
        return pickle.loads(data)


def _cap_memory(memory_mb: int) -> None:
    import resource

    if memory_mb <= 0:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = memory_mb * 1024 * 1024
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


def _plain_answer(value):
    return value if value is None or isinstance(value, str) else None


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    in_fd, out_fd, memory_mb = int(args[0]), int(args[1]), int(args[2])

    import faulthandler
    import signal

    from rewards.mathcheck.worker import die_with_parent

    die_with_parent()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    faulthandler.enable()  # a segfault in the plugin prints where it happened (on the trainer's stderr)
    _cap_memory(memory_mb)

    reader = FrameReader(in_fd)

    def reply(obj) -> None:
        try:
            write_frame(out_fd, encode(obj))
        except PipeClosed:
            os._exit(0)  # the trainer is gone (or closed us)

    try:
        hello = reader.read()
    except PipeClosed:
        return
    parent_path = [p for p in hello["sys_path"] if isinstance(p, str)]
    sys.path[:] = parent_path + [p for p in sys.path if p not in parent_path]

    from rewards.errors import UserError
    from rewards.guard import call_with_limit
    from rewards.registry import _import_target, reward_signature_problems
    from rewards.output import checked
    from rewards.scoring import _describe

    label, call_args = hello["label"], hello.get("args") or {}
    try:
        fn = _import_target(hello["target"], hello["what"])
        problems = reward_signature_problems(fn, label, call_args)
        declared = {"measures_correctness": bool(getattr(fn, "measures_correctness", False)),
                    "shaping": bool(getattr(fn, "shaping", False)), "learned": bool(getattr(fn, "learned", False)),
                    "extract_answer": callable(getattr(fn, "extract_answer", None))}
        extract = getattr(fn, "extract_answer", None) if declared["extract_answer"] else None
    except UserError as exc:
        reply({"ok": False, "error": str(exc), "memory": False})
        return
    except BaseException as exc:  # noqa: BLE001 - a plugin that cannot even be imported is reported, not obeyed
        reply({"ok": False, "error": f"{hello['what']}: importing it failed: {_describe(exc)}",
               "memory": isinstance(exc, MemoryError)})
        return
    bound = fn
    if call_args:
        import functools

        bound = functools.partial(fn, **call_args)
    reply({"ok": True, **declared, "problems": problems, "module": str(getattr(fn, "__module__", "?")),
           "qualname": str(getattr(fn, "__qualname__", getattr(fn, "__name__", "?")))})

    while True:
        try:
            request = reader.read()
        except PipeClosed:
            return  # the trainer closed us (or died)
        try:
            if request[0] == "call":
                _, prompts, completions, columns, max_abs = request
                values = call_with_limit(bound, (prompts, completions), columns, None)
                answer = ("ok", checked(values, len(completions), max_abs).plain())
            elif request[0] == "extract":
                answer = ("ok", _plain_answer(call_with_limit(extract, (request[1],), {}, None)))
            else:
                answer = ("error", f"unknown request {request[0]!r}")
        except MemoryError as exc:
            answer = ("memory", _describe(exc))
        except BaseException as exc:  # noqa: BLE001 - the plugin's failure goes back as text; we stay up
            answer = ("error", _describe(exc))
        try:
            reply(answer)
        except MemoryError:  # the reply itself did not fit under the cap
            answer = ("memory", "MemoryError while sending the scores back")
            reply(answer)
        if answer[0] == "memory":
            os._exit(0)  # whatever leaked goes with this process; the trainer starts a fresh one


if __name__ == "__main__":
    main()
