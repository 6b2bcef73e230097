"""Resource limits for one sandboxed job. Defaults suit competition-style programs on a shared CPU box."""

from __future__ import annotations

from dataclasses import dataclass

from rewards.errors import UserError


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 3.0          # CPU seconds per test (one stdin case, or one assert / call probe)
    wall_factor: float = 2.0        # wall clock per test = timeout_s * wall_factor + 0.5: 8 sandboxes sharing
                                    # 2 cores must not turn an honest program's fair CPU time into a timeout
    memory_mb: int = 1024           # address space of every untrusted process (RLIMIT_AS)
    file_mb: int = 16               # largest file it may write (RLIMIT_FSIZE); /tmp holds at most twice that
    open_files: int = 64            # RLIMIT_NOFILE
    processes: int = 16             # RLIMIT_NPROC inside its own user namespace (threads count)
    output_kb: int = 1024           # captured stdout per run; more fails that run
    max_job_s: float = 120.0        # hard wall clock for a whole completion, whatever its number of tests

    def __post_init__(self):
        for name in ("timeout_s", "wall_factor", "memory_mb", "file_mb", "open_files", "processes", "output_kb", "max_job_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise UserError(f"code sandbox: {name}={value!r} must be a positive number; "
                                f"set it to e.g. {getattr(Limits, name)}")

    @property
    def test_wall_s(self) -> float:
        return float(self.timeout_s) * float(self.wall_factor) + 0.5

    def as_job(self) -> dict:
        cpu = max(1, int(self.timeout_s + 0.999))
        return {"wall_s": self.test_wall_s, "cpu_s": cpu, "probe_wall_s": self.test_wall_s,
                "mem_bytes": int(self.memory_mb) << 20, "tree_mem_bytes": int(self.memory_mb) << 20, "file_bytes": int(self.file_mb) << 20,
                "tmp_bytes": 2 * (int(self.file_mb) << 20), "nofile": int(self.open_files),
                "nproc": int(self.processes), "out_bytes": int(self.output_kb) << 10,
                "res_bytes": max(int(self.output_kb) << 10, 4 << 20)}
