"""How the host starts the far side: the base interpreter, isolated mode, no site packages, no environment."""

from __future__ import annotations

import functools
import json
import marshal
import os
import sys
from pathlib import Path

INSIDE = Path(__file__).with_name("_inside.py")
WIRE = Path(__file__).with_name("wire.py")  # encode/decode, shared with the trainer's judge: put in front


@functools.lru_cache(maxsize=1)
def source() -> str:
    """The far side's whole program: wire.py's plain-data codec, then _inside.py, which uses it."""
    return WIRE.read_text() + "\n\n" + INSIDE.read_text()


def interpreter() -> str:
    # The base interpreter, not the venv: the sandbox sees the standard library, never the trainer's packages.
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


# The far side arrives compiled, ahead of the job on stdin: compiling its 50 kB of source cost every sandbox about
# 15-25 ms of CPU, loading the marshalled code under 1 ms. The interpreter is this one's base (same version, so the
# same marshal format); the tag check turns any other into a clear failure instead of a crash.
BOOTSTRAP = ("import marshal, sys\n"
             "r = sys.stdin.buffer\n"
             "tag, size = r.readline().split()\n"
             "if tag.decode() != sys.implementation.cache_tag:\n"
             "    print('{\"fatal\": \"the sandbox interpreter is not the trainer\\'s version\"}', flush=True)\n"
             "    sys.exit(3)\n"
             "exec(marshal.loads(r.read(int(size))))\n")


@functools.lru_cache(maxsize=1)
def _compiled() -> bytes:
    code = marshal.dumps(compile(source(), "sandbox", "exec", dont_inherit=True, optimize=0))
    return f"{sys.implementation.cache_tag} {len(code)}\n".encode() + code


def launch_command() -> list[str]:
    return [interpreter(), "-I", "-S", "-B", "-X", "utf8", "-c", BOOTSTRAP]


def launch_input(job: dict) -> bytes:
    """What the far side reads on stdin: its own compiled code, then the job."""
    return _compiled() + json.dumps(job).encode()


def launch_env() -> dict:
    return {}  # nothing of the trainer's environment (tokens, keys, paths) crosses over


@functools.lru_cache(maxsize=1)
def bind_paths() -> list[str]:
    """Host paths shown read-only inside: system libraries and the Python standard library, nothing else."""
    wanted = ["/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc/ld.so.cache",
              sys.base_prefix, os.path.dirname(os.path.dirname(interpreter()))]
    out: list[str] = []
    for p in wanted:
        p = os.path.abspath(p)
        if not os.path.lexists(p) or p == "/":
            continue
        if any(p == q or p.startswith(q + "/") for q in out if not os.path.islink(q)):
            continue
        out = [q for q in out if not q.startswith(p + "/")]
        out.append(p)
    return out
