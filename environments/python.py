"""The python environment: the model writes a ```python block, then ```output; the block runs in the code
reward's sandbox (rewards/sandbox: fresh namespaces, no network, rlimits, empty environment) and what it printed,
or the exception it raised, comes back in the output block, which the environment closes:

    ```python
    print(37 * 48)
    ```
    ```output
    1776
    ```

state: keep (default) replays the episode's earlier cells, their output discarded, before the new one, so
variables carry over as in a notebook (nothing lives between calls: the transcript is the state); fresh runs the
new cell alone. The reply is cut to max_output_chars; the sandbox caps what a program may print anyway."""

from __future__ import annotations

import functools

from rewards.code import PY_TAGS, fenced_blocks

STOP = "```output"
STATES = ("keep", "fresh")

# Runs inside the sandbox: the earlier cells silently (a failing one is skipped, as a notebook would have shown
# its error then), then the new cell with its output and traceback visible.
_RUNNER = """\
import contextlib as _c, io as _io
_cells = {cells!r}
for _cell in _cells[:-1]:
    with _c.redirect_stdout(_io.StringIO()), _c.redirect_stderr(_io.StringIO()):
        try:
            exec(compile(_cell, "<cell>", "exec"), globals())
        except BaseException:
            pass
exec(compile(_cells[-1], "<cell>", "exec"), globals())
"""


def python(row: dict, transcript: str, *, state: str = "keep", timeout_s: float = 5.0, memory_mb: int = 512,
           max_output_chars: int = 2000, allow_unsandboxed: bool = False) -> dict | None:
    """Run the last ```python block before the ```output that ended the turn."""
    if not transcript.endswith(STOP):
        return None
    cells = [body for tag, body in fenced_blocks(transcript[:-len(STOP)]) if tag.lower() in PY_TAGS]
    if not cells:
        return {"observation": "\nerror: no ```python block before ```output\n```\n", "error": True}
    program = _RUNNER.format(cells=cells if state == "keep" else cells[-1:])
    executor = _executor(float(timeout_s), int(memory_mb), bool(allow_unsandboxed))
    result = executor.run(program, [{"id": 0, "kind": "stdin", "stdin": ""}])[0]
    last = result.attempts[-1] if result.attempts else {}
    text, error = _output(last, float(timeout_s))
    if len(text) > max_output_chars:
        text = text[:max_output_chars] + f"\n... ({len(text) - max_output_chars} more characters cut)"
    return {"observation": "\n" + text + ("" if text.endswith("\n") or not text else "\n") + "```\n", "error": error}


python.stop = [STOP]


def setup(*, state: str = "keep", timeout_s: float = 5.0, memory_mb: int = 512, max_output_chars: int = 2000,
          allow_unsandboxed: bool = False) -> None:
    """Checked once before training: the settings, and that this host can sandbox (else a UserError says why)."""
    from rewards.errors import UserError

    if state not in STATES:
        raise UserError(f"environment python: state={state!r} is not one of {', '.join(STATES)}; pick one.")
    _executor(float(timeout_s), int(memory_mb), bool(allow_unsandboxed))


python.setup = setup


@functools.lru_cache(maxsize=4)
def _executor(timeout_s: float, memory_mb: int, allow_unsandboxed: bool):
    from rewards.sandbox import Executor, Limits

    return Executor(Limits(timeout_s=timeout_s, memory_mb=memory_mb, output_kb=64, max_job_s=timeout_s * 4 + 10),
                    allow_unsandboxed)


def _output(run: dict, timeout_s: float) -> tuple[str, bool]:
    """What the cell printed, then its error: the traceback's last line, or how the sandbox stopped it."""
    stdout = str(run.get("stdout", ""))
    end, code = run.get("end"), run.get("code")
    if end == "exit" and code == 0:
        return stdout, False
    if end == "exit":
        lines = [line for line in str(run.get("stderr", "")).splitlines() if line.strip()]
        return stdout + (lines[-1] if lines else f"exited with status {code}"), True
    if end in ("timeout", "cpu_limit"):
        return stdout + f"timed out after {timeout_s:g} s", True
    return stdout + f"stopped: {end or 'no result from the sandbox'}", True
