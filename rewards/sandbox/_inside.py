"""The code that runs on the far side of the sandbox boundary. Standard library only; never imported by the trainer.

The parent starts it as `python -I -S -B -c <this source>` with an empty environment and sends one job (JSON) on
stdin. Four roles, one file, because each is a fork of the one before (the judge, like the worker, of the keeper):

  launcher  (host)   opens the directories to show inside, drops root to an unprivileged uid, unshares namespaces,
                     forks the keeper and relays its exit status; its death kills the keeper (PDEATHSIG).
  keeper    (pid 1)  builds the private root (read-only binds, fresh /proc, tmpfs /tmp, no network), then forks one
                     worker (and, for a judged run, one judge) per run, enforces wall time and output caps, and kills
                     every other process of the namespace after each run. It relays raw bytes; it never grades.
  worker    (untrusted) resource limits, no capabilities, empty environment; runs the program, then the probes
                     (the program's functions applied to inputs) whose results it serialises. Expected answers never
                     enter it, so whatever a hostile program does to this process cannot produce them.
  judge     (trusted code, untrusted values) only in a run whose test code must run in the sandbox (a loop over
                     computed cases, a probe over the test's own names): a fork of the keeper, so no program ever ran
                     in it, with the worker's limits. It runs the test code, calls into the worker for the program's
                     functions with plain data both ways, and alone holds the answer channel.

wire.py's encode/decode are put in front of this source by launch.py.

Output: one JSON line per run on stdout, written by the keeper.
"""

import _blake2
import _operator
import _socket
import ctypes
import re
import json
import os
import platform
import resource
import select
import signal
import sys
import time

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x4000000, 0x8000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_SECUREBITS = 1, 4, 24, 28
PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 38, 47, 4
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(platform.machine())
NOBODY = 65534
_ANSWER = re.compile(r'^\{"k": (\d+)', re.M)

libc = ctypes.CDLL(None, use_errno=True)


def _check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _prctl(option, arg2=0):
    _check(libc.prctl(option, ctypes.c_ulong(arg2), 0, 0, 0), f"prctl {option}")


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


# ---------------------------------------------------------------- launcher (host side)

def launcher():
    # Die with the trainer, even on its SIGKILL: the keeper and the namespace follow us (their PDEATHSIG). The
    # trainer's thread that started us waits for us, so it cannot end first. If the trainer died before this was
    # armed we have a new parent already: leave.
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    job = json.loads(sys.stdin.buffer.read())
    if job.get("parent") not in (None, os.getppid()):
        os._exit(1)
    iso = job["isolate"]
    for procs in job.get("cgroup_procs", []):  # join our cgroups first: all we fork is counted there
        _write(procs, str(os.getpid()))
    report = {}
    root = os.geteuid() == 0
    flags = 0
    if iso.get("userns"):
        if root:  # map the sandbox to nobody, never to the host's root
            # Build the private tree while still root (it can read a pyenv under /root); the namespace made below
            # gets a locked copy of it that the sandbox can neither unmount nor make writable.
            _check(libc.unshare(CLONE_NEWNS), "unshare mount namespace")
            build_tree(job)
            report["tree_by_root"] = True
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            _prctl(PR_SET_DUMPABLE, 1)  # a uid change makes /proc/self root-owned; we must write our maps
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the uid change cleared it
        flags |= CLONE_NEWUSER
    if iso.get("ns"):
        flags |= CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
    if flags:
        uid, gid = os.geteuid(), os.getegid()
        _check(libc.unshare(flags), "unshare")
        if flags & CLONE_NEWUSER:
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/uid_map", f"0 {uid} 1")
            _write("/proc/self/gid_map", f"0 {gid} 1")
    report["host_uid"] = os.geteuid() if not flags & CLONE_NEWUSER else int(open("/proc/self/uid_map").read().split()[1])
    alive_r, alive_w = os.pipe()  # EOF on alive_r means the launcher is gone (getppid() is 0 across a pid ns)
    pid = os.fork()
    if pid == 0:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        os.close(alive_w)
        if select.select([alive_r], [], [], 0)[0]:  # the launcher died before PDEATHSIG was armed
            os._exit(1)
        os.close(alive_r)
        try:
            keeper(job, report)
        except BaseException as exc:  # noqa: BLE001 - report any setup failure to the parent, then stop
            os.write(1, (json.dumps({"fatal": f"{type(exc).__name__}: {exc}"}) + "\n").encode())
            os._exit(3)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


# ---------------------------------------------------------------- keeper (pid 1 of the new namespaces)

def _remount_ro(target):
    st = os.statvfs(target)
    # Locked flags must be repeated in a user namespace (statvfs's ST_NOATIME/ST_NODIRATIME equal the MS_ values).
    keep = st.f_flag & (MS_NOSUID | MS_NODEV | MS_NOEXEC | 1024 | 2048)
    _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | keep)


NEW = "/tmp"  # where the private tree is assembled (a tmpfs mounted there, in our mount namespace only)


