"""Multi-turn episodes: a sampler that lets the model call a tool mid-reasoning. Any backend's sampler generates
the model's turns; between them the environment (environments/) answers each tool call and its observation is
appended to the episode as context.

One generate call: the first turn draws G completions of each prompt (one prefill shared, as for one-turn
training); a row that ended on the environment's stop string (a tool call) pauses; calls run in worker threads;
each observation is tokenized, cut to its budget and appended; then the paused row continues from its own context
(prompt + everything so far, as token ids, re-prefilled), n = 1, until it calls no tool or a limit ends it. A
row's G episodes stay its group. How the episodes share the engine is chosen once, by what the inner sampler can
do: on an engine that takes requests while it decodes (vLLM: `open_requests`), each episode continues the moment
its own observation is in, and a slow tool holds up nobody else (_streamed); on the transformers sampler the batch
goes turn by turn, each turn's calls together (_in_turns). Streamed episodes are reproducible with
sampler.vllm.seed_mode=request (each request seeded by its episode and turn); with one engine seed the draws
depend on when the tools answered.

The limits of an episode, each counted when it ends one (ToolTrace.limit): model turns, tool calls, tokens after
the prompt (model's and environment's), tool seconds; an observation longer than its budget is cut (counted in
observation tokens, not a limit)."""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from environments import as_reply
from environments.registry import Environment
from grpo.config import EpisodeLimits
from grpo.sampling.base import Completion, Group, Sampler, SamplingSettings, ToolTrace
from grpo.seeds import derive_seed

LIMITS = ("turns", "tool_calls", "total_tokens", "tool_seconds")


@dataclass
class _Episode:
    """One episode while it runs: its pieces after the prompt (model turns with log-probs, observations without)."""

    prompt_ids: list[int]
    row: dict
    pieces: list[tuple[list[int], list[float] | None, str]] = field(default_factory=list)
    trace: ToolTrace = field(default_factory=lambda: ToolTrace(turns=0))
    finish_reason: str = "stop"
    open: bool = True  # paused on a tool call, waiting for its observation

    @property
    def length(self) -> int:
        return sum(len(ids) for ids, _, _ in self.pieces)

    @property
    def text(self) -> str:
        return "".join(text for _, _, text in self.pieces)

    def context(self) -> list[int]:
        return self.prompt_ids + [t for ids, _, _ in self.pieces for t in ids]

    def end(self, limit: str | None = None) -> None:
        self.open = False
        if limit is not None:
            self.trace.limit = limit
            self.finish_reason = "length"  # cut by a budget: no answer-less fallback reading (rewards/math.py)

    def completion(self) -> Completion:
        tokens, logprobs, spans = [], [], []
        for ids, lps, _ in self.pieces:
            if lps is None:
                spans.append((len(tokens), len(tokens) + len(ids)))
            tokens += ids
            logprobs += lps if lps is not None else [0.0] * len(ids)
        self.trace.observations = spans
        after = max((i for i, (_, lps, _) in enumerate(self.pieces) if lps is None), default=-1)
        self.trace.final_text = "".join(text for _, _, text in self.pieces[after + 1:])
        self.trace.transcript = [{"role": "model" if lps is not None else "tool", "text": text}
                                 for _, lps, text in self.pieces]
        return Completion(tokens, logprobs, self.text, self.finish_reason, tools=self.trace)


