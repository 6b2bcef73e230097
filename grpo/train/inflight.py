"""Where a step's episodes come from, chosen once at setup (train.max_staleness):

- Synchronous (k = 0): the step samples its prompts now, from the weights the last step pushed, then scores them.
- BoundedStaleness (k >= 1): steps are requested ahead. While the trainer trains step t, the sampler (in its own
  process: grpo/sampling/worker.py, or a vLLM server: grpo/sampling/server.py) generates the requests of steps
  t + 1 ... t + k, so an episode may be sampled by a policy up to k optimizer steps old. Steps take their episodes
  by schedule (step t takes the request made for step t, whenever it arrived), the sampler serves requests and
  weight pushes in the order sent (so the request for step t + k + 1, sent right after step t's push, is sampled
  by version t), and a reply older than k versions is dropped and sampled again, counted: it never reaches the
  loss. The objective then takes the ratio against the sampling policy's log-probs (grpo/train/update.py), which
  is what keeps it right off-policy.

Rewards are scored on a helper thread as each step's reply comes in (Scorer), while the trainer trains an earlier
step: a slow or blocked reward holds that thread, never generation, and the trainer waits for it only when it needs
that step's episodes (time/wait_generate_s then holds generation and the scoring left).

A checkpoint after step t saves the data position of step t + 1's prompts, not the stream's (which is k steps
further on): a resumed run requests the in-flight steps again, from the checkpoint's weights."""

from __future__ import annotations

import dataclasses
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from grpo.sampling.base import Reply, SamplerGone, SamplingSettings
from grpo.seeds import derive_seed
from grpo.train.episodes import Experience
from grpo.train.profiling import stage, timed
from grpo.train.rollouts import assign_advantages, collect_experience, next_prompts, scored_groups
from grpo.train.sharding import unwrap
from rewards.scoring import crash_totals

if TYPE_CHECKING:
    from grpo.train.trainer import Run

STALE_RETRIES = 3  # a sampler that serves stale weights this many times in a row for one step is broken


class EpisodeSource(Protocol):
    def start(self, run: "Run") -> None:
        """Before the first step: send what must be in flight."""

    def experience(self, run: "Run", step: int) -> Experience:
        """This rank's scored episodes for `step`, with their advantages."""

    def after_update(self, run: "Run", step: int) -> None:
        """The updated weights go to the sampler (and, ahead of time, the next request)."""

    def data_state(self, run: "Run") -> dict:
        """The data position a checkpoint saved now resumes from."""


def step_settings(run: "Run", step: int) -> SamplingSettings:
    """What a step draws. A seed per rank too: ranks draw for different prompts and must not share random numbers."""
    c = run.cfg
    return SamplingSettings.of(c.sampler, n=c.sampler.group_size, seed=derive_seed(c.seed, step, rank=run.world.rank))


def sample_and_score(run: "Run", step: int) -> Experience:
    """The synchronous step's sampling: now, from the weights pushed after step - 1."""
    c = run.cfg
    run.sampler.wake()
    crashed_before = crash_totals(run.rewards)
    exp = collect_experience(step_settings(run, step), stream=run.stream, renderer=run.renderer, sampler=run.sampler,
                             rewards=run.rewards, advantage_fn=run.advantage_fn, data=c.data, train=c.train,
                             world=run.world, policy_version=step - 1)  # the weights synced after step - 1
    run.sampler.sleep()
    exp.reward_crashes = {name: n - crashed_before[name] for name, n in crash_totals(run.rewards).items()}
    exp.blocked_s = exp.generate_s + exp.score_s
    return exp


class Synchronous:
    def start(self, run: "Run") -> None:
        pass

    def experience(self, run: "Run", step: int) -> Experience:
        return sample_and_score(run, step)

    def after_update(self, run: "Run", step: int) -> None:
        run.sampler.sync_weights(unwrap(run.policy))

    def data_state(self, run: "Run") -> dict:
        return run.stream.state_dict()


