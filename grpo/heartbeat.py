"""Under torchrun, find a stuck rank (a reward that never returns, a hung sampler, a SIGSTOPped process) within
distributed.heartbeat_s instead of distributed.timeout_s, and name it.

Every rank runs the same stages in the same order (grpo.train.profiling.stage), so the number of stage entries and
exits a rank has made is a clock the ranks share: a rank whose count is lower than another's is behind it. A
watchdog thread on each rank publishes its own count, open stages and step to the process group's store every
`period` seconds and reads every other rank's. A rank is stuck when another rank is ahead of it and its count has
not moved for heartbeat_s since that rank got ahead (the others have been waiting on it that long; how long it has
been in the stage does not count: a long generation is not a hang), while it is inside a stage or frozen (its own
watchdog stopped publishing too, so its last record may predate the stage it stopped in). Work outside the stages
of a rank that still runs (rank 0 writing a checkpoint, the logs) is never judged: there the collective timeout
still applies.

What happens then: the stuck rank's own watchdog, if the process still runs, prints where its main thread is and
ends the process; the other ranks' collectives then fail ("another rank stopped answering", with the resume command,
from grpo.cli). A rank that cannot act (SIGSTOPped, or holding the interpreter) is killed by a rank on the same
machine (a sibling of the same torchrun); as a last resort a waiting rank ends itself, so torchrun stops the job.
Nothing written is lost: metrics and samples are appended line by line, checkpoints are written atomically.

Imports nothing from grpo: grpo.parallel starts and stops it with the process group.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field

import torch.distributed

STORE_TIMEOUT_S = 10.0  # one store call; a store that does not answer costs a tick, never the watchdog


def heartbeat_seconds(heartbeat_s: float | None, timeout_s: float) -> float:
    """distributed.heartbeat_s, resolved: None is a fifth of the collective timeout; 0 is off."""
    return timeout_s / 5 if heartbeat_s is None else float(heartbeat_s)


@dataclass
class Progress:
    """This rank's place in the loop, written by the main thread (stage entries and exits, the step), read by the
    watchdog thread. Plain attributes: each write is one assignment, atomic under the GIL."""

    events: int = 0  # stage entries and exits so far: the clock the ranks share
    stages: tuple[str, ...] = ()  # open stages, outermost first
    step: int = 0

    def entered(self, name: str) -> None:
        self.stages = (*self.stages, name)
        self.events += 1

    def left(self, name: str) -> None:
        if self.stages and self.stages[-1] == name:
            self.stages = self.stages[:-1]
        self.events += 1


PROGRESS = Progress()  # one per process: the loop's stages report here whether or not a watchdog runs


@dataclass
class Seen:
    """What one watchdog has seen of one rank: its last record, and (local monotonic times, so no two machines'
    clocks are compared) when its count last moved, when its watchdog last beat, since when another rank is ahead."""

    record: dict
    moved_at: float
    beat_at: float
    behind_since: float | None = None


@dataclass
class Verdict:
    rank: int
    stage: str  # where it is (or was last seen, when frozen)
    step: int
    waited_s: float  # since its count last moved
    frozen: bool  # its watchdog stopped beating too: the whole process is stopped or hung
    ahead: list[int] = field(default_factory=list)  # the ranks waiting on it


def judge(seen: dict[int, Seen], records: dict[int, dict], now: float, heartbeat_s: float) -> list[Verdict]:
    """Update `seen` with the ranks' latest records and return the stuck ranks: behind another rank for heartbeat_s
    with no move, and either inside a stage or frozen (no beat for heartbeat_s: where it is is not known, as its
    last record may predate the stage it stopped in). A rank that left the group is neither judged nor ahead."""
    for rank, record in records.items():
        old = seen.get(rank)
        if old is None:
            seen[rank] = Seen(record, moved_at=now, beat_at=now)
            continue
        if old.record["events"] != record["events"]:
            old.moved_at, old.behind_since = now, None
        if old.record["beat"] != record["beat"]:
            old.beat_at = now
        old.record = record
    live = {rank: s.record for rank, s in seen.items() if not s.record["left"]}
    stuck = []
    for rank, record in live.items():
        s = seen[rank]
        ahead = sorted(r for r, other in live.items() if other["events"] > record["events"])
        if not ahead:
            s.behind_since = None
            continue
        s.behind_since = now if s.behind_since is None else s.behind_since
        frozen = now - s.beat_at >= heartbeat_s
        if now - s.behind_since >= heartbeat_s and (record["stages"] or frozen):
            where = record["stages"][-1] if record["stages"] else ""
            stuck.append(Verdict(rank, where, record["step"], now - s.moved_at, frozen, ahead))
    return stuck


class Watchdog:
    """The thread on one rank (`start()`, `stop()`); `tag` prefixes its messages ("rank r/N: ")."""

    def __init__(self, rank: int, size: int, heartbeat_s: float, store, tag: str):
        self.rank, self.size, self.heartbeat_s, self.store, self.tag = rank, size, heartbeat_s, store, tag
        self.period = min(max(heartbeat_s / 5, 0.2), 5.0)
        self.grace = 2 * self.period + 2.0  # how long a stuck rank's own watchdog gets to act before others do
        self.identity = {"pid": os.getpid(), "ppid": os.getppid(), "host": socket.gethostname()}
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="grpo-heartbeat", daemon=True)
        self._seen: dict[int, Seen] = {}
        self._beat = 0
        self._known: set[int] = set()  # ranks whose record is in the store

    def start(self) -> "Watchdog":
        self._publish()
        self._thread.start()
        return self

    def stop(self) -> None:
        """This rank leaves: the others stop counting it (it may be ahead of them, and is no longer waiting)."""
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.period + STORE_TIMEOUT_S)
        try:
            self._publish(left=True)
        except Exception:  # the store may be gone with the job: leaving is still fine
            pass

    def _publish(self, left: bool = False) -> None:
        self._beat += 1
        record = {"events": PROGRESS.events, "stages": list(PROGRESS.stages), "step": PROGRESS.step, "left": left,
                  "beat": self._beat, **self.identity}
        self.store.set(f"rank{self.rank}", json.dumps(record))

    def _records(self) -> dict[int, dict]:
        """Every rank's latest record in one request; a rank that has not published yet (starting) is left out."""
        self._known |= {r for r in range(self.size) if r not in self._known and self.store.check([f"rank{r}"])}
        ranks = sorted(self._known)
        return {r: json.loads(v) for r, v in zip(ranks, self.store.multi_get([f"rank{r}" for r in ranks]))}

    def _run(self) -> None:
        while not self._stopped.wait(self.period):
            try:
                self._publish()
                stuck = judge(self._seen, self._records(), time.monotonic(), self.heartbeat_s)
            except Exception:  # a store that does not answer (its host busy or gone): try again next tick
                continue
            if stuck and not self._stopped.is_set():
                self._act(stuck)

    def _act(self, stuck: list[Verdict]) -> None:
        mine = next((v for v in stuck if v.rank == self.rank), None)
        if mine is not None:
            self._end_self(mine)
        others = {v.rank for v in stuck}
        speaker = min((r for r in range(self.size) if r not in others), default=self.rank) == self.rank
        if speaker:
            for v in stuck:
                _say(f"{self.tag}rank {v.rank} is stuck: {_describe(v, self.heartbeat_s)}; stopping the job")
        deadline = time.monotonic() + self.grace  # a stuck rank that still runs ends itself (with its stack)
        while time.monotonic() < deadline and not self._stopped.is_set():
            time.sleep(0.1)
        for v in stuck:
            if self._stopped.is_set():
                return
            record = self._seen[v.rank].record
            if not _kill_sibling(record, v.rank, self.identity):
                if speaker:
                    _say(f"{self.tag}rank {v.rank} (pid {record.get('pid')} on {record.get('host')}) cannot be "
                         f"stopped from here")
        # The killed rank's peers see their collective fail and the CLI prints the resume command. If this rank's
        # main thread is still blocked after that, it ends itself so that torchrun stops the job.
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline and not self._stopped.is_set():
            time.sleep(0.1)
        if not self._stopped.is_set():
            _say(f"{self.tag}ending this rank so that torchrun stops the job. Nothing after the last checkpoint is "
                 f"kept; to resume, run the same torchrun command with checkpoint.resume=auto")
            os._exit(1)

    def _end_self(self, v: Verdict) -> None:
        frame = sys._current_frames().get(threading.main_thread().ident)
        where = "".join(traceback.format_stack(frame)[-12:]) if frame is not None else "  (not known)\n"
        _say(f"{self.tag}this rank is stuck: {_describe(v, self.heartbeat_s)}. Its main thread is here:\n"
             f"{where.rstrip()}\n{self.tag}ending this rank; the others then stop with the command that resumes "
             f"from the last checkpoint")
        os._exit(1)


