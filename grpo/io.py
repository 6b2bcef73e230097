"""Atomic writes: every file and directory grpo writes goes through here, so a reader (or a resume after a crash)
sees either the old version or the new one, never half of either.

The recipe: write to a temporary name in the same directory (a rename is only atomic within one file system),
fsync the data, rename over the target, then fsync the directory so the rename itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

TMP_MARK = ".tmp-"  # temporary names carry this and the writer's pid: `name.tmp-1234`


def temp_path(path: Path) -> Path:
    return path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")


def write_text(path: Path | str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: Path | str, data: bytes) -> None:
    path = Path(path)
    tmp = temp_path(path)
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk or a kill: leave no temp file beside the old version
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_with(path: Path | str, writer: Callable[[Path], None]) -> None:
    """For a file another library writes (writer(temp) writes the whole file): the same temp-then-rename."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        writer(tmp)
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_json(path: Path | str, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, default=str))


def write_lines(path: Path | str, lines: list[str]) -> None:
    write_text(path, "".join(line + "\n" for line in lines))


@contextlib.contextmanager
def atomic_dir(final: Path | str, replace: bool = False) -> Iterator[Path]:
    """Yields an empty temporary directory beside `final`; when the block ends without an error it becomes
    `final`. On an error the temporary directory is removed and `final` is untouched. replace=True lets a
    complete new copy take the place of an existing `final` (it is removed only once the new one is whole)."""
    final = Path(final)
    tmp = temp_path(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        _fsync_tree(tmp)
        if final.exists():
            if not replace and any(final.iterdir()):
                raise FileExistsError(f"{final} exists and is not empty")
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