class ToolSampler:
    """Wraps a sampler (hf or vllm) to run tool-using episodes; the rest of the Sampler interface is the inner's."""

    def __init__(self, inner: Sampler, tokenizer, environment: Environment, limits: EpisodeLimits,
                 any_rank: Callable[[bool], bool] | None = None):
        """any_rank: for a sharded policy decoding in lockstep (FSDP under torchrun), whether any rank still has an
        episode to continue: every rank then makes the same generate calls with the same budget, a rank with none
        left decoding a stand-in row it discards (as the decoding loop itself steps on for ranks that are done)."""
        self.inner = inner
        self.any_rank = any_rank
        self.backend = inner.backend
        self.tokenizer = tokenizer
        self.environment = environment
        self.limits = limits
        self.tool_wall_s = 0.0  # the last generate's wall time spent waiting for tools (part of time/generate_s)
        self._threads = ThreadPoolExecutor(max_workers=max(1, limits.workers), thread_name_prefix="tool")
        # Chosen once: an engine that takes requests while it decodes (vLLM) runs every episode on its own clock;
        # otherwise, and in lockstep under FSDP (every rank must make the same calls), the batch goes turn by turn.
        streams = bool(getattr(inner, "streams", False)) and any_rank is None
        self._run = self._streamed if streams else self._in_turns

    def generate(self, prompt_ids: list[list[int]], settings: SamplingSettings,
                 rows: list[dict] | None = None) -> list[Group]:
        """rows: each prompt's dataset row, which the environment gets with the transcript ({} when not given)."""
        turn_settings = replace(settings, stop=tuple(settings.stop) + self.environment.stop, include_stop=True,
                                max_new_tokens=min(settings.max_new_tokens, self.limits.max_total_tokens))
        rows = rows if rows is not None else [{} for _ in prompt_ids]
        self.tool_wall_s = 0.0
        episodes = self._run(prompt_ids, settings, turn_settings, rows)
        return [Group(prompt_ids=list(ids), completions=[e.completion() for e in row])
                for ids, row in zip(prompt_ids, episodes)]

    def _in_turns(self, prompt_ids: list[list[int]], settings: SamplingSettings, turn_settings: SamplingSettings,
                  rows: list[dict]) -> list[list[_Episode]]:
        """The batch turn by turn: every episode's turn is drawn, the calls run together, and the episodes that
        go on continue together in the next generate call."""
        lim = self.limits
        groups = self.inner.generate(prompt_ids, turn_settings)
        episodes = [[_Episode(list(g.prompt_ids), row) for _ in g.completions] for g, row in zip(groups, rows)]
        flat = [e for row in episodes for e in row]
        for e, c in zip(flat, [c for g in groups for c in g.completions]):
            self._add_turn(e, c)
        turn = 1
        while True:
            waiting = [e for e in flat if e.open]
            if waiting:
                self._observe(waiting)
            going = [e for e in waiting if e.open]
            if not (self.any_rank(bool(going)) if self.any_rank is not None else going):
                break
            turn += 1
            # In lockstep every rank decodes with one budget; alone, no more than the roomiest episode can take
            room = lim.max_total_tokens if self.any_rank is not None else \
                max(lim.max_total_tokens - e.length for e in going)
            next_settings = replace(turn_settings, n=1, seed=derive_seed(settings.seed, turn),
                                    max_new_tokens=min(settings.max_new_tokens, room))
            contexts = [e.context() for e in going] or [flat[0].prompt_ids]  # the stand-in row, discarded
            drawn = self.inner.generate(contexts, next_settings)
            for e, g in zip(going, drawn):
                self._add_turn(e, g.completions[0])
        return episodes

    def _streamed(self, prompt_ids: list[list[int]], settings: SamplingSettings, turn_settings: SamplingSettings,
                  rows: list[dict]) -> list[list[_Episode]]:
        """Every episode on its own clock, on an engine that takes requests while it decodes: a turn that ends on
        a tool call hands the call to a worker thread, and the moment its observation is in, the episode goes
        back to the engine as a new request over its whole context (prefix caching makes the prefill cheap),
        while the other episodes decode on. A slow tool holds up its own episode, never the step's others."""
        episodes = [[_Episode(list(ids), row) for _ in range(settings.n)] for ids, row in zip(prompt_ids, rows)]
        flat = [e for group in episodes for e in group]
        number = {id(e): i for i, e in enumerate(flat)}
        calls: dict[Future, tuple[_Episode, float]] = {}  # the tool calls in flight: episode, when it was sent
        with self.inner.open_requests(settings.seed) as engine:
            for i, ids in enumerate(prompt_ids):
                engine.add(("group", i), list(ids), turn_settings, index=i)
            while engine.pending() or calls:
                for (kind, i), completions in engine.step() if engine.pending() else []:
                    for e, c in zip(episodes[i] if kind == "group" else [flat[i]], completions):
                        self._add_turn(e, c)
                        if e.open:
                            calls[self._threads.submit(_timed_call, self.environment, e)] = (e, time.perf_counter())
                for e, result, budget in self._answered(calls, idle=not engine.pending()):
                    self._settle(e, result, budget)
                    if e.open:
                        i = number[id(e)]
                        engine.add(("episode", i), e.context(), replace(
                            turn_settings, n=1, seed=derive_seed(settings.seed, e.trace.turns + 1),
                            max_new_tokens=min(settings.max_new_tokens, self.limits.max_total_tokens - e.length)),
                            index=i)
        return episodes

    def _answered(self, calls: dict[Future, tuple[_Episode, float]], idle: bool
                  ) -> list[tuple[_Episode, tuple | None, float]]:
        """The tool calls that are done, or past their episode's tool-time budget (result None), removed from
        `calls`. With the engine idle, waits for the first of them (that wait is the step's tools/wall_s)."""
        if not calls:
            return []
        now = time.perf_counter()
        budgets = {f: max(self.limits.max_tool_seconds - e.trace.seconds, 0.0) for f, (e, _) in calls.items()}
        if idle and not any(f.done() for f in calls):
            first = min(sent + budgets[f] + 1.0 for f, (_, sent) in calls.items())
            wait(list(calls), timeout=max(first - now, 0.0), return_when=FIRST_COMPLETED)
            self.tool_wall_s += time.perf_counter() - now
            now = time.perf_counter()
        out = []
        for f, (e, sent) in list(calls.items()):
            if f.done() or now - sent > budgets[f] + 1.0:
                del calls[f]
                out.append((e, f.result() if f.done() else None, budgets[f]))
        return out

    def _add_turn(self, e: _Episode, c: Completion) -> None:
        """Append a model turn (cut to the episode's token budget); pause the episode if it called the tool."""
        room = self.limits.max_total_tokens - e.length
        ids, lps, text, reason = c.token_ids, c.logprobs, c.text, c.finish_reason
        if len(ids) > room:  # the call's budget was the roomiest row's
            ids, lps = ids[:room], lps[:room]
            text, reason = self.tokenizer.decode(ids, skip_special_tokens=True), "length"
        e.pieces.append((list(ids), list(lps), text))
        e.trace.turns += 1
        e.finish_reason = reason
        called = reason == "stop" and any(text.endswith(s) for s in self.environment.stop)
        if not called:
            e.end("total_tokens" if reason == "length" and e.length >= self.limits.max_total_tokens else None)
        elif e.trace.turns >= self.limits.max_turns:
            e.end("turns")
        elif len(e.trace.calls) >= self.limits.max_tool_calls:
            e.end("tool_calls")
        elif e.trace.seconds >= self.limits.max_tool_seconds:
            e.end("tool_seconds")

    def _observe(self, waiting: list[_Episode]) -> None:
        """Run the waiting episodes' tool calls at once and append each observation (or end the episode)."""
        started = time.perf_counter()
        futures = [self._threads.submit(_timed_call, self.environment, e) for e in waiting]
        budget = max(self.limits.max_tool_seconds - min(e.trace.seconds for e in waiting), 0.0)
        wait(futures, timeout=budget + 1.0)
        self.tool_wall_s += time.perf_counter() - started
        for e, future in zip(waiting, futures):
            self._settle(e, future.result() if future.done() else None, budget)

    def _settle(self, e: _Episode, result: tuple[tuple[str, bool] | None, float] | None, budget: float) -> None:
        """Append a tool call's observation to its episode, or end the episode: result None is a call past every
        budget (its thread is abandoned; a sandboxed run ends on its own), a reply None a call the environment
        could not read."""
        if result is None:
            e.trace.seconds = max(e.trace.seconds, self.limits.max_tool_seconds)
            e.trace.calls.append({"call": e.pieces[-1][2], "output": "", "error": True, "seconds": round(budget, 3)})
            e.end("tool_seconds")
            return
        reply, seconds = result
        e.trace.seconds += seconds
        if reply is None:  # no call the environment could read: the episode ends as the model left it
            e.end()
            return
        text, error = reply
        e.trace.calls.append({"call": e.pieces[-1][2], "output": text, "error": error, "seconds": round(seconds, 4)})
        if e.trace.seconds > self.limits.max_tool_seconds:
            e.end("tool_seconds")
            return
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][:self.limits.max_observation_tokens]
        room = self.limits.max_total_tokens - e.length
        if len(ids) >= room:  # no room left for the model to read it and answer
            e.end("total_tokens")
            return
        e.pieces.append((ids, None, self.tokenizer.decode(ids, skip_special_tokens=True)))
        e.trace.observation_tokens += len(ids)

    def sync_weights(self, model: torch.nn.Module) -> None:
        self.inner.sync_weights(model)

    def sleep(self) -> None:
        self.inner.sleep()

    def wake(self) -> None:
        self.inner.wake()

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        self.inner.close()


def _timed_call(environment: Environment, e: _Episode) -> tuple[tuple[str, bool] | None, float]:
    """The environment's reply to the episode's transcript, and how long it took. An exception in the environment
    is an error observation (the model sees it, the run goes on)."""
    started = time.perf_counter()
    try:
        reply = as_reply(environment(dict(e.row), e.text))
    except Exception as exc:  # noqa: BLE001 - an environment's failure is the episode's, never the run's
        reply = (f"environment error: {type(exc).__name__}: {str(exc)[:200]}", True)
    return reply, time.perf_counter() - started