def _describe(v: Verdict, heartbeat_s: float) -> str:
    waiting = ", ".join(map(str, v.ahead))
    place = f"in {v.stage} of step {v.step}" if v.stage else f"between the stages of step {v.step}"
    if v.step == 0:
        place = "before its first step"
    state = (f"not answering for {v.waited_s:.0f} s (its process is stopped or frozen), last seen {place}"
             if v.frozen else f"no progress for {v.waited_s:.0f} s {place}")
    return (f"{state}, while rank{'s' * (len(v.ahead) > 1)} {waiting} wait{'s' * (len(v.ahead) == 1)} for it "
            f"(distributed.heartbeat_s={heartbeat_s:g}; if that stage is only slow, raise it; 0 turns this check off)")


def _say(line: str) -> None:
    sys.stdout.flush()
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _kill_sibling(record: dict, rank: int, me: dict) -> bool:
    """SIGKILL the stuck rank if it is a sibling of this one: the same machine, the same parent (torchrun's agent),
    and still that process (its environment says RANK=rank; a pid may have been reused). True once it is gone."""
    pid = record.get("pid")
    if record.get("host") != me["host"] or record.get("ppid") != me["ppid"] or not isinstance(pid, int):
        return False
    try:
        environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return os.path.isdir("/proc") and not os.path.exists(f"/proc/{pid}")  # gone already; no /proc: unknown
    state, ppid = stat.rsplit(")", 1)[1].split()[:2]
    if state in ("Z", "X"):  # it has ended already (not yet reaped by torchrun)
        return True
    if int(ppid) != me["ppid"] or f"RANK={rank}".encode() not in environ:
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


_RUNNING: Watchdog | None = None


def start(rank: int, size: int, heartbeat_s: float, tag: str) -> None:
    """Start this rank's watchdog on its own client of torchrun's store (MASTER_ADDR:MASTER_PORT), so that it never
    waits behind the process group's own use of it. No-op when off (heartbeat_s 0), alone, or with no store."""
    global _RUNNING
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if heartbeat_s <= 0 or size <= 1 or _RUNNING is not None or not addr or not port:
        return
    client = torch.distributed.TCPStore(addr, int(port), is_master=False, wait_for_workers=False,
                                        timeout=datetime.timedelta(seconds=STORE_TIMEOUT_S))
    # One namespace per launch attempt: torchrun's store outlives a restart of its workers.
    attempt = f"{os.environ.get('TORCHELASTIC_RUN_ID', '')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    store = torch.distributed.PrefixStore(f"grpo/heartbeat/{attempt}/", client)
    _RUNNING = Watchdog(rank, size, heartbeat_s, store, tag).start()


def stop() -> None:
    global _RUNNING
    if _RUNNING is not None:
        running, _RUNNING = _RUNNING, None
        running.stop()