def build_tree(job):
    """A tmpfs with the system dirs bound read-only, /dev basics, and empty mount points for /proc and /tmp."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("tmpfs", NEW, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=4096,mode=755")
    for path in job.get("binds", []):
        target = NEW + path
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.islink(path):
            os.symlink(os.readlink(path), target)
            continue
        if os.path.isdir(path):
            os.makedirs(target, exist_ok=True)
        else:
            open(target, "w").close()
        try:
            _mount(path, target, None, MS_BIND)
        except OSError:  # a mount with locked submounts can only be bound whole
            _mount(path, target, None, MS_BIND | MS_REC)
        _remount_ro(target)
    os.makedirs(NEW + "/dev")
    for dev in ("null", "zero", "urandom", "random"):
        open(f"{NEW}/dev/{dev}", "w").close()
        _mount(f"/dev/{dev}", f"{NEW}/dev/{dev}", None, MS_BIND)
    for name, dest in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                       ("stderr", "/proc/self/fd/2")):
        os.symlink(dest, f"{NEW}/dev/{name}")
    os.makedirs(NEW + "/proc")
    os.makedirs(NEW + "/tmp")
    _mount(None, NEW, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def finish_root(job, report):
    """Fresh /proc (this pid namespace only), a size-capped tmpfs /tmp, then pivot into the tree."""
    if not report.get("tree_by_root"):
        build_tree(job)
    _mount("proc", NEW + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _mount("tmpfs", NEW + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={job['limits']['tmp_bytes']},nr_inodes=512,mode=1777")
    if SYS_PIVOT_ROOT is None:
        raise OSError("pivot_root: unknown syscall number for this machine")
    if report.get("tree_by_root"):
        # pivot_root refuses a mount locked to its parent; a recursive bind of the tree onto itself is ours.
        _mount(NEW, NEW, None, MS_BIND | MS_REC)
    os.chdir(NEW)
    _check(libc.syscall(SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
    _check(libc.umount2(b".", 2), "umount old root")  # MNT_DETACH: the host tree is gone from this namespace
    os.chdir("/")
    report["private_root"] = True
    # Nested user namespaces would hand the program fresh capabilities (and unlimited tmpfs mounts). This sysctl
    # belongs to the user namespace: write it only in our own, never in the host's (level rootns).
    report["no_nested_userns"] = False
    if job["isolate"].get("userns"):
        try:
            _write("/proc/sys/user/max_user_namespaces", "0")
            report["no_nested_userns"] = True
        except OSError:
            pass


def keeper(job, report):
    iso = job["isolate"]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # pid 1 gets only signals it handles: Python's SIGINT would be one
    _prctl(PR_SET_DUMPABLE, 0)  # workers share our uid: keep them out of /proc/1/mem and ptrace
    pidns = os.getpid() == 1
    report.update(userns=bool(iso.get("userns")), pidns=pidns, netns=bool(iso.get("ns")), mountns=bool(iso.get("ns")))
    scratch = None
    if iso.get("ns"):
        finish_root(job, report)
        scratch = "/tmp"
    elif not job.get("probe"):  # no private /tmp to vanish with us: a host temp dir, removed below
        import tempfile
        scratch = tempfile.mkdtemp(prefix="grpo-sbx-")
        os.chmod(scratch, 0o777)
    report["uid_drop"] = report.get("host_uid", os.geteuid()) != 0
    if job.get("probe"):
        pid = os.fork()
        if pid == 0:
            try:
                _prctl(PR_SET_NO_NEW_PRIVS, 1)
                os._exit(0 if _seccomp() else 1)
            except BaseException:  # noqa: BLE001
                os._exit(1)
        report["seccomp"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        os.write(1, (json.dumps({"probe": report}) + "\n").encode())
        return
    streak = 0
    # Consecutive stdin timeouts tolerated before the rest are skipped (failed): a sleeper must not cost
    # timeout x number-of-cases; an honest program that is slow on one big case still gets the others.
    patience = 1 if job.get("stop_on_timeout") else 2
    try:
        for run in job["runs"]:
            if run.get("kind") == "stdin":
                result = do_run(job, run, scratch, pidns)
                os.write(1, (json.dumps(result) + "\n").encode())
                streak = streak + 1 if result.get("timeout") else 0
                if streak >= patience:
                    break
                continue
            # Probe runs: after a probe that hung or took the worker down, a fresh worker goes on from the next
            # probe, as long as the last one made progress (a program that never answers gets one try).
            probes = [i for i, op in enumerate(run["ops"]) if op[0] not in ("exec", "bind")]
            start = 0
            while start < len(run["ops"]):
                result = do_run(job, dict(run, start=start), scratch, pidns)
                os.write(1, (json.dumps(result) + "\n").encode())
                answered = {int(m) for m in _ANSWER.findall(result["res"])}
                missing = [i for i in probes if i >= start and run["ops"][i][1] not in answered]
                progressed = any(i >= start and run["ops"][i][1] in answered for i in probes)
                if not missing or not progressed:
                    break
                start = missing[0] + 1
    finally:
        if not iso.get("ns"):
            import shutil
            shutil.rmtree(scratch, ignore_errors=True)


def _kill_rest(pids, pidns):
    if pidns:
        try:
            os.kill(-1, signal.SIGKILL)  # as pid 1: every other process of this namespace, and only those
        except ProcessLookupError:
            pass
    else:
        for pid in pids:  # each worker made its own session: its group holds what it forked
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for pid in pids[1:]:  # the first was reaped by the caller; the others must not outlive the run
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
    while True:  # reap everything, orphans included (they are re-parented to us)
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                if not pidns:
                    break
                time.sleep(0.002)
                try:
                    os.kill(-1, signal.SIGKILL)  # again: a fork bomb may have slipped a child past the last sweep
                except ProcessLookupError:
                    pass
        except ChildProcessError:
            break


READY = b"ready\n"


def _mac(secret, payload):
    # Keyed BLAKE2 is a MAC by itself, and _blake2 loads in no time (hmac would pull in OpenSSL's hashlib).
    return _blake2.blake2b(payload, key=secret, digest_size=16).hexdigest().encode()


def _handshake(sock, pending, chan, pid, pidns):
    """Hand the worker its secret when `pending` is exactly its request; False when it cannot be one. The genuine
    worker sends the request alone and waits for the reply, so any other byte first was written by the program."""
    if len(pending) < len(READY):
        return READY.startswith(bytes(pending))
    if bytes(pending) != READY:
        chan["forged"] = True
        return False
    if pidns:  # nothing but the worker may be alive to race it for the secret
        _kill_others(pid)
    chan["secret"] = os.urandom(16)
    try:
        os.write(sock, chan["secret"].hex().encode() + b"\n")
    except OSError:
        pass
    return True


def _kill_others(pid):
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in (1, pid):
            try:
                os.kill(int(name), signal.SIGKILL)
            except OSError:
                pass


def _verified(buf, chan):
    """The answer lines whose MAC checks out. One bad line (a second request, a forgery, a cut line) voids the
    whole attempt: it proves the program wrote on the channel, so none of its lines can be trusted."""
    if chan["secret"] is None or chan["forged"]:
        chan["forged"] = chan["forged"] or bool(buf)
        return ""
    out = []
    for line in bytes(buf).split(b"\n")[:-1]:  # a cut last line (killed mid-write) is dropped, not trusted
        mac, _, payload = line.partition(b" ")
        if not _operator._compare_digest(mac, _mac(chan["secret"], payload)):
            chan["forged"] = True
            return ""
        out.append(payload.decode("utf-8", "replace"))
    return "".join(line + "\n" for line in out)


def do_run(job, run, scratch, pidns):
    lim = job["limits"]
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    # The answer channel: a socket the worker may use only after the program ran (see worker()); stdin runs get
    # none. The keeper hands out a per-attempt secret once, on request, and keeps only lines that carry its MAC.
    res_r, res_w = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)  # not `socket`: 50 ms of imports
    res_r, res_w = res_r.detach(), res_w.detach()
    chan = {"secret": None, "forged": False}
    # A judged run (tests whose comparisons or control flow cannot leave the sandbox as plain values: "check" and
    # "jeval" ops) has two processes: the program's, which only answers calls into its names, and a clean judge
    # forked from us that runs the test code and alone holds the answer channel. See judge_worker().
    judged = bool(run.get("judge")) and run.get("kind") != "stdin"
    if judged:
        to_judge, to_program = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
        to_judge, to_program = to_judge.detach(), to_program.detach()
    stdin_fd = os.memfd_create("stdin")
    data = run.get("stdin", "").encode("utf-8", "replace")
    os.write(stdin_fd, data)
    os.lseek(stdin_fd, 0, 0)
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(stdin_fd, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            if judged:
                os.dup2(to_program, 3)  # calls from the judge; never the answer channel
            elif run.get("kind") != "stdin":
                os.dup2(res_w, 3)
            os.closerange(4, 1 << 16)
            worker(job, run, scratch)
        finally:
            os._exit(70)
    pids = [pid]
    if judged:
        os.close(to_program)
        # Made after the program's fork, so its memory never held it; the judge inherits it and MACs every line.
        chan["secret"] = os.urandom(16)
        judge_pid = os.fork()
        if judge_pid == 0:
            try:
                _judge_fds(to_judge, res_w)
                judge_worker(job, run, scratch, chan["secret"])
            finally:
                os._exit(70)
        os.close(to_judge)
        pids.insert(0, judge_pid)
        pid = judge_pid  # the judge drives a judged run: the run ends when it does
    for fd in (out_w, err_w, res_w, stdin_fd):
        os.close(fd)
    caps = {out_r: run.get("out_bytes", lim["out_bytes"]), err_r: 4096, res_r: lim["res_bytes"]}
    bufs = {out_r: bytearray(), err_r: bytearray(), res_r: bytearray()}
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # kernels before 5.3: poll for the exit instead
        pidfd = None
    status, why = None, None
    wall = run.get("wall_s", lim["wall_s"])
    probe_wall = lim.get("probe_wall_s")
    last_progress = start
    open_fds = [out_r, err_r, res_r]
    next_idle_check, since = start + IDLE_EVERY, (start, 0.0)
    tree_mem = lim.get("tree_mem_bytes") if pidns else None
    next_mem_check = start + MEM_EVERY if tree_mem else float("inf")
    while status is None:
        now = time.monotonic()
        deadline = start + wall
        if probe_wall:  # a probe that stalls loses only itself: the keeper restarts after it
            deadline = min(deadline, last_progress + probe_wall)
        if now >= deadline or (pidns and now >= next_idle_check and _idle(now - last_progress, since)):
            why = "timeout"
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            break
        if now >= next_mem_check:
            next_mem_check = now + MEM_EVERY
            if _tree_rss() > tree_mem:
                why = "memory_limit"  # the whole tree past its budget: RLIMIT_AS bounds each process only
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
        if pidns and now >= next_idle_check:
            next_idle_check = now + IDLE_EVERY
            since = (now, _tree_cpu())
        wait = max(0.0, min(deadline, next_idle_check, next_mem_check) - now)
        ready, _, _ = select.select(open_fds + ([pidfd] if pidfd is not None else []), [], [],
                                    wait if pidfd is not None else min(wait, 0.02))
        if pidfd is None:
            done, st, ru = os.wait4(pid, os.WNOHANG)
            if done:
                status = st
        for fd in ready:
            if fd == pidfd:
                _, st, ru = os.wait4(pid, 0)
                status = st
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                open_fds.remove(fd)
                continue
            if fd == res_r:
                last_progress = time.monotonic()
                if chan["secret"] is None:
                    pending = bufs[res_r] + chunk
                    if not _handshake(res_r, pending, chan, pid, pidns):
                        why = "forged"  # the program wrote on the channel before the harness asked for it
                        os.kill(pid, signal.SIGKILL)
                        os.waitpid(pid, 0)
                        status = -1
                        break
                    bufs[res_r] = pending if chan["secret"] is None else bytearray()  # the request is no answer
                    continue
            if len(bufs[fd]) + len(chunk) > caps[fd]:
                bufs[fd] += chunk[: caps[fd] - len(bufs[fd])]
                if fd != err_r:  # an output flood fails the run; a stderr flood is only truncated
                    why = "output_limit"
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    status = -1
                    break
            else:
                bufs[fd] += chunk
    if pidfd is not None:
        os.close(pidfd)
    _kill_rest(pids, pidns)
    # Survivors are dead now; what they wrote is still in the pipes. Read it, capped, without waiting.
    for fd in open_fds:
        os.set_blocking(fd, False)
        try:
            while len(bufs[fd]) < caps[fd]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                bufs[fd] += chunk[: caps[fd] - len(bufs[fd])]
        except BlockingIOError:
            pass
    for fd in (out_r, err_r, res_r):
        os.close(fd)
    result = {"id": run["id"], "wall": round(time.monotonic() - start, 3),
              "stdout": bufs[out_r].decode("utf-8", "replace"), "stderr": bufs[err_r].decode("utf-8", "replace")[-2000:],
              "res": _verified(bufs[res_r], chan)}
    if chan["forged"]:
        result["forged"] = True
    if why:
        result["end"] = why
    elif status is not None and status >= 0:
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            result["end"] = "cpu_limit" if sig in (signal.SIGXCPU, signal.SIGKILL) and _cpu_spent(ru) >= run.get("cpu_s", lim["cpu_s"]) else f"signal {sig}"
        else:
            result["end"] = "exit"
            result["code"] = os.WEXITSTATUS(status)
    if why == "timeout":
        result["timeout"] = True
    return result


# A sandbox whose processes together used under 2% of a core for a whole second is asleep (time.sleep, a lock,
# a pause()): nothing in it can finish, since stdin is a file that never blocks. Stop it then, not at the wall
# limit, so a sleeper costs a second. 2% is far below what a runnable process gets even on a crowded machine.
IDLE_EVERY, IDLE_SHARE = 1.0, 0.02
_TICK = os.sysconf("SC_CLK_TCK")


def _tree_cpu():
    total = 0
    for name in os.listdir("/proc"):
        if name.isdigit() and name != "1":
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                total += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
            except (OSError, IndexError, ValueError):
                continue
    return total / _TICK


# Without a cgroup (no root), the memory of a program's whole process tree is capped by this watchdog: every
# MEM_EVERY seconds the keeper sums the resident memory of every process of the namespace and kills the run past
# the budget. Shared (copy-on-write) pages count once per process: the sum errs on the strict side.
MEM_EVERY = 0.05
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _tree_rss():
    total = 0
    for name in os.listdir("/proc"):
        if name.isdigit() and name != "1":
            try:
                with open(f"/proc/{name}/statm", "rb") as f:
                    total += int(f.read().split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return total * _PAGE


def _idle(stalled_for, since):
    t0, cpu0 = since
    window = time.monotonic() - t0
    return stalled_for >= IDLE_EVERY and window >= IDLE_EVERY * 0.9 and _tree_cpu() - cpu0 < IDLE_SHARE * window


def _cpu_spent(ru):
    return ru.ru_utime + ru.ru_stime


# ---------------------------------------------------------------- worker (untrusted from the first line it runs)

def _drop_privileges(job):
    iso = job["isolate"]
    if os.geteuid() == 0 and not iso.get("userns"):  # real root in the host: become nobody (drops all capabilities)
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
    elif os.geteuid() == 0:
        # uid 0 of our own user namespace: keep the uid (it is the only one mapped) but lose every capability,
        # for good: NOROOT so exec does not give them back, the bounding set emptied, no new privileges.
        _prctl(PR_SET_SECUREBITS, 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80)
        for cap in range(64):
            if libc.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0) != 0:
                break
        libc.prctl(PR_CAP_AMBIENT, ctypes.c_ulong(PR_CAP_AMBIENT_CLEAR_ALL), 0, 0, 0)
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
        data = (ctypes.c_uint32 * 6)()
        _check(libc.capset(header, data), "capset")
    _prctl(PR_SET_NO_NEW_PRIVS, 1)


# Syscalls an untrusted program never needs, refused with EPERM. memfd_create matters most: its pages count
# against no rlimit (not RLIMIT_AS, not RLIMIT_FSIZE), so it would be an unbounded memory channel.
DENY = {
    "x86_64": (0xC000003E, [319, 101, 310, 311, 323, 298, 321, 250, 248, 249, 165, 166, 155, 308, 272, 425, 426,
                            427, 246, 175, 313, 176, 169, 167, 168, 163, 304, 447, 428, 429, 430, 431, 432], 56, 435),
    "aarch64": (0xC00000B7, [279, 117, 270, 271, 282, 241, 280, 219, 217, 218, 40, 39, 41, 268, 97, 425, 426, 427,
                             104, 105, 273, 106, 142, 224, 225, 89, 265, 447, 428, 429, 430, 431, 432], 220, 435),
}
NS_FLAGS = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | 0x02000000


def _seccomp():
    """A classic-BPF filter: other ABIs killed, the DENY list refused, clone with namespace flags refused, clone3
    answered ENOSYS (its flags sit behind a pointer; libc falls back to clone)."""
    spec = DENY.get(platform.machine())
    if spec is None:
        return False
    arch, deny, nr_clone, nr_clone3 = spec
    ld, jeq, jset, jge, ret = 0x20, 0x15, 0x45, 0x35, 0x06
    kill, allow, eperm, enosys = 0x80000000, 0x7FFF0000, 0x50000 | 1, 0x50000 | 38
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, arch), (ret, 0, 0, kill), (ld, 0, 0, 0)]
    if arch == 0xC000003E:
        prog += [(jge, 0, 1, 0x40000000), (ret, 0, 0, kill)]  # x32 ABI numbers
    for nr in deny:
        prog += [(jeq, 0, 1, nr), (ret, 0, 0, eperm)]
    prog += [(jeq, 0, 1, nr_clone3), (ret, 0, 0, enosys),
             (jeq, 0, 3, nr_clone), (ld, 0, 0, 16), (jset, 0, 1, NS_FLAGS), (ret, 0, 0, eperm),
             (ret, 0, 0, allow)]

    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

    filters = (Filter * len(prog))(*[Filter(*f) for f in prog])
    fprog = Prog(len(prog), filters)
    _check(libc.prctl(22, ctypes.c_ulong(2), ctypes.byref(fprog), 0, 0), "seccomp")  # PR_SET_SECCOMP, FILTER
    return True


def _set_limits(job, run):
    lim = job["limits"]
    cpu = int(run.get("cpu_s", lim["cpu_s"])) + 1
    for res, val in ((resource.RLIMIT_CPU, (cpu, cpu + 1)),
                     (resource.RLIMIT_AS, (lim["mem_bytes"],) * 2),
                     (resource.RLIMIT_FSIZE, (lim["file_bytes"],) * 2),
                     (resource.RLIMIT_NOFILE, (lim["nofile"],) * 2),
                     (resource.RLIMIT_NPROC, (lim["nproc"],) * 2),
                     (resource.RLIMIT_CORE, (0, 0)),
                     (resource.RLIMIT_MEMLOCK, (0, 0))):
        resource.setrlimit(res, val)


# encode() and decode(), the plain-data codec, come from wire.py: launch.py puts its source in front of this file.


def _enter_sandbox(job, run, scratch):
    """What every process that runs untrusted code, or code that reads untrusted values, gets before it starts."""
    os.setsid()
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    os.chdir(scratch)
    os.umask(0o077)
    _drop_privileges(job)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after the uid change, which clears it; matters without a pid ns
    _set_limits(job, run)
    if job.get("seccomp", True):
        _seccomp()
    os.environ.clear()


def worker(job, run, scratch):
    # Bound before the program runs, so that patching os, json or hmac later cannot change what these do.
    write, read, listdir, dumps, mac = os.write, os.read, os.listdir, json.dumps, _mac
    _enter_sandbox(job, run, scratch)
    import builtins
    import io
    import types
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)),
                                                 encoding="utf-8", errors="replace")
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)),
                                                   encoding="utf-8", errors="replace")
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(io.BufferedWriter(io.FileIO(2, "w", closefd=False)),
                                                   encoding="utf-8", errors="replace", line_buffering=True)
    builtins.exit = builtins.quit = sys.exit  # normally added by the site module, which -S skips
    sys.argv = ["main.py"]
    sys.setrecursionlimit(1000)  # Python's default: a program that needs more must ask, as it would anywhere
    main = types.ModuleType("__main__")
    main.__dict__["__builtins__"] = builtins
    main.__file__ = "main.py"
    sys.modules["__main__"] = main
    g = main.__dict__
    code = 0
    try:
        exec(compile(job["program"], "main.py", "exec"), g)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - the program's own failure is its score, reported as a traceback
        import traceback
        traceback.print_exc()
        code = 1
    if run.get("kind") == "stdin":
        _finish_like_python(g)
        _flush_and_exit(code)
    if run.get("judge"):
        _serve(g, run, write, read, dumps, types.ModuleType)
    # Probes: each answer is one line on fd 3 that the parent decodes and grades, under a MAC keyed with a secret
    # the keeper hands out once, only now: lines the program wrote before, or a second request, void the attempt.
    # No other thread may be alive to race us for it (the keeper kills every other process of the namespace).
    # This process is the program's: what it answers here is only ever values the program could return anyway
    # (the planner sends every op that judges, "check" and "jeval", to the judge process instead).
    _join_threads()
    if len(listdir("/proc/self/task")) != 1:
        _flush_and_exit(1)
    write(3, READY)
    secret = b""
    while not secret.endswith(b"\n") and len(secret) < 2 * 16 + 1:
        part = read(3, 64)
        if not part:
            _flush_and_exit(1)
        secret += part
    secret = bytes.fromhex(secret.decode().strip())
    # Start after the probes a previous worker already answered (the keeper restarts us after a probe that hung
    # or killed the process).
    start = run.get("start", 0)
    for i, op in enumerate(run["ops"]):
        kind, k = op[0], op[1]
        if i < start and kind not in ("exec", "bind"):
            continue
        try:
            if kind == "exec":
                exec(compile(op[2], "test", "exec"), g)
                continue
            if kind == "bind":  # ["bind", -1, name, program_name]: HumanEval's candidate, when it shadows a builtin
                g[op[2]] = g[op[3]]
                continue
            if kind not in ("eval", "call"):
                raise PermissionError("judged in the judge process only")
            value = _probe_value(op, g)
            line = dumps({"k": k, "v": encode(value)})
        except BaseException as exc:  # noqa: BLE001 - any failure of a probe fails that test only
            try:
                line = dumps({"k": k, "e": type(exc).__name__})
            except BaseException:  # noqa: BLE001
                line = '{"k": %d, "e": "?"}' % k
        payload = line.encode()
        write(3, mac(secret, payload) + b" " + payload + b"\n")
    _flush_and_exit(0)


def _probe_value(op, g):
    """The value of an "eval" op (an expression over the program's names) or a "call" op, in the program's globals."""
    if op[0] == "eval":
        return eval(compile(op[2], "test", "eval"), g)
    fn = g.get(op[2])  # ["call", k, fn_name, args]
    if fn is None and "Solution" in g:
        fn = getattr(g["Solution"](), op[2])
    return fn(*op[3])


# ---------------------------------------------------------------- the program's side of a judged run

MAX_NAMES = 10_000


def _serve(g, run, write, read, dumps, module_type):
    """Answer the judge process, one JSON line per request, until it hangs up. Everything here runs in the program's
    process, so nothing here is trusted: the judge decodes each reply with bounds, and a reply is only ever a value
    the program could have returned from its own function."""
    for text in run.get("p_setup", ()):  # the test's imports, which an honest program may lean on (MBPP's)
        try:
            exec(compile(text, "test", "exec"), g)
        except BaseException:  # noqa: BLE001
            pass
    buf, scanned = b"", 0
    while True:
        nl = buf.find(b"\n", scanned)
        if nl < 0:
            scanned = len(buf)
            part = read(3, 1 << 16)
            if not part:
                _flush_and_exit(0)
            buf += part
            continue
        line, buf, scanned = buf[:nl], buf[nl + 1:], 0
        try:
            reply = _reply(json.loads(line), g, module_type)
            data = dumps(reply).encode() + b"\n"
        except BaseException as exc:  # noqa: BLE001 - the program's failure is that call's answer
            try:
                data = dumps({"e": type(exc).__name__}).encode() + b"\n"
            except BaseException:  # noqa: BLE001
                data = b'{"e": "?"}\n'
        _write_all(write, 3, data)


def _reply(msg, g, module_type):
    if "names" in msg:  # what the test code may find among the program's globals
        out = {}
        for name in msg["names"][:MAX_NAMES]:
            if type(name) is not str or name.startswith("__") or name not in g:
                continue
            value = g[name]
            if isinstance(value, module_type):
                out[name] = ["mod", str(value.__name__)]
            elif callable(value):
                out[name] = ["call"]
            else:
                try:
                    out[name] = ["val", encode(value)]
                except BaseException:  # noqa: BLE001 - not plain data: the judge will not see it
                    pass
        return {"names": out}
    if "op" in msg:
        return {"v": encode(_probe_value(msg["op"], g))}
    args = [decode(a) for a in msg["a"]]
    kwargs = {str(k): decode(v) for k, v in msg["kw"].items()}
    value = g[msg["call"]](*args, **kwargs)
    reply = {"v": encode(value)}
    # Containers the function changed in place go back too, so `f(xs); assert xs == ...` works as it would.
    changed = [[i, encode(a)] for i, a in enumerate(args) if type(a) in (list, dict, set)]
    if changed:
        reply["m"] = changed
    return reply


def _write_all(write, fd, data):
    view = memoryview(data)
    while view:
        view = view[write(fd, view):]


# ---------------------------------------------------------------- the judge process of a judged run

def _judge_fds(to_program, answers):
    """fd 3: requests to the program's process; fd 4: the answer channel; 0-2: /dev/null. Nothing else."""
    import fcntl
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 64) for fd in (to_program, answers)]  # clear of 0-4 before dup2
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.dup2(high[0], 3)
    os.dup2(high[1], 4)
    os.closerange(5, 1 << 16)


