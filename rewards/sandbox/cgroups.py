"""Per-sandbox cgroup where the trainer may make them: one memory cap for the whole tree (tmpfs and page cache
included) and one pids cap. Two ways to get one, tried in this order:

  v1  root with writable v1 memory/pids/cpu hierarchies (also an equal CPU share per sandbox);
  v2  a cgroup v2 subtree delegated to this user: our own cgroup, or an ancestor we may write, whose
      cgroup.subtree_control enables memory and pids (what systemd's Delegate=yes, or an administrator's
      `chown`, hands an unprivileged user). Each sandbox gets a child there with memory.max and pids.max.

Optional: without either the keeper's RSS watchdog caps the tree and the rlimits still bind per process."""

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


def available() -> str | None:
    """"v1" or "v2" where a sandbox cgroup can be made here (one is made and removed to be sure), else None."""
    if os.geteuid() == 0:
        sweep_stale()
        try:
            Cgroup(memory_bytes=64 << 20, pids=8).remove()
            return "v1"
        except OSError:
            pass
    parent = delegated_parent()
    if parent is None:
        return None
    sweep_stale_v2(parent)
    try:
        CgroupV2(parent, memory_bytes=64 << 20, pids=8).remove()
    except OSError:
        return None
    return "v2"


def make(kind: str, memory_bytes: int, pids: int) -> "Cgroup | CgroupV2":
    if kind == "v2":
        parent = delegated_parent()
        if parent is None:
            raise OSError("the delegated cgroup v2 subtree is gone")
        return CgroupV2(parent, memory_bytes, pids)
    return Cgroup(memory_bytes, pids)


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


def _write(path: str, name: str, value: int | str) -> None:
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


# ---------------------------------------------------------------- cgroup v2, delegated

def _v2_mount() -> str | None:
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return left.split()[4]
    except OSError:
        return None
    return None


def _v2_own_dir(mount: str) -> str | None:
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return os.path.join(mount, line[3:].strip().lstrip("/"))
    except OSError:
        return None
    return None


def _words(path: str) -> set[str]:
    try:
        with open(path) as f:
            return set(f.read().split())
    except OSError:
        return set()


def delegated_parent() -> str | None:
    """The nearest cgroup v2 directory, from our own up, where we may create children that get memory and pids
    controllers: we can write the directory and its cgroup.procs (moving a process needs write access to the common
    ancestor's), and its subtree_control enables both (in a directory of our own we try to enable them where they
    are only available: that fails, harmlessly, where it holds processes). None where cgroup v2 is absent or nothing
    is ours."""
    mount = _v2_mount()
    own = _v2_own_dir(mount) if mount else None
    if own is None:
        return None
    path = own
    while True:
        if os.access(path, os.W_OK) and os.access(os.path.join(path, "cgroup.procs"), os.W_OK):
            enabled = _words(os.path.join(path, "cgroup.subtree_control"))
            if (not {"memory", "pids"} <= enabled and _may_enable(path)
                    and {"memory", "pids"} <= _words(os.path.join(path, "cgroup.controllers"))):
                try:
                    _write(path, "cgroup.subtree_control", "+memory +pids")
                except OSError:
                    pass
                enabled = _words(os.path.join(path, "cgroup.subtree_control"))
            if {"memory", "pids"} <= enabled:
                return path
        if os.path.normpath(path) == os.path.normpath(mount):
            return None
        path = os.path.dirname(path)


def _may_enable(path: str) -> bool:
    """Turn controllers on only in a subtree handed to us (an ordinary user's own directory): as root, a directory is
    writable whoever it belongs to, and the host's own cgroups (systemd's slices) are not ours to reconfigure."""
    try:
        return os.geteuid() != 0 and os.stat(path).st_uid == os.geteuid()
    except OSError:
        return False


def sweep_stale_v2(parent: str) -> None:
    """Remove sandbox cgroups left under `parent` by a trainer that died mid-job (their name carries its pid)."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        parts = name.split("-")
        if not name.startswith("grpo-sbx-") or len(parts) != 4 or not parts[2].isdigit():
            continue
        try:
            os.kill(int(parts[2]), 0)
            continue
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        CgroupV2.remove_dir(os.path.join(parent, name))


class CgroupV2:
    """One child of the delegated subtree: memory.max and pids.max for the sandbox's whole tree, no swap beyond it,
    and the whole group killed together when it runs out of memory."""

    def __init__(self, parent: str, memory_bytes: int, pids: int):
        self.path: str | None = os.path.join(parent, f"grpo-sbx-{os.getpid()}-{next(_counter)}")
        os.mkdir(self.path)
        try:
            _write(self.path, "memory.max", memory_bytes)
            _write(self.path, "pids.max", pids)
            for name, value in (("memory.swap.max", 0), ("memory.oom.group", 1)):
                if os.path.exists(os.path.join(self.path, name)):
                    _write(self.path, name, value)
        except OSError:
            self.remove()
            raise

    @property
    def procs_files(self) -> list[str]:
        return [os.path.join(self.path, "cgroup.procs")] if self.path else []

    def remove(self) -> None:
        if self.path is not None:
            CgroupV2.remove_dir(self.path)
        self.path = None

    @staticmethod
    def remove_dir(path: str) -> None:
        for _ in range(200):
            try:
                os.rmdir(path)
                return
            except FileNotFoundError:
                return
            except OSError:  # members still exiting: kill them all (cgroup.kill where the kernel has it), retry
                try:
                    _write(path, "cgroup.kill", 1)
                except OSError:
                    _kill_members(path)
                time.sleep(0.005)
