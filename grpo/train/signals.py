"""Preemption: SIGTERM (a scheduler taking the machine back) and SIGINT (Ctrl-C) ask the loop to stop at the end
of the current step, with a checkpoint, instead of killing it mid-write. A second signal exits at once.

The handler only sets a flag; the loop reads it once per step through `world.max`, so on N ranks every rank stops
after the same step even when the signal reached them at different moments (or reached only some of them).
"""

from __future__ import annotations

import os
import signal
import sys
import threading

SIGNAL_EXIT = {signal.SIGTERM: 143, signal.SIGINT: 130}  # the shell's 128 + signal number


class Stopped(Exception):
    """The run stopped on a signal after saving `checkpoint` at `step`; the CLI prints how to resume."""

    def __init__(self, signum: int, step: int, checkpoint):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = SIGNAL_EXIT.get(signum, 128 + signum)
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint: {checkpoint}")


class StopFlag:
    """Installs the handlers while the loop runs (`with StopFlag() as stop:`); `stop.signum` is 0 until asked."""

    def __init__(self, announce: bool = True):
        self.signum = 0
        self.announce = announce  # rank 0 says what happens; the other ranks stay quiet
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
            for sig in SIGNAL_EXIT:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.signum:  # the user means it: no checkpoint, no cleanup (stale temp folders are swept next start)
            os.write(2, f"\n{name} again: exiting now, without a checkpoint\n".encode())
            os._exit(SIGNAL_EXIT.get(signum, 128 + signum))
        self.signum = signum
        if self.announce:
            sys.stderr.write(f"\n{name} received: finishing this step, then saving a checkpoint "
                             f"(send it again to exit at once, without one)\n")
            sys.stderr.flush()