class ProgramFailed(Exception):
    """A call into the program failed: it raised something that is not a plain builtin exception, returned what is
    not plain data, or its process stopped answering."""


class _Peer:
    """The judge's line to the program's process: one request, one reply, each a JSON line. Replies are capped in
    size and decoded only by decode()'s bounded rules; once the program's side misbehaves, every later call fails."""

    def __init__(self, fd, cap):
        self.fd, self.cap, self.buf, self.broken = fd, cap, b"", None

    def ask(self, msg):
        if self.broken:
            raise ProgramFailed(self.broken)
        try:
            _write_all(os.write, self.fd, (json.dumps(msg) + "\n").encode())
            scanned = 0
            while (nl := self.buf.find(b"\n", scanned)) < 0:
                if len(self.buf) > self.cap:
                    raise ProgramFailed("reply too long")
                scanned = len(self.buf)
                part = os.read(self.fd, 1 << 16)
                if not part:
                    raise ProgramFailed("the program's process is gone")
                self.buf += part
            line, self.buf = self.buf[:nl], self.buf[nl + 1:]
            reply = json.loads(line)
            if type(reply) is not dict:
                raise ProgramFailed("not a reply")
            return reply
        except (OSError, ValueError, RecursionError, ProgramFailed) as exc:
            self.broken = f"the program's process stopped answering ({type(exc).__name__})"
            raise ProgramFailed(self.broken) from None


