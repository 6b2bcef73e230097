"""An OpenAI-compatible endpoint as the judge (a `vllm serve`, or a hosted API), through the standard library's
HTTP client: one POST per judgement, retried with backoff, its answer read with bounded cost.

Why urllib and not a client library: the judge needs one JSON POST with a timeout, retries we control (which
statuses, how long, counted in the metrics) and a cap on what it reads; the `openai` package would add a
dependency and its own retry policy on top of ours for no capability we use.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import urlsplit

MAX_RESPONSE_BYTES = 1 << 20  # a reply of a few hundred tokens is a few KB; more is not a judgement
RETRY_STATUS = (408, 409, 425, 429, 500, 502, 503, 504)  # worth another try; any other status is final
MAX_WAIT_S = 30.0  # no single backoff (or Retry-After) waits longer
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class JudgeFailure(Exception):
    """A judgement that could not be had: the text says why (never the key)."""


@dataclass
class Attempts:
    """Requests sent in one reward call, counted from the threads that send them."""

    calls: int = 0  # retries included
    retries: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, calls: int, retries: int = 0) -> None:
        with self.lock:
            self.calls += calls
            self.retries += retries


class Endpoint:
    """POSTs prompts to base_url's /chat/completions (api=chat) or /completions (api=completions)."""

    def __init__(self, base_url: str, model: str, api: str, api_key: str | None, max_tokens: int,
                 temperature: float, timeout_s: float, retries: int, backoff_s: float):
        self.url = base_url.rstrip("/") + ("/chat/completions" if api == "chat" else "/completions")
        self.model, self.api, self.max_tokens, self.temperature = model, api, max_tokens, temperature
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        # A proxy set for the package registries must not swallow a judge on this machine.
        host = urlsplit(self.url).hostname or ""
        handlers = [urllib.request.ProxyHandler({})] if host in LOOPBACK else []
        self.opener = urllib.request.build_opener(*handlers)

    def body(self, prompt: str) -> bytes:
        payload: dict = {"model": self.model, "max_tokens": self.max_tokens, "temperature": self.temperature}
        if self.api == "chat":
            payload["messages"] = [{"role": "user", "content": prompt}]
        else:
            payload["prompt"] = prompt
        return json.dumps(payload).encode()

    def reply(self, prompt: str, attempts: Attempts) -> str:
        """The judge's reply text, or JudgeFailure after the retries are spent."""
        body = self.body(prompt)
        for attempt in range(self.retries + 1):
            attempts.add(1, int(attempt > 0))
            try:
                return self._post(body)
            except _Retryable as exc:
                if attempt == self.retries:
                    raise JudgeFailure(f"{exc} (after {self.retries} retries)") from None
                time.sleep(exc.wait_s if exc.wait_s is not None else self._backoff(attempt))
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int) -> float:
        return min(MAX_WAIT_S, self.backoff_s * 2 ** attempt * random.uniform(0.75, 1.25))

    def _post(self, body: bytes) -> str:
        request = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
        try:
            with self.opener.open(request, timeout=self.timeout_s) as response:
                raw = response.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as exc:
            text = _peek(exc)
            if exc.code in RETRY_STATUS:
                raise _Retryable(f"HTTP {exc.code} from {self.url}: {text}", _retry_after(exc)) from None
            hint = " (check the key in the environment variable named by args.api_key_env)" \
                if exc.code in (401, 403) else ""
            raise JudgeFailure(f"HTTP {exc.code} from {self.url}: {text}{hint}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:  # refused, reset, ...
            reason = getattr(exc, "reason", exc)
            raise _Retryable(f"no answer from {self.url}: {type(reason).__name__}: {reason}"[:300], None) from None
        if len(raw) > MAX_RESPONSE_BYTES:
            raise JudgeFailure(f"the reply from {self.url} is over {MAX_RESPONSE_BYTES} bytes; not read")
        return self._text(raw)

    def _text(self, raw: bytes) -> str:
        try:
            choice = json.loads(raw)["choices"][0]
            text = choice["message"]["content"] if self.api == "chat" else choice["text"]
        except (ValueError, KeyError, IndexError, TypeError, RecursionError):  # RecursionError: [[[[... nested deep
            raise JudgeFailure(f"the reply from {self.url} is not an OpenAI-style completion: "
                               f"{raw[:120]!r}") from None
        if not isinstance(text, str):
            raise JudgeFailure(f"the reply from {self.url} has no text (content is {type(text).__name__})")
        return text


class _Retryable(Exception):
    def __init__(self, text: str, wait_s: float | None):
        super().__init__(text)
        self.wait_s = wait_s


def _peek(exc: urllib.error.HTTPError) -> str:
    """The first line of an error's body (servers say why there), bounded."""
    try:
        text = exc.read(300).decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - the status alone is still the message
        text = ""
    return " ".join(text.split())[:200] or str(exc.reason)


def _retry_after(exc: urllib.error.HTTPError) -> float | None:
    """A 429/503's Retry-After in seconds (capped), when it gives a number."""
    try:
        return min(MAX_WAIT_S, max(0.0, float(exc.headers.get("Retry-After", ""))))
    except (TypeError, ValueError, AttributeError):
        return None


def preflight(base_url: str, model: str, api_key: str | None, timeout_s: float = 5.0) -> list[str]:
    """What `grpo validate` warns about a served judge before a run: nothing answering at base_url, or a model
    name the server does not serve (GET /models, the OpenAI listing). Warnings, not errors: a server may well be
    started after the check."""
    url = base_url.rstrip("/") + "/models"
    host = urlsplit(url).hostname or ""
    opener = urllib.request.build_opener(*([urllib.request.ProxyHandler({})] if host in LOOPBACK else []))
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=timeout_s) as response:
            listing = json.loads(response.read(MAX_RESPONSE_BYTES))
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return [f"the judge at {base_url} refused the key (HTTP {exc.code}); check the variable named by "
                    f"args.api_key_env"]
        return []  # a server without the listing can still judge
    except RecursionError:
        return []
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return [f"nothing answers at {base_url} ({reason}); start the judge's server (e.g. `vllm serve MODEL`) "
                f"before training, or fix args.base_url"]
    try:
        served = [str(m["id"]) for m in listing["data"]][:50]
    except (KeyError, TypeError):
        return []
    if served and model not in served:
        return [f"args.model: {model!r} is not served at {base_url}; it serves {', '.join(map(repr, served))}"]
    return []
