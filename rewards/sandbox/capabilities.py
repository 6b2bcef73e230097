"""Which protections this machine lets us apply, found once per process by actually trying them.

Levels, best first:
  userns    unprivileged user namespace + pid, net, mount, ipc, uts namespaces; the program runs as uid 0 of its
            own namespace with no capabilities, mapped to nobody (or to the trainer's own uid when not root)
  rootns    the same namespaces made by real root without a user namespace; the program runs as nobody
  none      a plain subprocess with resource limits, an empty environment and a private temp dir only
The executor refuses level "none" unless the user opts in with allow_unsandboxed=True.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
from dataclasses import dataclass, field

from rewards.errors import UserError
from rewards.sandbox import cgroups
from rewards.sandbox.launch import bind_paths, launch_command, launch_env, launch_input

log = logging.getLogger("grpo.sandbox")

LEVELS = {"userns": {"userns": True, "ns": True}, "rootns": {"userns": False, "ns": True},
          "none": {"userns": False, "ns": False}}


@dataclass
class Capabilities:
    level: str
    isolate: dict
    applied: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    why: dict = field(default_factory=dict)  # level -> error that ruled it out
    report: dict = field(default_factory=dict)  # raw findings of the probe

    def describe(self) -> str:
        text = f"code sandbox level {self.level}: applied {', '.join(self.applied) or 'nothing'}"
        if self.missing:
            text += f"; missing {', '.join(self.missing)}"
        return text


ALWAYS = ["rlimits (cpu, address space, file size, open files, processes)", "wall-clock timeout",
          "empty environment", "private temp dir", "capped output", "grading outside the sandbox"]


def _probe(isolate: dict) -> dict:
    job = {"probe": True, "isolate": isolate, "binds": bind_paths(),
           "limits": {"tmp_bytes": 1 << 20}}
    proc = subprocess.run(launch_command(), input=launch_input(job), capture_output=True, env=launch_env(),
                          cwd="/", timeout=30, start_new_session=True)
    for line in proc.stdout.decode(errors="replace").splitlines():
        msg = json.loads(line)
        if "probe" in msg:
            return msg["probe"]
        if "fatal" in msg:
            raise OSError(msg["fatal"])
    raise OSError(f"probe exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-300:]}")


CGROUP_LABEL = {"v1": "cgroup per sandbox (v1, as root: memory of the whole tree, pids, equal CPU share)",
                "v2": "cgroup per sandbox (v2, a delegated subtree: memory of the whole tree, pids)",
                None: "cgroup per sandbox (memory of the whole tree, pids)"}


def tree_memory_cap(caps: Capabilities) -> str:
    """Which cap holds a program's whole process tree to its memory budget here, in words."""
    kind = caps.report.get("cgroup_kind")
    if kind == "v1":
        return "cgroup v1 (memory.limit_in_bytes of a cgroup per sandbox, made as root)"
    if kind == "v2":
        return f"cgroup v2 (memory.max of a child per sandbox in the delegated subtree {cgroups.delegated_parent()})"
    if caps.report.get("pidns"):
        return ("RSS watchdog (the keeper sums the tree's resident memory every 50 ms; no cgroup: not root, and no "
                "writable cgroup v2 subtree with the memory controller)")
    return "none (RLIMIT_AS caps each process only)"


def _summarise(level: str, report: dict) -> tuple[list[str], list[str]]:
    checks = [("user namespace", report.get("userns")), ("pid namespace", report.get("pidns")),
              ("network namespace (no network)", report.get("netns")), ("mount namespace", report.get("mountns")),
              ("private root (read-only system dirs, fresh /proc, tmpfs /tmp)", report.get("private_root")),
              ("no nested user namespaces", report.get("no_nested_userns")),
              ("seccomp filter (no memfd, ptrace, mount, new namespaces, io_uring, bpf, keyctl)",
               report.get("seccomp")),
              (CGROUP_LABEL.get(report.get("cgroup_kind"), CGROUP_LABEL[None]), report.get("cgroups")),
              ("untrusted code runs as a non-root host uid",
               report.get("host_uid", 0) != 0 or os.geteuid() == 0)]  # as root, levels below userns use nobody
    applied = [name for name, ok in checks if ok] + ALWAYS
    missing = [name for name, ok in checks if not ok]
    return applied, missing


_lock = threading.Lock()
_cached: Capabilities | None = None


def detect(refresh: bool = False) -> Capabilities:
    """Try each level once (cached); log what applies."""
    global _cached
    with _lock:
        if _cached is not None and not refresh:
            return _cached
        why = {}
        order = ["userns", "rootns", "none"] if os.geteuid() == 0 else ["userns", "none"]
        for level in order:
            try:
                report = _probe(LEVELS[level])
            except (OSError, ValueError, subprocess.SubprocessError) as exc:
                why[level] = str(exc)
                continue
            kind = cgroups.available() if level != "none" else None
            report["cgroups"], report["cgroup_kind"] = kind is not None, kind
            applied, missing = _summarise(level, report)
            _cached = Capabilities(level, LEVELS[level], applied, missing, why, report)
            break
        else:
            _cached = Capabilities("unavailable", LEVELS["none"], [], ["everything"], why)
        (log.warning if _cached.level in ("none", "unavailable") else log.info)(_cached.describe())
        return _cached


def require(allow_unsandboxed: bool) -> Capabilities:
    caps = detect()
    if caps.level == "unavailable":
        raise UserError(f"code sandbox: cannot start even a plain subprocess here ({caps.why}); "
                        "rule: code rewards need to run programs; fix: check that python can fork and exec")
    if caps.level == "none" and not allow_unsandboxed:
        reasons = "; ".join(f"{k}: {v}" for k, v in caps.why.items())
        raise UserError("code sandbox: this machine allows no isolation beyond a plain subprocess "
                        f"({reasons}). Rule: untrusted model code runs only in namespaces. Fix: allow unprivileged "
                        "user namespaces (sysctl user.max_user_namespaces=15000, kernel.unprivileged_userns_clone=1, "
                        "or the AppArmor userns restriction off), or opt in with allow_unsandboxed=True in the "
                        "reward args if you accept running model code with only resource limits")
    return caps
