"""A persistent sympy worker process, killed and replaced when a comparison runs past its deadline.

Why a process: sympy has no time bound (10^{10^{10}} or 1000000! never return) and a thread cannot be stopped.
Why not fork per call: the trainer has torch loaded; forking it per check is slow and unsafe. So a fresh
interpreter (no torch) is spawned once, plus one warm standby that takes over instantly after a kill.

Protocol: one JSON line per request {"p": pred, "g": gold, "tol": null | "0.005"} -> one JSON line {"r": bool}
(with tol: the prediction's value is within tol of the gold, for golds written as rounded decimals). The worker prints
"ready" once its imports are done.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time

_MIN_ASK_S = 0.2
_BOOT_S = 60.0  # the first worker's imports (seconds, once per process) on a busy machine
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


PR_SET_PDEATHSIG = 1
_PARENT_ENV = "GRPO_MATHCHECK_PARENT"


class _Spawner:
    """Starts workers from one thread that lives as long as the process. PR_SET_PDEATHSIG fires when the thread
    that forked the child ends, and checks run on short-lived reward threads (rewards/guard.py): a worker they
    started would be killed with them. Started from here, it dies with the process, SIGKILL included."""

    def __init__(self) -> None:
        self.pid, self.jobs = None, None

    def popen(self, *args, **kw) -> subprocess.Popen:
        if self.pid != os.getpid():  # first use, or a forked child (threads do not survive a fork)
            self.pid, self.jobs = os.getpid(), queue.Queue()
            threading.Thread(target=self._serve, args=(self.jobs,), name="grpo-mathcheck-spawner", daemon=True).start()
        box: list = []
        done = threading.Event()
        self.jobs.put((args, kw, box, done))
        done.wait()
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    @staticmethod
    def _serve(jobs: queue.Queue) -> None:
        while True:
            args, kw, box, done = jobs.get()
            try:
                box.append(subprocess.Popen(*args, **kw))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, who raises it
                box.append(exc)
            done.set()


_SPAWNER = _Spawner()


def die_with_parent(parent_pid: int | None = None) -> None:
    """In a worker (every helper process of ours calls this): be SIGKILLed when the trainer dies, however it dies.
    If it died before the signal was armed we would be re-parented already, so compare with the pid it told us
    (`parent_pid`, else the environment's) and leave if they differ."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: nothing to arm; the parent check below still runs
    expected = parent_pid or os.environ.get(_PARENT_ENV)
    if expected and os.getppid() != int(expected):
        os._exit(0)


class _Proc:
    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = _ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("OMP_NUM_THREADS", "1")
        env[_PARENT_ENV] = str(os.getpid())
        self.p = _SPAWNER.popen([sys.executable, "-u", "-c", "from rewards.mathcheck.worker import serve; serve()"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                env=env, close_fds=True)
        self.ready = False
        self.buf = b""

    def _readline(self, deadline: float) -> bytes | None:
        fd = self.p.stdout.fileno()
        while b"\n" not in self.buf:
            left = max(0.0, deadline - time.monotonic())  # a past deadline still polls once (poll_ready)
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None  # the worker died
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def wait_ready(self, deadline: float) -> bool:
        if not self.ready:
            line = self._readline(deadline)
            self.ready = line == b"ready"
        return self.ready

    def poll_ready(self) -> bool:
        return self.wait_ready(time.monotonic())

    def ask(self, pred: str, gold: str, deadline: float, tol: str | None = None) -> bool | None:
        try:
            self.p.stdin.write((json.dumps({"p": pred, "g": gold, "tol": tol}) + "\n").encode())
            self.p.stdin.flush()
        except (BrokenPipeError, OSError):
            return None
        line = self._readline(deadline)
        if line is None:
            return None
        try:
            return bool(json.loads(line)["r"])
        except (ValueError, KeyError, TypeError):
            return None

    def kill(self) -> None:
        try:
            self.p.kill()  # no wait(): the zombie is reaped by Popen's bookkeeping later, off the deadline
        except OSError:
            pass


class Pool:
    """One active worker and one standby. Nothing starts at import: the first check (kick) or warm() starts the
    active worker; the standby starts once the active one is ready (two interpreters importing sympy at once
    on a small machine take twice as long)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active: _Proc | None = None
        self.standby: _Proc | None = None
        self.pid = os.getpid()
        self.ever_ready = False  # a worker of this process has finished its imports at least once
        self.boot_waited = False  # the one out-of-budget wait for the first boot has happened (or warm() ran)
        self.boot_wait = 0.0     # seconds the last equal() spent waiting for that first boot

    def take_boot_wait(self) -> float:
        """Seconds the last equal() call waited for the first worker's imports (then reset): the caller moves
        its deadline by this much, since a cold start is not the model's time."""
        waited, self.boot_wait = self.boot_wait, 0.0
        return waited

    def kick(self) -> None:
        """Start the active worker without waiting for it (cheap: one spawn). Called by the first check."""
        self._after_fork()
        if self.active is None and self.lock.acquire(blocking=False):
            try:
                if self.active is None:
                    self.active = _Proc()
            finally:
                self.lock.release()

    def _after_fork(self) -> None:
        """In a forked child the pipes belong to the parent's workers: leave them to it, start our own."""
        if os.getpid() != self.pid:
            self.lock = threading.Lock()
            self.active = self.standby = None
            self.pid = os.getpid()
            self.ever_ready = self.boot_waited = False

    def start(self) -> None:
        if self.active is None:
            self.active = _Proc()
        if self.standby is None and (self.ever_ready or self.active.poll_ready()):
            self.standby = _Proc()

    def warm(self, timeout: float = 30.0, standby: bool = False) -> bool:
        """Start the active worker and wait for its imports, so the first check is fast; then start the standby
        (standby=True waits for it too: then even a kill right away finds a warm replacement)."""
        self._after_fork()
        with self.lock:
            # One at a time: on a busy machine two interpreters importing sympy at once take twice as long.
            if self.active is None:
                self.active = _Proc()
            end = time.monotonic() + timeout
            ok = self.active.wait_ready(end)
            self.ever_ready = self.ever_ready or ok
            self.boot_waited = True
            if self.standby is None:
                self.standby = _Proc()
            if standby:
                ok = self.standby.wait_ready(end) and ok
            return ok

    def _replace_active(self) -> None:
        if self.active is not None:
            self.active.kill()
        self.active, self.standby = self.standby, None
        self.start()

    def equal(self, pred: str, gold: str, deadline: float, tol: str | None = None) -> bool | None:
        """Sympy's verdict, or None when it could not be had before the deadline (then the worker is replaced)."""
        self._after_fork()
        if not self.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return None
        try:
            self.start()
            # A standby that finished its imports is as good as a still-starting active one.
            if not self.active.poll_ready() and self.standby is not None and self.standby.poll_ready():
                self.active, self.standby = self.standby, self.active
            if not self.boot_waited:
                # First use in this process (lazy start): wait for the imports outside the check's budget,
                # once (a worker that cannot start must not cost every later check a minute).
                self.boot_waited = True
                t0 = time.monotonic()
                self.ever_ready = self.active.wait_ready(t0 + _BOOT_S)
                self.boot_wait = time.monotonic() - t0
                deadline += self.boot_wait
                self.start()  # now the standby
            if not self.active.wait_ready(deadline):
                if self.active.p.poll() is not None:
                    self._replace_active()
                return None
            if deadline - time.monotonic() < _MIN_ASK_S:
                return None  # too little time left to ask fairly; killing a healthy worker would not help
            verdict = self.active.ask(pred, gold, deadline, tol)
            if verdict is None:
                self._replace_active()
            return verdict
        finally:
            self.lock.release()

    def close(self) -> None:
        if os.getpid() != self.pid:
            return  # a forked child's atexit must not kill the parent's workers
        for proc in (self.active, self.standby):
            if proc is not None:
                proc.kill()
        self.active = self.standby = None


POOL = Pool()
atexit.register(POOL.close)


def serve() -> None:
    """Worker main loop (runs in the child interpreter)."""
    die_with_parent()
    import sympy as sp

    from rewards.mathcheck.symbolic import latex_close, latex_equal

    # The parser and evalf build caches on first use (~0.5 s): pay that before declaring ready.
    for p, g in (("\\frac{\\sqrt{2}}{2}+x^2", "\\frac{1}{\\sqrt{2}}+x\\cdot x"), ("1.25", "70\\sqrt{2}"),
                 ("6-5i", "\\sqrt{51}"), ("\\{1,2\\}", "[1,2)"), ("\\begin{pmatrix}1\\\\x\\end{pmatrix}", "x=1"),
                 ("\\sin^{-1}(x)", "\\log_2 8"), ("\\pi", "3.14"), ("e^{i\\pi}", "-1"), ("\\tan^{-1}(1)", "\\frac{\\pi}{4}"),
                 ("\\binom{5}{2}", "5!"), ("\\sin 30", "\\sqrt[3]{8}"), ("2x+3y-z=4", "-2x-3y+z=-4"), ("-\\infty", "\\infty"),
                 ("y=-\\frac{1}{2}x+\\frac{3}{4}", "2x+4y-3=0"), ("\\tan^2(y)+1", "\\sec^2(y)"), ("x<1", "-x>-1"),
                 ("\\frac{\\sqrt{\\sqrt{11}+\\sqrt{194}}}{15+2\\sqrt{33}}", "\\frac{\\sqrt{\\sqrt{11}+\\sqrt{194}}}{2\\sqrt{33}+15}"),
                 ("(a+5)(b+2)", "(+5)(b+2)"), ("x\\neq3", "x\\neq 3"), ("\\{1,2\\}\\cup(3,4]", "[1,2]")):
        latex_equal(p, g)
    sp.simplify(sp.sqrt(8) - 2 * sp.sqrt(2) + sp.sin(sp.Symbol("t")) ** 2 + sp.cos(sp.Symbol("t")) ** 2)
    latex_close("\\pi", "3.14", "0.005")
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        try:
            req = json.loads(line)
            tol = req.get("tol")
            r = latex_close(req["p"], req["g"], tol) if tol else latex_equal(req["p"], req["g"])
        except Exception:  # noqa: BLE001 - any failure is a "not equal", never a dead worker
            r = False
        out.write(json.dumps({"r": r}) + "\n")
        out.flush()