# Exceptions a call into the program may raise in the judge, by the name the program's side reported: the builtin
# ones (a test may expect ValueError), never StopIteration or StopAsyncIteration (raised inside the judge's map()
# or a generator they would end the iteration early, and `all(...)` over nothing is True) nor any BaseException.
def _program_error(name):
    import builtins
    cls = getattr(builtins, name, None) if type(name) is str and not name.startswith("_") else None
    if isinstance(cls, type) and issubclass(cls, Exception) and not issubclass(cls, (StopIteration, StopAsyncIteration)):
        return cls(f"raised in the program's {name}")
    return ProgramFailed(f"the program's call failed: {str(name)[:80]}")


class Remote:
    """A function of the program as the judge sees it. Calling it sends the arguments as plain data to the program's
    process and returns the plain data it answers. It defines no comparison, truth or container behaviour of its
    own, so nothing the program wrote ever takes part in the judge's `==`, `all`, `abs` or `if`."""

    __slots__ = ("_peer", "_name")

    def __init__(self, peer, name):
        self._peer, self._name = peer, name

    def __repr__(self):
        return f"<program function {self._name}>"

    def __call__(self, *args, **kwargs):
        reply = self._peer.ask({"call": self._name, "a": [encode(a) for a in args],
                                "kw": {k: encode(v) for k, v in kwargs.items()}})
        if "v" not in reply:
            raise _program_error(reply.get("e"))
        for i, enc in reply.get("m", ())[:len(args)]:
            _copy_back(args[i], decode(enc))
        return decode(reply["v"])


