"""Issue 23 item 5 without root: a delegated cgroup v2 subtree caps a program's whole process tree (memory.max and
pids.max on a child per sandbox); the RSS watchdog stays the fallback. The real test simulates delegation as root
(a v2 directory chowned to nobody, as systemd's Delegate=yes does) and runs the code reward as nobody inside it."""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from rewards.sandbox import cgroups

REPO = Path(__file__).resolve().parents[1]
SETPRIV, PY = shutil.which("setpriv"), "/usr/bin/python3"
NOBODY = 65534


def fake_tree(tmp_path, layout: dict) -> Path:
    """A directory tree shaped like cgroupfs: {relative dir: (subtree_control, controllers)}."""
    for rel, (enabled, available) in layout.items():
        d = tmp_path / rel
        d.mkdir(parents=True, exist_ok=True)
        (d / "cgroup.procs").write_text("")
        (d / "cgroup.subtree_control").write_text(enabled)
        (d / "cgroup.controllers").write_text(available)
    return tmp_path


def kernel_like_write(path, name, value):
    """cgroupfs's rule for subtree_control: `+ctrl` enables a controller its parent hands down, and a cgroup that holds
    processes (other than the root) cannot enable any for children (EBUSY)."""
    d = Path(path)
    if name != "cgroup.subtree_control":
        (d / name).write_text(str(value))
        return
    if (d / "cgroup.procs").read_text().strip():
        raise OSError(16, "Device or resource busy")
    enabled = set((d / name).read_text().split())
    for word in str(value).split():
        if word[1:] not in (d / "cgroup.controllers").read_text().split():
            raise OSError(2, "No such file or directory")
        enabled.add(word[1:])
    (d / name).write_text(" ".join(sorted(enabled)))


def test_delegated_parent_is_the_nearest_writable_cgroup_with_memory_and_pids(tmp_path, monkeypatch):
    root = fake_tree(tmp_path, {".": ("memory pids", "memory pids cpu"),
                                "user.slice": ("memory pids", "memory pids"),
                                "user.slice/app": ("pids", "memory pids"),  # memory handed down, not enabled yet
                                "user.slice/app/me": ("", "memory pids")})
    (root / "user.slice/app/me/cgroup.procs").write_text("4242\n")  # the trainer lives here
    monkeypatch.setattr(cgroups, "_write", kernel_like_write)
    monkeypatch.setattr(cgroups, "_v2_mount", lambda: str(root))
    monkeypatch.setattr(cgroups, "_v2_own_dir", lambda mount: str(root / "user.slice/app/me"))
    # Not our own subtree (as root, every directory is writable): nothing is reconfigured, the next one up is used.
    monkeypatch.setattr(cgroups, "_may_enable", lambda path: False)
    assert cgroups.delegated_parent() == str(root / "user.slice")
    assert (root / "user.slice/app/cgroup.subtree_control").read_text() == "pids"
    # Ours: our own cgroup holds us, so it cannot give children controllers; its parent can, once enabled.
    monkeypatch.setattr(cgroups, "_may_enable", lambda path: True)
    assert cgroups.delegated_parent() == str(root / "user.slice/app")
    assert set((root / "user.slice/app/cgroup.subtree_control").read_text().split()) == {"memory", "pids"}
    # A parent that is not handed the memory controller is passed over for the next one up.
    (root / "user.slice/app/cgroup.subtree_control").write_text("pids")
    (root / "user.slice/app/cgroup.controllers").write_text("pids")
    assert cgroups.delegated_parent() == str(root / "user.slice")
    monkeypatch.setattr(cgroups, "_v2_mount", lambda: None)
    assert cgroups.delegated_parent() is None


def test_no_delegated_parent_where_nothing_is_writable(tmp_path, monkeypatch):
    root = fake_tree(tmp_path, {".": ("memory pids", "memory pids"), "a": ("", "")})
    monkeypatch.setattr(cgroups, "_v2_mount", lambda: str(root))
    monkeypatch.setattr(cgroups, "_v2_own_dir", lambda mount: str(root / "a"))
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert cgroups.delegated_parent() is None


