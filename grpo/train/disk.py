"""Disk space: check before a checkpoint is written, say so plainly when a write runs out of room, and sweep
the temporary files a killed run left behind (they would otherwise hold space, and hide, forever)."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from grpo.errors import UserError
from grpo.io import TMP_MARK

FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
SLACK = 1.10  # tokenizer, config and safetensors headers besides the tensors, and room to spare


class DiskFull(UserError):
    """A write that found no room: where, how much it needed and how much was free."""


def mb(n: float) -> str:
    return f"{n / 2**20:.1f} MB"


def free_bytes(path: Path) -> int:
    path = Path(path)
    while not path.exists():  # the checkpoints folder may not exist yet: ask its file system
        path = path.parent
    return shutil.disk_usage(path).free


def check_free_space(where: Path, needed: int, what: str, resume_hint: str) -> None:
    free = free_bytes(where)
    if free < needed:
        raise DiskFull(f"{what}: needs about {mb(needed)} in {where}, only {mb(free)} free. Free some space (or "
                       f"set checkpoint.keep_last lower, or output_dir on a larger disk), then {resume_hint}")


def is_disk_full(exc: BaseException) -> bool:
    """torch.save reports a full disk as a RuntimeError from its zip writer ("unexpected pos", "file write
    failed"), and safetensors as its own SafetensorError wrapping the OS error's text ("StorageFull", "No space
    left on device"), not as an OSError; all mean the same here."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in FULL_ERRNOS:
            return True
        if isinstance(e, RuntimeError) and any(s in str(e) for s in ("unexpected pos", "file write failed")):
            return True
        if any(s in str(e) for s in ("No space left on device", "StorageFull", "Disk quota exceeded")):
            return True
    return False


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def sweep_stale_temps(*folders: Path) -> list[Path]:
    """Remove `name.tmp-<pid>` files and folders whose writer is no longer alive. Called by rank 0 while it holds
    the output_dir lock, so no live trainer is writing them; a live pid (say `grpo report` writing report.html
    beside the run) is left alone."""
    removed = []
    for folder in folders:
        if not Path(folder).is_dir():
            continue
        for path in Path(folder).iterdir():
            name, mark, pid = path.name.rpartition(TMP_MARK)
            if not mark or not name or not pid.isdigit() or (int(pid) != os.getpid() and _alive(int(pid))):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