def _copy_back(arg, new):
    if type(arg) is list and type(new) is list:
        arg[:] = new
    elif type(arg) in (dict, set) and type(new) is type(arg):
        arg.clear()
        arg.update(new)


# Modules a program global may stand for in the judge (the judge imports its own copy, never the program's object).
NOT_IMPORTED = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "webbrowser"}


def _program_names(g, names, asked, peer):
    """Bind in the judge's globals what the test code may need of the program's: its functions as Remote, its plain
    values as copies, its stdlib modules as the judge's own. Builtin names stay the judge's own, whatever the program
    defines: a global `all` or `range` of the program's must not run the test's loops."""
    import builtins
    functions = set()
    for name, kind in (names.items() if type(names) is dict else ()):
        if name not in asked or not name.isidentifier() or name.startswith("__") or type(kind) is not list or not kind:
            continue
        if kind[0] == "call":
            functions.add(name)
        if name in builtins.__dict__:
            continue
        try:
            if kind[0] == "call":
                g[name] = Remote(peer, name)
            elif kind[0] == "val" and len(kind) == 2:
                g[name] = decode(kind[1])
            elif kind[0] == "mod" and len(kind) == 2 and type(kind[1]) is str:
                top, *rest = kind[1].split(".")
                if top in sys.stdlib_module_names and top not in NOT_IMPORTED:
                    module = __import__(kind[1])
                    for part in rest:
                        module = getattr(module, part)
                    g[name] = module
        except Exception:  # noqa: BLE001 - not bound: the test code that needs it fails with a NameError
            pass
    return functions


