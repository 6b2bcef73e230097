"""How the host starts the far side: the base interpreter, isolated mode, no site packages, no environment."""

from __future__ import annotations

import functools
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


def launch_command() -> list[str]:
    return [interpreter(), "-I", "-S", "-B", "-X", "utf8", "-c", source()]


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
