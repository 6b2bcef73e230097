"""The judge reward itself: every (completion, principle) pair judged once (a cache keyed by prompt, completion,
principle and judge answers repeats, within a batch and across steps), the replies read into [0, 1] scores, and
the weighted aggregate returned with per-principle parts and counts (rewards/output.py).

A failed or unreadable judgement scores 0 for its principle and is counted: per principle
(reward/<name>/<principle>/failures), in all (failed_judgements), and as a failed completion (reward/<name>/errors,
which the trainer's guard reads: a judge that stays down stops the run like a reward that keeps crashing). Once a
request finds the endpoint unreachable after its retries, the rest of the batch fails at once rather than each
waiting out the same retries.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from rewards.judge.constitution import Constitution
from rewards.judge.endpoint import Attempts, JudgeFailure
from rewards.judge.prompt import clipped, read_score, render
from rewards.judge.settings import JudgeSettings


class JudgementCache:
    """key -> score, the oldest dropped past `size` entries; shared by threads (an abandoned call may still
    finish while the next one runs)."""

    def __init__(self, size: int):
        self.size, self.lock, self.table = size, threading.Lock(), OrderedDict()

    def get(self, key: str) -> float | None:
        with self.lock:
            value = self.table.get(key)
            if value is not None:
                self.table.move_to_end(key)
            return value

    def put(self, key: str, value: float) -> None:
        if not self.size:
            return
        with self.lock:
            self.table[key] = value
            self.table.move_to_end(key)
            while len(self.table) > self.size:
                self.table.popitem(last=False)


class Judge:
    """prompts + completions -> the reward mapping. `ask(texts, attempts)` returns one (reply | JudgeFailure) per
    text, in order: the endpoint's or the local model's."""

    def __init__(self, settings: JudgeSettings, constitution: Constitution,
                 ask: Callable[[list[str], Attempts], list[str | JudgeFailure]]):
        self.s, self.constitution, self.ask = settings, constitution, ask
        self.pattern = re.compile(settings.score_pattern)
        self.cache = JudgementCache(settings.cache_size)
        identity = [settings.backend, settings.model, settings.base_url, settings.api, settings.template_version,
                    settings.template, settings.score_pattern, settings.max_tokens, settings.temperature]
        self.identity = hashlib.sha256(json.dumps(identity).encode()).hexdigest()

    def key(self, prompt: str, completion: str, principle_index: int) -> str:
        principle = self.constitution.principles[principle_index].identity()
        text = json.dumps([self.identity, principle, prompt, completion])
        return hashlib.sha256(text.encode()).hexdigest()

    def __call__(self, prompts: list[str], completions: list[str], **kwargs: Any) -> dict:
        start = time.monotonic()
        principles = self.constitution.principles
        scores = [[0.0] * len(principles) for _ in completions]  # [N][P], normalised to [0, 1]
        wanted: dict[str, tuple[int, list[int]]] = {}  # key -> (principle, the completions it judges)
        texts: dict[str, str] = {}
        reused = 0
        for i, (prompt, completion) in enumerate(zip(prompts, completions)):
            for j in range(len(principles)):
                key = self.key(prompt, completion, j)
                cached = self.cache.get(key)
                if cached is not None:
                    scores[i][j] = cached
                    reused += 1
                elif key in wanted:  # the same completion twice in a batch (common in a group): judged once
                    wanted[key][1].append(i)
                    reused += 1
                else:
                    wanted[key] = (j, [i])
                    texts[key] = self.prompt_text(prompt, completion, j)
        attempts = Attempts()
        keys = list(wanted)
        replies = self.ask([texts[k] for k in keys], attempts) if keys else []
        failures = [0] * len(principles)
        failed_completions: set[int] = set()
        last_failure = ""
        for key, reply in zip(keys, replies):
            j, judged = wanted[key]
            principle = principles[j]
            value, why = (None, str(reply)) if isinstance(reply, JudgeFailure) else \
                read_score(reply, self.pattern, principle.low, principle.high)
            if value is None:
                failures[j] += len(judged)
                failed_completions.update(judged)
                last_failure = f"principle '{principle.name}': {why}"
                continue
            normalized = principle.normalized(value)
            self.cache.put(key, normalized)
            for i in judged:
                scores[i][j] = normalized
        counts = {"calls": float(attempts.calls), "retries": float(attempts.retries), "cached": float(reused),
                  "failed_judgements": float(sum(failures)), "seconds": time.monotonic() - start}
        counts.update({f"{p.name}/failures": float(f) for p, f in zip(principles, failures)})
        return {"rewards": [self.constitution.aggregate(row) for row in scores],
                "parts": {p.name: [row[j] for row in scores] for j, p in enumerate(principles)},
                "counts": counts, "failed": len(failed_completions), "failure": last_failure}

    def prompt_text(self, prompt: str, completion: str, principle_index: int) -> str:
        p = self.constitution.principles[principle_index]
        return render(self.s.template, prompt=prompt, completion=clipped(completion, self.s.max_completion_chars),
                      principle=p.name, instruction=p.instruction, low=p.low, high=p.high)


def endpoint_asker(endpoint: Any, concurrency: int) -> Callable[[list[str], Attempts], list[str | JudgeFailure]]:
    """Each text POSTed on up to `concurrency` threads. Once one request finds the endpoint unreachable after its
    retries, the requests not yet sent fail at once with the same reason."""
    def ask(texts: list[str], attempts: Attempts) -> list[str | JudgeFailure]:
        down: list[JudgeFailure] = []

        def one(text: str) -> str | JudgeFailure:
            if down:
                return JudgeFailure(f"not sent: {down[0]}")
            try:
                return endpoint.reply(text, attempts)
            except JudgeFailure as exc:
                if str(exc).startswith("no answer from"):
                    down.append(exc)
                return exc

        with ThreadPoolExecutor(max_workers=min(concurrency, len(texts))) as pool:
            return list(pool.map(one, texts))
    return ask


def local_asker(judge: Any) -> Callable[[list[str], Attempts], list[str | JudgeFailure]]:
    """The local model's replies, batch by batch; a failure of generate fails the texts of this call."""
    def ask(texts: list[str], attempts: Attempts) -> list[str | JudgeFailure]:
        attempts.add(len(texts))
        try:
            return list(judge.replies(texts))
        except Exception as exc:  # noqa: BLE001 - an out-of-memory or a bad input fails these judgements, not the run
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            return [JudgeFailure(f"the local judge failed: {type(exc).__name__}: {first}")] * len(texts)
    return ask
