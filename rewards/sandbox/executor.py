"""Run one program against one plan in a fresh sandbox; return raw per-run results for the judge.

One job = one launcher process = one set of namespaces. The whole tree dies with the launcher: the keeper has
PDEATHSIG, and as pid 1 of its pid namespace its death takes every process inside with it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass, field

from rewards.sandbox.capabilities import Capabilities, require
from rewards.sandbox import cgroups
from rewards.sandbox.launch import bind_paths, launch_command, launch_env, launch_input
from rewards.sandbox.limits import Limits


@dataclass
class RunResult:
    id: int
    attempts: list[dict] = field(default_factory=list)  # keeper lines for this run (probe runs may restart)

    @property
    def stdout(self) -> str:
        return self.attempts[-1].get("stdout", "") if self.attempts else ""

    @property
    def completed(self) -> bool:
        """Ended on its own with status 0: no timeout, no signal, no output flood."""
        last = self.attempts[-1] if self.attempts else {}
        return last.get("end") == "exit" and last.get("code") == 0

    def answers(self) -> list[str]:
        """Answer lines the keeper verified; an attempt it caught forging contributes none."""
        return [line for a in self.attempts if not a.get("forged") for line in str(a.get("res", "")).splitlines()]


class Executor:
    def __init__(self, limits: Limits | None = None, allow_unsandboxed: bool = False):
        self.limits = limits or Limits()
        self.caps: Capabilities = require(allow_unsandboxed)

    def job_timeout(self, runs: list[dict]) -> float:
        per_run = [r.get("wall_s", self.limits.test_wall_s) for r in runs]
        return min(self.limits.max_job_s, sum(per_run) + 2.0 * len(runs) + 5.0)

    def run(self, program: str, runs: list[dict], stop_on_timeout: bool = False) -> dict[int, RunResult]:
        cap = int(self.limits.output_kb) << 10
        runs = [{**r, "out_bytes": max(cap, r.pop("out_bytes_min", 0) + 4096)} if "out_bytes_min" in r else r
                for r in (dict(r) for r in runs)]
        job = {"isolate": self.caps.isolate, "binds": bind_paths(), "limits": self.limits.as_job(),
               "program": program, "runs": runs, "stop_on_timeout": stop_on_timeout,
               "seccomp": bool(self.caps.report.get("seccomp")), "parent": os.getpid()}
        group = None
        if self.caps.report.get("cgroups"):
            lim = self.limits
            try:
                group = cgroups.make(self.caps.report.get("cgroup_kind") or "v1",
                                     memory_bytes=(lim.memory_mb + 2 * lim.file_mb + 128) << 20, pids=lim.processes + 8)
                job["cgroup_procs"] = group.procs_files
                job["limits"]["tree_mem_bytes"] = 0  # the cgroup caps the tree: no need for the keeper's watchdog
            except OSError:
                group = None  # a transient failure costs this job its cgroup, not its score
        try:
            return self._launch(job, runs)
        finally:
            if group is not None:
                group.remove()

    def _launch(self, job: dict, runs: list[dict]) -> dict[int, RunResult]:
        proc = subprocess.Popen(launch_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=launch_env(), cwd="/", close_fds=True,
                                start_new_session=True)
        try:
            out, _ = proc.communicate(launch_input(job), timeout=self.job_timeout(runs))
        except subprocess.TimeoutExpired:
            _kill_tree(proc)
            out, _ = proc.communicate()
        finally:
            if proc.poll() is None:
                _kill_tree(proc)
                proc.wait()
        results = {r["id"]: RunResult(r["id"]) for r in runs}
        for line in out.decode("utf-8", "replace").splitlines():
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if isinstance(msg, dict) and msg.get("id") in results:
                results[msg["id"]].attempts.append(msg)
        return results


def _kill_tree(proc: subprocess.Popen) -> None:
    # The launcher's group; the keeper (PDEATHSIG) and its namespace follow it down.
    for kill in (lambda: os.killpg(proc.pid, signal.SIGKILL), proc.kill):
        try:
            kill()
        except (ProcessLookupError, PermissionError):
            pass