def _v2_with_memory() -> str:
    """The cgroup v2 mount where root can hand out a subtree with the memory and pids controllers, or skip."""
    if os.geteuid() != 0 or not SETPRIV or not os.path.exists(PY):
        pytest.skip("needs root (to make and chown the delegated subtree), setpriv and a system python3")
    mount = cgroups._v2_mount()
    if mount is None:
        pytest.skip("cgroup v2 is not mounted here")
    enabled = cgroups._words(os.path.join(mount, "cgroup.subtree_control"))
    if not {"memory", "pids"} <= enabled:
        available = sorted(cgroups._words(os.path.join(mount, "cgroup.controllers")))
        pytest.skip(f"cgroup v2 at {mount} does not give its children memory and pids (enabled: {sorted(enabled)}, "
                    f"available: {available}); on a hybrid host the memory controller is bound to cgroup v1")
    return mount


@pytest.fixture
def delegated():
    mount = _v2_with_memory()
    top = os.path.join(mount, f"grpo-test-deleg-{os.getpid()}")
    os.mkdir(top)
    try:
        cgroups._write(top, "cgroup.subtree_control", "+memory +pids")
        leaf = os.path.join(top, "trainer")  # where the "trainer" runs: a leaf, as no-internal-processes requires
        os.mkdir(leaf)
        for d in (top, leaf):
            for name in ("", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"):
                if os.path.exists(os.path.join(d, name)):
                    os.chown(os.path.join(d, name), NOBODY, NOBODY)
        yield top
    finally:
        for d in sorted((os.path.join(top, n) for n in os.listdir(top) if os.path.isdir(os.path.join(top, n))),
                        reverse=True) + [top]:
            cgroups.CgroupV2.remove_dir(d)


AS_NOBODY = """
import json, os, sys
sys.path.insert(0, {repo!r})
from rewards.code import score
from rewards.sandbox import Executor, Limits, capabilities, cgroups
caps = capabilities.detect()
out = {{"level": caps.level, "kind": caps.report.get("cgroup_kind"), "parent": cgroups.delegated_parent(),
       "cap": capabilities.tree_memory_cap(caps)}}
ex = Executor(Limits(timeout_s=3, wall_factor=1.0, memory_mb=256))
out["spread"] = score("```python\\n" + {spread!r} + "\\n```", {{"asserts": ["assert f(1) == 5"]}}, executor=ex)
honest = "def f(x):\\n    b = bytearray(120 << 20)\\n    return 5"
out["honest"] = score("```python\\n" + honest + "\\n```", {{"asserts": ["assert f(1) == 5"]}}, executor=ex)
out["left"] = [n for n in os.listdir(out["parent"] or "/nonexistent") if n.startswith("grpo-sbx-")]
print(json.dumps(out))
"""

SPREAD = """
import os, time
def f(x):
    kids = []
    for _ in range(5):
        pid = os.fork()
        if pid == 0:
            b = bytearray(150 << 20)  # under RLIMIT_AS alone; 750 MiB together
            time.sleep(1.5)
            os._exit(0)
        kids.append(pid)
    return sum(os.waitpid(p, 0)[1] == 0 for p in kids)
"""


@pytest.mark.slow
def test_unprivileged_trainer_caps_the_tree_with_its_delegated_cgroup(delegated):
    leaf = os.path.join(delegated, "trainer")
    script = AS_NOBODY.format(repo=str(REPO), spread=SPREAD)
    # The shell joins the leaf as root (moving a process needs the common ancestor's cgroup.procs), then becomes
    # nobody: from there on, everything the sandbox does with cgroups it does as an ordinary user.
    cmd = ["sh", "-c", f'echo $$ > {leaf}/cgroup.procs && exec {SETPRIV} --reuid={NOBODY} --regid={NOBODY} '
                       f'--clear-groups {PY} -B -c "$0"', script]
    proc = subprocess.run(cmd, capture_output=True, timeout=300, env={}, cwd="/")
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    out = json.loads(proc.stdout.decode().splitlines()[-1])
    assert out["kind"] == "v2" and out["parent"] == delegated, out
    assert "cgroup v2" in out["cap"] and delegated in out["cap"]
    assert out["spread"] == 0.0 and out["honest"] == 1.0, out
    assert out["left"] == [], out  # every sandbox's cgroup is removed after its job
    time.sleep(0.1)
    assert not [n for n in os.listdir(delegated) if n.startswith("grpo-sbx-")]
