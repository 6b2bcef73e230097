"""Hold a trainer at a step the test chooses, instead of hoping it is slow (or fast) enough.

Process tests (signals, the lock) need a trainer that is still mid-run when the test acts on it. A sleep in the
reward only makes that likely, on a machine about as fast as the one it was tuned on: on a loaded one the trainer
can finish before the test's next process has even imported torch. So a reward plugin calls `gate_hold()`
(its source is HOLD_SOURCE, pasted into the plugin, which runs in the trainer's process): from its GATE_FROM-th
call on, it writes GATE/waiting-r<rank>-<call> and then waits while the file GATE/hold exists. The test waits
for that file (the trainer is now inside that step, every earlier step logged), does what it tests, and removes
GATE/hold to let the step finish. Nothing here depends on how fast either side is.

A reward held this way must have a time limit longer than the hold (rewards[].timeout_s, REWARD_TIMEOUT_S), or
the trainer abandons it. The hold has a deadline of its own (GATE_DEADLINE_S) so a trainer whose test died
carries on by itself rather than hang; tests kill what they started anyway.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

DEADLINE_S = 1800  # how long a held reward waits at most, if nobody releases it
REWARD_TIMEOUT_S = 3600  # rewards[].timeout_s for a held reward: longer than any hold

HOLD_SOURCE = '''
import os as _os
import time as _time

_GATE_CALLS = [0]


def gate_hold():
    """Wait while $GATE/hold exists, from call $GATE_FROM on (no $GATE: return at once). See tests/gate.py."""
    gate = _os.environ.get("GATE")
    if not gate:
        return
    _GATE_CALLS[0] += 1
    call = _GATE_CALLS[0]
    if call < int(_os.environ.get("GATE_FROM", "1")):
        return
    hold = _os.path.join(gate, "hold")
    if not _os.path.exists(hold):
        return
    marker = _os.path.join(gate, "waiting-r%s-%d" % (_os.environ.get("RANK", "0"), call))
    with open(marker + ".tmp", "w"):
        pass
    _os.replace(marker + ".tmp", marker)
    end = _time.monotonic() + float(_os.environ.get("GATE_DEADLINE_S", "1800"))
    while _os.path.exists(hold) and _time.monotonic() < end:
        _time.sleep(0.02)
'''


class Gate:
    """The test's side: closed when made; `env()` for the trainer; `wait_held()`; `release()`."""

    def __init__(self, folder: Path, hold_from: int):
        self.folder, self.hold_from = Path(folder), hold_from
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "hold").touch()

    def env(self) -> dict[str, str]:
        return {"GATE": str(self.folder), "GATE_FROM": str(self.hold_from), "GATE_DEADLINE_S": str(DEADLINE_S)}

    def wait_held(self, proc, ranks=(0,), timeout: float = 600) -> None:
        """Until every rank in `ranks` is held in its GATE_FROM-th reward call (that step has begun, every earlier
        one is done); fails if `proc` ends first, or after `timeout` seconds."""
        wanted = [self.folder / f"waiting-r{r}-{self.hold_from}" for r in ranks]
        end = time.monotonic() + timeout
        while not all(p.exists() for p in wanted):
            if proc.poll() is not None:
                raise AssertionError(f"the trainer ended (exit {proc.returncode}) before reaching the gate")
            if time.monotonic() > end:
                raise AssertionError(f"the trainer did not reach the gate at call {self.hold_from} in {timeout} s")
            time.sleep(0.05)

    def held(self) -> bool:
        return (self.folder / "hold").exists()

    def release(self) -> None:
        (self.folder / "hold").unlink(missing_ok=True)


def wait_for_text(path: Path, text: str, proc, timeout: float = 300) -> None:
    """Until `text` shows in the file `path` (a process's stderr, say); fails if `proc` ends first, or after
    `timeout` seconds."""
    end = time.monotonic() + timeout
    while True:
        if path.is_file() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise AssertionError(f"the process ended (exit {proc.returncode}) without writing {text!r}")
        if time.monotonic() > end:
            raise AssertionError(f"{text!r} not written in {timeout} s")
        time.sleep(0.05)


class Background:
    """Processes a test starts and acts on while they run. Each leads its own process group (so a kill takes
    torchrun's ranks with it; the session, and so the scheduling group, stays the test's: it competes for the CPU
    as the test does) and writes stdout and stderr to files the test can read at any moment. `stop_all()`, at
    the test's teardown, kills whatever is still running, so no trainer outlives a test that failed part-way."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd: list[str], *, env: dict, cwd: Path) -> subprocess.Popen:
        n = len(self.procs)
        out, err = self.folder / f"background-{n}.stdout", self.folder / f"background-{n}.stderr"
        own_group = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
        with out.open("w") as o, err.open("w") as e:
            proc = subprocess.Popen(cmd, stdout=o, stderr=e, text=True, env=env, cwd=cwd, **own_group)
        proc.out_path, proc.err_path = out, err
        self.procs.append(proc)
        return proc

    @staticmethod
    def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[str, str]:
        """Wait for the process to end (TimeoutExpired after `timeout` s); its stdout and stderr."""
        proc.wait(timeout=timeout)
        return proc.out_path.read_text(errors="replace"), proc.err_path.read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=60)
