"""sampler.backend=vllm_server: vLLM's own OpenAI-compatible server, started by `grpo serve` on GPUs (or CPUs) of
its own, samples for the trainer; weights go to it after every step. With train.max_staleness = k >= 1 it
generates the next k steps while the trainer trains (grpo/train/inflight.py).

The trainer's side is ServerSampler. One dispatcher thread serves what the trainer queued, in the order queued:
a step's generation (its prompts sent as concurrent /v1/completions requests, which vLLM batches) or a weight push.
A push is made only when the generation queued before it has come back, and the generation queued after it only
when the push is in, so every reply names the one version that sampled all of it (no partial rollouts) and the
schedule bounds staleness, as with the hf_worker.

Weights are staged when the trainer pushes (a copy of the policy as it is after that step) and sent from the stage
when their turn comes, so the trainer goes on training while the server still generates for older versions:
staging slot p % slots, reused once its last push was sent (grpo/sampling/server_transfer.py has the two ways:
a file on this machine for a server on CPU, vLLM's NCCL weight transfer on GPUs).

Every HTTP call has sampler.server.timeout_s; a refused connection (a dead server) fails at once. A failure stops
the run with the route and the reason (grpo train adds the checkpoint to resume from): never a silent wait."""

from __future__ import annotations

import math
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from grpo.config import ServerConfig
from grpo.errors import UserError
from grpo.parallel import World
from grpo.sampling.base import Completion, Group, QueuedSampler, Reply, SamplerGone, SamplingSettings
from grpo.sampling.server_http import Http, ServerCallFailed
from grpo.sampling.server_transfer import build_transfer, named_weights, weight_shapes

STATE_CALL_S = 30.0  # health and set-up calls: a server that cannot answer these quickly is not ready
PROGRESS_GRACE_S = 60.0  # beyond sampler.server.timeout_s, before a dispatcher with nothing done is given up on


class SamplerServerGone(SamplerGone):
    """The vLLM server refused, failed or stopped answering."""


class ServerReplyError(ValueError):
    """A completions reply that does not have what the trainer needs (token ids, one log-prob per token)."""