def judge_worker(job, run, scratch, secret):
    """Run the test code of a judged run in a clean interpreter (a fork of the keeper, which no program ever ran in),
    with the program's functions as Remote calls into the program's process. Loops, comparisons, helpers, builtins:
    all of it runs here, where the program cannot reach (its own process, non-dumpable neighbours, seccomp), and
    only this process can write the answer channel (fd 4), each line under a MAC keyed with a secret the program's
    process never held."""
    _enter_sandbox(job, run, scratch)
    import builtins
    sys.argv = ["test.py"]
    peer = _Peer(3, job["limits"]["res_bytes"])
    g = {"__builtins__": builtins, "__name__": "__main__"}
    asked = set(run.get("names", ()))
    try:
        functions = _program_names(g, peer.ask({"names": sorted(asked)}).get("names"), asked, peer)
    except Exception:  # noqa: BLE001 - a program that cannot even list its names fails every test through NameError
        functions = set()
    start = run.get("start", 0)
    for i, op in enumerate(run["ops"]):
        kind, k = op[0], op[1]
        if i < start and kind not in ("exec", "bind"):
            continue
        try:
            if kind == "exec":
                exec(compile(op[2], "test", "exec"), g)
                continue
            if kind == "bind":  # the function under test by its program name, even one that shadows a builtin
                if op[3] in functions:
                    g[op[2]] = Remote(peer, op[3])
                else:
                    g.pop(op[2], None)
                continue
            if kind == "check":
                exec(compile(op[2], "test", "exec"), g)
                value = {"v": True}
            elif kind == "jeval":
                value = {"v": encode(eval(compile(op[2], "test", "eval"), g))}
            else:  # eval / call over the program's names only: its process computes the value, as in an unjudged run
                value = peer.ask({"op": op})
                if "v" not in value:
                    raise _program_error(value.get("e"))
            line = json.dumps({"k": k, "v": value["v"]})
        except BaseException as exc:  # noqa: BLE001 - any failure of a probe fails that test only
            line = json.dumps({"k": k, "e": type(exc).__name__})
        payload = line.encode()
        _write_all(os.write, 4, _mac(secret, payload) + b" " + payload + b"\n")
    os._exit(0)


def _join_threads():
    """An honest program may leave a thread to finish its work: wait for it as interpreter exit would."""
    threading = sys.modules.get("threading")
    if threading is None:
        return
    try:
        for t in threading.enumerate():
            if t is not threading.main_thread() and not t.daemon:
                t.join()
    except BaseException:  # noqa: BLE001 - a broken threading module leaves the task count to decide
        pass


def _finish_like_python(g):
    """What interpreter shutdown would do for an honest program: wait for its non-daemon threads (the usual
    `threading.Thread(target=main).start()` for deep recursion), run atexit hooks, and finalise its objects so
    buffered files it never closed get flushed."""
    try:
        threading = sys.modules.get("threading")
        if threading is not None:
            threading._shutdown()
        import atexit
        atexit._run_exitfuncs()
        g.clear()
        import gc
        gc.collect()
    except BaseException:  # noqa: BLE001 - the program's own shutdown failing is its own problem
        pass


def _flush_and_exit(code):
    for stream in (sys.stdout, sys.__stdout__, sys.stderr, sys.__stderr__):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001 - a closed or replaced stream must not keep us alive
            pass
    os._exit(code if isinstance(code, int) and 0 <= code < 256 else 1)


if __name__ == "__main__":
    launcher()