@dataclass
class Request:
    """A step's prompts, sent ahead of the step."""

    exp: Experience  # the step's record so far (prompts skipped as too long while choosing these)
    rows: list[dict]
    texts: list[str]
    ids: list[list[int]]
    settings: SamplingSettings
    data_before: dict  # the stream's position before these prompts were taken
    first_group_id: int = 0  # this rank's first prompt's place in the step (as the synchronous loop numbers them)


@dataclass
class Scored:
    """A step's reply, scored on the scorer thread (or left to the loop when it came back stale)."""

    reply: Reply
    episodes: list | None  # None: the reply was stale, the loop drops it and asks again
    crashes: dict[str, int]


class Scorer:
    """One helper thread that takes each requested step's reply as soon as the sampler has it and scores it, while
    the trainer is still training an earlier step: rewards (the reward workers, a judge's HTTP calls) are then off
    the critical path, and a reward that blocks holds this thread, never the generation. Steps are scored in the
    order requested; the rewards are never called from two threads at once (`lock`: the loop's own scoring of a
    resent stale step takes it too), so they need not be thread-safe."""

    def __init__(self, background: bool = True) -> None:
        """background=False (under torchrun): each step is taken and scored on the loop's thread when the loop
        asks for it, since taking a reply is then a collective (grpo/sampling/server.py), which must not run on
        a second thread beside the loop's own collectives."""
        self.lock = threading.Lock()
        self.jobs: queue.Queue = queue.Queue()
        self.results: dict[int, Future] = {}
        self.inline: dict[int, Any] = {}
        self.background = background
        if background:
            threading.Thread(target=self._work, name="grpo-scorer", daemon=True).start()

    def add(self, step: int, work) -> None:
        if not self.background:
            self.inline[step] = work
            return
        self.results[step] = result = Future()
        self.jobs.put((result, work))

    def take(self, step: int) -> Scored:
        if not self.background:
            return self.inline.pop(step)()
        return self.results.pop(step).result()  # a failure on the thread (a dead sampler) is raised here

    def _work(self) -> None:
        while True:
            result, work = self.jobs.get()
            try:
                result.set_result(work())
            except BaseException as exc:  # noqa: BLE001 - handed to the loop, which decides
                result.set_exception(exc)