class ServerSampler(QueuedSampler):
    backend = "vllm_server"

    def __init__(self, model: torch.nn.Module, server: ServerConfig, *, eos_ids: set[int], dtype: torch.dtype,
                 first_version: int = 0, slots: int = 1, world: World = World.single(),
                 transfer_factory: Any = build_transfer):
        """Checks the server (alive, serving sampler.server.model, started by `grpo serve`), then sets up the
        weight transfer for `model`'s tensors. Pushes are labelled first_version, first_version + 1, ... (the
        trainer's set-up push carries the resumed step). dtype: the server's (model.dtype), what weights are sent
        in. transfer_factory: tests pass a recording stand-in.

        Under torchrun (world) rank 0 alone talks to the server, so one queue orders every rank's requests and
        the pushes: submit() gathers the ranks' prompts into one request, take() hands each rank its groups, and
        sync_weights() gathers a sharded policy on every rank while rank 0 stages it. All three are collectives,
        called by every rank at the same points of the loop."""
        self.server, self.world = server, world
        self.lead = world.is_main
        self.eos_ids = sorted(eos_ids)
        self.bytes_per_push = sum(math.prod(shape) * dtype.itemsize for _, shape in weight_shapes(model))
        self._splits: dict[Any, list[int]] = {}  # a request's prompts per rank (rank 0)
        problem = None
        if self.lead:
            self.http = Http(server.url, server.timeout_s)
            try:
                check_server(self.http, server)
                self.transfer = transfer_factory(server, self.http, model, max(1, slots), dtype)
            except (UserError, ServerCallFailed) as exc:  # under torchrun every rank must hear of it
                problem = exc if isinstance(exc, UserError) else SamplerServerGone(
                    f"sampler.server.url = {server.url}: setting up the weight transfer failed: {exc}")
        problem = world.gather(None if problem is None else str(problem))[0] if world.distributed else problem
        if isinstance(problem, BaseException):
            raise problem
        if problem is not None:
            raise SamplerServerGone(problem)
        self._slots = max(1, slots)
        self._next_version = first_version
        self._pushes = 0
        self._sent = 0
        self._loaded = first_version - 1  # the server serves the weights it started with until the first push
        self._outstanding: set = set()
        self._replies: dict[tuple, Any] = {}
        self._failure: str | None = None
        self._heard = threading.Condition()
        self.idle_s = 0.0
        self.transfer_s = 0.0
        self._outbox: queue.Queue = queue.Queue()
        self._closing = False
        self._busy: str | None = None  # what the dispatcher is doing: "generate", "weights" or None
        self._progress = time.monotonic()  # when the dispatcher last finished something (a call, a message)
        if self.lead:
            self._pool = ThreadPoolExecutor(max_workers=server.concurrency, thread_name_prefix="grpo-server-call")
            self._dispatcher = threading.Thread(target=self._dispatch, name="grpo-server-dispatcher", daemon=True)
            self._dispatcher.start()

    # ------------------------------------------------------------------------------------------ the Sampler protocol

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Stage `model`'s weights as the next version (into the slot whose last push was sent) and queue the push."""
        slot = self._pushes % self._slots
        self._pushes += 1
        self._next_version += 1
        if not self.lead:
            for _ in named_weights(model):  # a sharded policy's gathers need every rank; rank 0 keeps the tensors
                pass
            return
        weights = named_weights(model)  # one pass, whatever happens: its gathers pair with the other ranks'
        try:
            if self._pushes > self._slots:
                self._await(("sent", self._pushes - 1 - self._slots), "a weight push")
            started = time.monotonic()
            self.transfer.stage(weights, slot)
            with self._heard:
                self.transfer_s += time.monotonic() - started
            self._queue(("weights", self._pushes - 1, self._next_version - 1, slot))
        except Exception as exc:  # noqa: BLE001 - under torchrun every rank must hear of it, not just this one
            if not self.world.distributed:
                raise
            # the other ranks are on their way to the next take(), whose collective tells them all (the failure is
            # recorded for it): raising here alone would leave them waiting in it, or in a gather of the weights
            if not isinstance(exc, SamplerServerGone):
                self._fail(f"staging weight version {self._next_version - 1} failed: {type(exc).__name__}: {exc}")
            for _ in weights:  # the rest of the pass the staging did not get to
                pass

    def sleep(self) -> None:
        """The server holds the generation memory, on devices of its own."""

    def wake(self) -> None:
        """See sleep()."""

    def close(self) -> None:
        """Stop the dispatcher (what is still queued is dropped) and release the transfer. A generation in flight is
        abandoned; a push in flight is let finish (a weight update cut off midway would leave the server's
        transfer engine mid-update for the next run). The server keeps running: it belongs to `grpo serve`, and
        the next run (or a resumed one) uses it again."""
        if not self.lead:
            return
        self._closing = True
        with self._heard:
            self._failure = self._failure or "closed"
            self._heard.notify_all()
        self._outbox.put(None)
        self._dispatcher.join(timeout=self.server.timeout_s if self._busy == "weights" else 5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._dispatcher.is_alive():
            return  # still sending: the transfer is in use (its staging files go with the machine's /dev/shm)
        try:
            self.transfer.close()
        except (ServerCallFailed, UserError):
            pass  # a server already gone has nothing to release

    # ------------------------------------------------------------------------------------------ asynchronous use

    def submit(self, key: Any, prompt_ids: list[list[int]], settings: SamplingSettings) -> None:
        """Queue a request (every rank's prompts, in rank order, under torchrun: rank 0's settings and seed)."""
        self._sent += 1
        self._outstanding.add(key)
        everyone = self.world.gather([list(ids) for ids in prompt_ids])
        if self.lead:
            self._splits[key] = [len(part) for part in everyone]
            try:
                self._queue(("generate", key, [ids for part in everyone for ids in part], settings))
            except SamplerServerGone:
                if not self.world.distributed:
                    raise  # under torchrun the take() that follows tells every rank together

    def take(self, key: Any) -> Reply:
        """This rank's part of the reply to the request sent under `key` (a failure on rank 0 stops every rank)."""
        self._outstanding.discard(key)
        if not self.world.distributed:
            return self._await(("groups", key), "a generate request")
        shares: list | str | None = None
        if self.lead:
            try:
                reply, sizes = self._await(("groups", key), "a generate request"), self._splits.pop(key)
                starts = [sum(sizes[:r]) for r in range(len(sizes))]
                shares = [Reply(reply.groups[a:a + n], reply.version, reply.generate_s, reply.idle_s)
                          for a, n in zip(starts, sizes)]
            except SamplerServerGone as exc:
                shares = str(exc)
        shares = self.world.gather(shares)[0]
        if isinstance(shares, str):
            raise SamplerServerGone(shares)
        return shares[self.world.rank]

    def take_idle(self) -> float:
        if not self.lead:
            return 0.0
        with self._heard:
            idle, self.idle_s = self.idle_s, 0.0
        return idle

    def take_transfer_s(self) -> float:
        """Seconds spent staging and sending weights since the last call (rank 0's: it alone sends)."""
        if not self.lead:
            return 0.0
        with self._heard:
            spent, self.transfer_s = self.transfer_s, 0.0
        return spent

    # ------------------------------------------------------------------------------------------ the dispatcher

    def _queue(self, message: tuple) -> None:
        if self._failure is not None:
            self._gone(self._failure)
        self._outbox.put(message)

    def _dispatch(self) -> None:
        waiting_since = time.monotonic()
        while (message := self._outbox.get()) is not None and not self._closing:
            self._busy, self._progress = message[0], time.monotonic()
            idle_s = time.monotonic() - waiting_since
            started = time.monotonic()
            try:
                if message[0] == "generate":
                    _, key, prompt_ids, settings = message
                    groups = self._generate(prompt_ids, settings)
                    filed = {("groups", key): Reply(groups, self._loaded, time.monotonic() - started, idle_s)}
                else:
                    _, push, version, slot = message
                    self.transfer.send(slot, version)
                    self._loaded = version
                    filed = {("sent", push): True}
            except (ServerCallFailed, ServerReplyError) as exc:
                self._fail(str(exc))
                return
            except Exception as exc:  # noqa: BLE001 - whatever broke, the trainer must hear it, not wait forever
                self._fail(f"{type(exc).__name__}: {exc}")
                return
            self._busy = None
            self._progress = time.monotonic()
            with self._heard:
                self.idle_s += idle_s
                if message[0] == "weights":
                    self.transfer_s += time.monotonic() - started
                self._replies.update(filed)
                self._heard.notify_all()
            waiting_since = time.monotonic()

    def _progressed(self, _call: Any = None) -> None:
        self._progress = time.monotonic()

    def _fail(self, what: str) -> None:
        with self._heard:
            self._failure = what
            self._heard.notify_all()

    def _generate(self, prompt_ids: list[list[int]], settings: SamplingSettings) -> list[Group]:
        """One request per prompt, all in flight at once (vLLM batches them); each seeded for its prompt, so a
        prompt's samples do not depend on what else the server is decoding."""
        calls = [self._pool.submit(self.http.post, "/v1/completions", self._request(ids, settings, i))
                 for i, ids in enumerate(prompt_ids)]
        for call in calls:
            call.add_done_callback(self._progressed)  # a step of many prompts is progress, call by call
        return [Group(prompt_ids=list(ids), completions=completions_of(call.result(), settings.n))
                for ids, call in zip(prompt_ids, calls)]

    def _request(self, prompt: list[int], settings: SamplingSettings, index: int) -> dict:
        from grpo.sampling.vllm import prompt_seed  # a pure function; grpo.sampling.vllm imports vllm only when used

        greedy = settings.temperature <= 0
        return {"model": self.server.model, "prompt": prompt, "n": settings.n,
                "temperature": 0.0 if greedy else settings.temperature, "top_p": 1.0 if greedy else settings.top_p,
                "max_tokens": settings.max_new_tokens, "stop": list(settings.stop) or None,
                "stop_token_ids": self.eos_ids or None, "include_stop_str_in_output": settings.include_stop,
                "skip_special_tokens": True, "logprobs": 0, "return_token_ids": True,
                "seed": prompt_seed(settings.seed, index)}

    def _await(self, want: tuple, what: str) -> Any:
        """Wait for `want` while the dispatcher makes progress. Each HTTP call ends within timeout_s on its own;
        what can block with no deadline is a weight broadcast whose other side died (NCCL waits for ever), so a
        dispatcher busy with nothing done for timeout_s + PROGRESS_GRACE_S is given up on."""
        started = time.monotonic()
        with self._heard:
            while want not in self._replies and self._failure is None:
                quiet = time.monotonic() - max(self._progress, started)
                if self._busy is not None and quiet > self.server.timeout_s + PROGRESS_GRACE_S:
                    self._failure = (f"nothing came back for {quiet:.0f} s while the trainer waited for {what} "
                                     f"(sampler.server.timeout_s = {self.server.timeout_s:g} s; busy with "
                                     f"{'a weight push' if self._busy == 'weights' else 'generation'})")
                    break
                self._heard.wait(1.0)
            if want not in self._replies:
                self._gone(self._failure)
            return self._replies.pop(want)

    def _gone(self, how: str | None) -> None:
        raise SamplerServerGone(f"sampler.backend=vllm_server: the vLLM server at {self.server.url} failed while "
                                f"the trainer waited: {how}; the run stops.")


def check_server(http: Http, server: ServerConfig) -> None:
    """Alive, serving the model the recipe names, and started by `grpo serve` (dev routes and our extension)."""
    where = f"sampler.server.url = {server.url}"
    try:
        models = http.get("/v1/models", timeout_s=STATE_CALL_S)
    except ServerCallFailed as exc:
        raise SamplerServerGone(f"{where}: no vLLM server answers there ({exc}). Start one with `grpo serve "
                                f"RECIPE.yaml --port PORT` and point sampler.server.url at it.") from None
    served = [m.get("id") for m in (models or {}).get("data", []) if isinstance(m, dict)]
    if server.model not in served:
        raise SamplerServerGone(f"{where} serves {served}, not sampler.server.model = {server.model!r}; set "
                                f"sampler.server.model to the served name (grpo serve uses 'grpo-policy').")
    try:
        http.post("/collective_rpc", {"method": "grpo_weights_version"}, timeout_s=STATE_CALL_S)
    except ServerCallFailed as exc:
        raise SamplerServerGone(f"{where}: the server cannot take weight pushes ({exc}); start it with `grpo serve` "
                                f"(it sets VLLM_SERVER_DEV_MODE=1 and loads grpo's worker extension).") from None


def completions_of(body: Any, n: int) -> list[Completion]:
    """The n completions of one /v1/completions reply, in index order. Raises ServerReplyError when the reply
    lacks what the loss needs: token ids and one finite log-prob per token."""
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or len(choices) != n:
        raise ServerReplyError(f"/v1/completions: expected {n} choices, got "
                               f"{len(choices) if isinstance(choices, list) else type(choices).__name__}")
    out = []
    for choice in sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0):
        if not isinstance(choice, dict):
            raise ServerReplyError("/v1/completions: a choice is not an object")
        tokens = choice.get("token_ids")
        logprobs = (choice.get("logprobs") or {}).get("token_logprobs") if isinstance(choice.get("logprobs"),
                                                                                      dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise ServerReplyError("/v1/completions: a choice has no token_ids (a vLLM older than 0.10.2 does not "
                                   "return them; vllm_server needs a newer one)")
        if not isinstance(logprobs, list) or len(logprobs) != len(tokens) or not all(
                isinstance(v, (int, float)) and math.isfinite(v) for v in logprobs):
            raise ServerReplyError(f"/v1/completions: {len(tokens)} tokens but log-probs "
                                   f"{'missing' if not isinstance(logprobs, list) else len(logprobs)}; the sampled "
                                   f"token's log-prob is needed for every token")
        reason = choice.get("finish_reason")
        if reason not in ("stop", "length"):
            raise ServerReplyError(f"/v1/completions: finish_reason {reason!r} (aborted?); expected stop or length")
        text = choice.get("text")
        out.append(Completion(token_ids=tokens, logprobs=[float(v) for v in logprobs],
                              text=text if isinstance(text, str) else "", finish_reason=reason))
    return out
