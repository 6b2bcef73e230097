"""The sandbox without root: the far-side script, run as an ordinary uid, still gets its namespaces and private
root (where the kernel allows unprivileged user namespaces). Needs root here only to become someone else."""

import json
import os
import shutil
import subprocess
import tempfile

import pytest

from rewards.sandbox.launch import source
from rewards.sandbox.limits import Limits

SETPRIV, PY = shutil.which("setpriv"), "/usr/bin/python3"
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not SETPRIV or not os.path.exists(PY),
                                reason="needs root (to drop to nobody), setpriv and a system python3")


@pytest.fixture
def public_dir():
    # pytest's tmp_path sits under a 0700 directory that nobody cannot enter.
    path = tempfile.mkdtemp(prefix="grpo-test-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_as_nobody(where, job):
    script = os.path.join(where, "inside.py")
    with open(script, "w") as f:
        f.write(source())
    os.chmod(script, 0o644)
    cmd = [SETPRIV, "--reuid=65534", "--regid=65534", "--clear-groups", PY, "-I", "-S", "-B", script]
    out = subprocess.run(cmd, input=json.dumps(job).encode(), capture_output=True, timeout=60, env={}, cwd="/")
    return [json.loads(line) for line in out.stdout.decode().splitlines()]


def test_unprivileged_user_gets_namespaces_and_private_root(public_dir):
    binds = [p for p in ("/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc/ld.so.cache") if os.path.lexists(p)]
    base = {"isolate": {"userns": True, "ns": True}, "binds": binds, "limits": Limits(timeout_s=2).as_job()}
    probe = run_as_nobody(public_dir, {**base, "probe": True})
    if not probe or "probe" not in probe[0]:
        pytest.skip(f"unprivileged user namespaces not allowed here: {probe}")
    report = probe[0]["probe"]
    assert report["pidns"] and report["netns"] and report["private_root"] and report["host_uid"] == 65534
    prog = ("import os\nprint(len(os.environ), os.path.exists('/work'), os.path.exists('/root'),"
            " sorted(p for p in os.listdir('/proc') if p.isdigit()))\nprint(input()[::-1])")
    (result,) = run_as_nobody(public_dir, {**base, "program": prog, "runs": [{"id": 0, "kind": "stdin", "stdin": "abc"}]})
    assert result["stdout"].splitlines() == ["0 False False ['1', '2']", "cba"]


def test_unprivileged_user_gets_a_judged_run(public_dir):
    # A check-style test: the judge process beside the program's, both made by an ordinary uid, answers it.
    from rewards.sandbox.plan import plan_tests
    binds = [p for p in ("/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc/ld.so.cache") if os.path.lexists(p)]
    base = {"isolate": {"userns": True, "ns": True}, "binds": binds, "limits": Limits(timeout_s=2).as_job()}
    probe = run_as_nobody(public_dir, {**base, "probe": True})
    if not probe or "probe" not in probe[0]:
        pytest.skip(f"unprivileged user namespaces not allowed here: {probe}")
    tests = {"test": "def check(candidate):\n    for x in [len('ab'), 3]:\n        y = x * 2\n"
                     "        assert candidate(x) == y\n", "entry_point": "double"}
    run = plan_tests(tests, 2.0).runs[0]
    assert run["judge"]
    for program, verdict in (("def double(x):\n    return 2 * x", "true"), ("def double(x):\n    return x", None)):
        (result,) = run_as_nobody(public_dir, {**base, "program": program, "runs": [run]})
        assert not result.get("forged")
        lines = [json.loads(line) for line in result["res"].splitlines()]
        assert (json.dumps(lines[-1].get("v")) if "v" in lines[-1] else None) == verdict, result
