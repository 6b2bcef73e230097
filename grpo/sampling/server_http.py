"""JSON over HTTP to the vLLM server of sampler.backend=vllm_server: every call has a deadline, every reply is
read with a size cap, and every failure is one exception naming the route and what went wrong (urllib: no new
dependency for a handful of POSTs)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

MAX_REPLY_BYTES = 256 * 2**20  # a step's completions are megabytes; a reply past this is not one of ours


class ServerCallFailed(RuntimeError):
    """A call to the server failed: refused, timed out, an HTTP error status, or a reply that is not JSON."""


class Http:
    def __init__(self, url: str, timeout_s: float):
        self.base = url.rstrip("/")
        self.timeout_s = timeout_s
        # The server is on this machine or this cluster: a proxy from the environment would only get in the way.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def post(self, route: str, body: dict | None = None, timeout_s: float | None = None) -> Any:
        data = json.dumps(body if body is not None else {}).encode()
        request = urllib.request.Request(self.base + route, data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
        return self._call(request, route, timeout_s)

    def get(self, route: str, timeout_s: float | None = None) -> Any:
        return self._call(urllib.request.Request(self.base + route, method="GET"), route, timeout_s)

    def _call(self, request: urllib.request.Request, route: str, timeout_s: float | None) -> Any:
        limit = self.timeout_s if timeout_s is None else timeout_s
        try:
            with self._opener.open(request, timeout=limit) as response:
                raw = response.read(MAX_REPLY_BYTES + 1)
        except urllib.error.HTTPError as exc:
            detail = exc.read(2000).decode("utf-8", "replace").strip()
            raise ServerCallFailed(f"{route}: HTTP {exc.code} {detail}") from None
        except TimeoutError:
            raise ServerCallFailed(f"{route}: no reply within {limit:g} s (sampler.server.timeout_s)") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, TimeoutError) or "timed out" in str(reason):
                raise ServerCallFailed(f"{route}: no reply within {limit:g} s (sampler.server.timeout_s)") from None
            raise ServerCallFailed(f"{route}: {reason}") from None
        if len(raw) > MAX_REPLY_BYTES:
            raise ServerCallFailed(f"{route}: the reply is over {MAX_REPLY_BYTES} bytes")
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise ServerCallFailed(f"{route}: the reply is not JSON: {raw[:200]!r}") from None
