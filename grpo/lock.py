"""One run per output_dir. Two `grpo train` (or `grpo rm`) on one directory would each write every step (metrics
holding 1,1,2,2,...) and overwrite each other's checkpoints, so rank 0 holds an exclusive lock on
`output_dir/.lock` for the whole run.

The lock is an flock: the kernel releases it when the process dies however it dies (kill -9 included), so a
lock file left behind by a dead run is never mistaken for a live one. The file itself only says who holds it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from grpo.errors import UserError
from grpo.rundir import LOCK_FILE


class RunLock:
    def __init__(self, output_dir: Path, command: str = "grpo train"):
        self.path = Path(output_dir) / LOCK_FILE
        self.command = command  # named in the message another run gets
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # a file where the folder should be, a read-only file system, another user's folder
            raise UserError(f"output_dir {self.path.parent}: cannot write there ({exc.strerror}: {exc.filename}). "
                            f"Choose an output_dir this user can write (`grpo validate` checks it).") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise UserError(
                f"output_dir {self.path.parent} is in use by another {holder}. One run per "
                f"output_dir: two would write every step twice and overwrite each other's checkpoints. Wait for "
                f"it to finish, stop it, or choose another output_dir.") from None
        # Who holds it, for the message above: written in place (not renamed), since the lock is on this inode.
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"command": self.command, "pid": os.getpid(), "host": socket.gethostname(),
                                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "grpo run (pid unknown)"
    return (f"{info.get('command', 'grpo run')} (pid {info.get('pid')} on {info.get('host')}, started "
            f"{info.get('started')})")