class BoundedStaleness:
    def __init__(self, max_staleness: int, background_scoring: bool = True):
        self.k = max_staleness
        self.pending: dict[int, Request] = {}
        self._resent = 0
        self.scorer = Scorer(background_scoring)

    def start(self, run: "Run") -> None:
        last = min(run.start_step + 1 + self.k, run.cfg.train.steps)
        for step in range(run.start_step + 1, last + 1):  # all sampled by the weights pushed at setup
            self._request(run, step)

    def experience(self, run: "Run", step: int) -> Experience:
        request = self.pending.pop(step)
        with stage("grpo/wait_generate") as waited:
            scored = self.scorer.take(step)  # generated, and (unless stale) scored, while earlier steps trained
        reply, dropped, scored_here = scored.reply, 0, 0.0
        if scored.episodes is None:  # stale: asked again and scored here, on the step
            with stage("grpo/wait_generate") as resent:
                reply, dropped = self._fresh_reply(run, step, request, scored.reply)
            with stage("grpo/score") as scoring:
                scored = self._score(run, request, reply)
            waited.seconds += resent.seconds
            scored_here = scoring.seconds
        exp = request.exp
        exp.reward_crashes = scored.crashes
        exp.episodes = episodes = scored.episodes
        assign_advantages(episodes, run.advantage_fn, exp.group_size, run.world)
        exp.generate_s, exp.blocked_s = reply.generate_s, waited.seconds + scored_here
        staleness = [(step - 1) - e.policy_version for e in episodes]
        exp.figures = {"async/staleness_mean": sum(staleness) / max(len(staleness), 1),
                       "async/staleness_max": max(staleness, default=0),
                       "async/dropped_stale": dropped,
                       # the trainer waiting for its episodes (generated and scored), and the sampler for the trainer
                       "time/wait_generate_s": waited.seconds,
                       "time/wait_score_s": scored_here,
                       "time/wait_train_s": run.sampler.take_idle(),
                       "sync/bytes": run.sampler.bytes_per_push,  # one push: the weights in the sampler's dtype
                       "sync/transfer_s": run.sampler.take_transfer_s()}  # staging + sending, since last step
        return exp

    def after_update(self, run: "Run", step: int) -> None:
        run.sampler.sync_weights(unwrap(run.policy))  # version `step`: served before any request sent after it
        ahead = step + self.k + 1
        if ahead <= run.cfg.train.steps:
            self._request(run, ahead)

    def data_state(self, run: "Run") -> dict:
        return self.pending[min(self.pending)].data_before if self.pending else run.stream.state_dict()

    def _request(self, run: "Run", step: int) -> None:
        c = run.cfg
        before = run.stream.state_dict()
        exp = Experience(episodes=[], group_size=c.sampler.group_size)
        # Every rank reads the same prompts from the same seeded stream and keeps its own slice of them, as the
        # synchronous loop's first round does (grpo.train.rollouts.collect_experience).
        world = run.world
        per_rank = -(-c.train.prompts_per_step // world.size)
        rows, texts, ids = next_prompts(run.stream, run.renderer, per_rank * world.size, c.data.max_prompt_tokens,
                                        exp)
        mine = slice(world.rank * per_rank, (world.rank + 1) * per_rank)
        settings = step_settings(run, step)
        # the seed of the synchronous loop's first round: a step sampled fresh draws what it would have drawn there
        settings = dataclasses.replace(settings, seed=derive_seed(settings.seed, round=0))
        request = Request(exp, rows[mine], texts[mine], ids[mine], settings, before, world.rank * per_rank)
        ids = request.ids
        run.sampler.submit(step, ids, request.settings)
        self.pending[step] = request
        self.scorer.add(step, lambda: self._take_and_score(run, step, request))

    def _take_and_score(self, run: "Run", step: int, request: Request) -> Scored:
        """On the scorer thread: the step's reply when it comes, scored unless stale (the loop resends those)."""
        reply = run.sampler.take(step)
        if (step - 1) - reply.version > self.k:
            return Scored(reply, None, {})
        return self._score(run, request, reply)

    def _score(self, run: "Run", request: Request, reply: Reply) -> Scored:
        c = run.cfg
        with self.scorer.lock:
            crashed_before = crash_totals(run.rewards)
            episodes, _ = scored_groups(reply.groups, request.rows, request.texts, request.ids,
                                        request.first_group_id, reply.version,
                                        run.rewards, c.data, request.settings.max_new_tokens, request.exp,
                                        clock=timed)
            crashes = {name: n - crashed_before[name] for name, n in crash_totals(run.rewards).items()}
        return Scored(reply, episodes, crashes)

    def _fresh_reply(self, run: "Run", step: int, request: Request, reply: Reply) -> tuple[Reply, int]:
        """`reply` came back sampled by a version older than step - 1 - k: it is dropped (its episodes counted) and
        the prompts are sent again, behind the newest push, until a fresh one comes back."""
        dropped = 0
        for _ in range(STALE_RETRIES):
            if (step - 1) - reply.version <= self.k:
                return reply, dropped
            dropped += sum(len(g.completions) for g in reply.groups)
            self._resent += 1
            key = ("again", step, self._resent)
            run.sampler.submit(key, request.ids, request.settings)
            reply = run.sampler.take(key)
        if (step - 1) - reply.version <= self.k:
            return reply, dropped
        raise SamplerGone(f"step {step}: the sampler served weights older than train.max_staleness = "
                          f"{self.k} versions {STALE_RETRIES + 1} times in a row (last: version {reply.version}): "
                          f"the weight pushes are not reaching it; the run stops.")


def episode_source(max_staleness: int, distributed: bool = False) -> EpisodeSource:
    """distributed: under torchrun, where the sampler's calls are collectives, rewards are scored on the loop's
    thread (the ranks' samplers still generate ahead)."""
    return BoundedStaleness(max_staleness, background_scoring=not distributed) if max_staleness else Synchronous()
