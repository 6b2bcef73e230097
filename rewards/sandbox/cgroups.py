"""Per-sandbox cgroup (v1) where the trainer may make them (root with a writable hierarchy): one memory cap for the
whole tree (tmpfs and page cache included), one pids cap, and one equal CPU share, so a program that forks 16
spinners gets one sandbox's share of the CPU, not 16. Optional: without it the rlimits still bind per process."""

from __future__ import annotations

import itertools
import os
import signal
import time

ROOT = "/sys/fs/cgroup"
CONTROLLERS = ("memory", "pids", "cpu")
_counter = itertools.count()


def _own_path(controller: str) -> str | None:
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, names, path = line.rstrip("\n").split(":", 2)
                if controller in names.split(","):
                    return os.path.join(ROOT, controller, path.lstrip("/"))
    except OSError:
        return None
    return None


def sweep_stale() -> None:
    """Remove (empty) cgroups left by a trainer that died mid-job: their name carries its pid."""
    for controller in CONTROLLERS:
        base = _own_path(controller)
        if base is None or not os.path.isdir(base):
            continue
        for name in os.listdir(base):
            parts = name.split("-")
            if not name.startswith("grpo-sbx-") or len(parts) != 4 or not parts[2].isdigit():
                continue
            try:
                os.kill(int(parts[2]), 0)
                continue  # its trainer is alive
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            try:
                _kill_members(os.path.join(base, name))
                os.rmdir(os.path.join(base, name))
            except OSError:
                pass


def available() -> bool:
    if os.geteuid() != 0:
        return False
    sweep_stale()
    try:
        group = Cgroup(memory_bytes=64 << 20, pids=8)
    except OSError:
        return False
    group.remove()
    return True


class Cgroup:
    def __init__(self, memory_bytes: int, pids: int):
        self.dirs: list[str] = []
        name = f"grpo-sbx-{os.getpid()}-{next(_counter)}"
        try:
            for controller in CONTROLLERS:
                base = _own_path(controller)
                if base is None or not os.path.isdir(base):
                    raise OSError(f"no cgroup v1 {controller} hierarchy")
                path = os.path.join(base, name)
                os.mkdir(path)
                self.dirs.append(path)
                if controller == "memory":
                    _write(path, "memory.limit_in_bytes", memory_bytes)
                    if os.path.exists(os.path.join(path, "memory.memsw.limit_in_bytes")):
                        _write(path, "memory.memsw.limit_in_bytes", memory_bytes)
                elif controller == "pids":
                    _write(path, "pids.max", pids)
        except OSError:
            self.remove()
            raise

    @property
    def procs_files(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in self.dirs]

    def remove(self) -> None:
        for path in reversed(self.dirs):
            for _ in range(200):
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError:  # tasks still exiting: finish them off, then retry
                    _kill_members(path)
                    time.sleep(0.005)
        self.dirs = []


def _write(path: str, name: str, value: int) -> None:
    with open(os.path.join(path, name), "w") as f:
        f.write(str(value))


def _kill_members(path: str) -> None:
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            pids = [int(p) for p in f.read().split()]
    except OSError:
        return
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
