"""The loop's data: an Episode per sampled completion (or conversation), a step's Experience, the per-token batch
the update consumes (TokenBatch, built once per step), and the update's figures (UpdateStats).

An episode is its prompt, then segments: model segments (token ids exactly as sampled, with the sampler's
log-probs: trained) and, between them, environment segments (a tool's output: context the model reads, never
trained on). One-turn training is an episode with one model segment. The per-token batch lays every episode's
tokens after the prompt out in a row, with a loss mask that is 1.0 on model tokens only, so the loss, the KL, the
entropy and the sampler check all read model tokens and nothing else; GRPO's one advantage per episode is
broadcast over its tokens, where a critic (later) would fill one per token."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from grpo.sampling.base import Completion, ToolTrace


@dataclass(frozen=True)
class Segment:
    """A run of tokens after the prompt: the model's (sampler_logprobs: one per token) or the environment's (None)."""

    token_ids: list[int]
    sampler_logprobs: list[float] | None = None

    @property
    def trained(self) -> bool:
        return self.sampler_logprobs is not None


def model_segment(token_ids: list[int], sampler_logprobs: list[float]) -> Segment:
    if len(token_ids) != len(sampler_logprobs):
        raise ValueError(f"model segment: {len(token_ids)} token ids but {len(sampler_logprobs)} log-probs")
    return Segment(list(token_ids), list(sampler_logprobs))


def environment_segment(token_ids: list[int]) -> Segment:
    return Segment(list(token_ids), None)


def segments_of(completion: Completion) -> list[Segment]:
    """A completion's tokens as segments: the spans its ToolTrace names as observations are the environment's."""
    ids, logprobs = completion.token_ids, completion.logprobs
    spans = completion.tools.observations if completion.tools is not None else []
    segments, at = [], 0
    for start, end in spans:
        if start > at:
            segments.append(model_segment(ids[at:start], logprobs[at:start]))
        segments.append(environment_segment(ids[start:end]))
        at = end
    if at < len(ids) or not segments:
        segments.append(model_segment(ids[at:], logprobs[at:]))
    return segments


@dataclass
class Episode:
    """One rollout: what the update trains on and what the logs show."""

    prompt_ids: list[int]
    segments: list[Segment]
    group_id: int  # the step's prompt it answers: the episodes of one group share the prompt and the baseline
    policy_version: int = 0  # optimizer steps the sampling policy had taken (step - 1 when sampled in step)
    prompt_text: str = ""
    text: str = ""  # what the rewards read: the decoded completion (the model's and the environment's text)
    finish_reason: str = "stop"
    row: dict = field(default_factory=dict)  # the dataset row (rewards get every column)
    reward: float = 0.0
    advantage: float = 0.0
    per_reward: dict[str, float | None] = field(default_factory=dict)
    reward_parts: dict[str, dict[str, float | None]] = field(default_factory=dict)  # reward -> its sub-scores
    tools: ToolTrace | None = None  # a tool-using episode's calls and limits (None: one turn)

    @classmethod
    def one_turn(cls, prompt_ids: list[int], completion: Completion, *, group_id: int, policy_version: int = 0,
                 prompt_text: str = "", row: dict | None = None, advantage: float = 0.0,
                 reward: float = 0.0) -> "Episode":
        """A prompt and one sampled completion: one model segment, or, for a tool-using episode, its model turns
        with the observations between them as environment segments."""
        return cls(prompt_ids, segments_of(completion), group_id, policy_version, prompt_text, completion.text,
                   completion.finish_reason, row if row is not None else {}, reward, advantage,
                   tools=completion.tools)

    @property
    def completion_ids(self) -> list[int]:
        """Every token after the prompt, model's and environment's, in order."""
        return [t for s in self.segments for t in s.token_ids]

    @property
    def length(self) -> int:
        """Tokens after the prompt."""
        return sum(len(s.token_ids) for s in self.segments)

    @property
    def model_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.segments if s.trained)


@dataclass
class Experience:
    """One step's episodes on this rank (group by group), with what sampling and scoring counted on the way."""

    episodes: list[Episode]
    group_size: int
    dropped_groups: int = 0  # zero-variance groups removed by dynamic sampling
    zero_variance_groups: int = 0  # among the groups sampled this step
    sampled_groups: int = 0
    reward_errors: dict[str, int] = field(default_factory=dict)
    reward_crashes: dict[str, int] = field(default_factory=dict)  # completions scored 0 by a crash in the reward
    reward_values: dict[str, list[float | None]] = field(default_factory=dict)  # name -> values of sampled episodes
    # What rewards report beside their values (rewards/output.py): name -> part -> values, name -> count -> total.
    reward_parts: dict[str, dict[str, list[float | None]]] = field(default_factory=dict)
    reward_counts: dict[str, dict[str, float]] = field(default_factory=dict)
    skipped_prompts: int = 0  # longer than max_prompt_tokens
    generate_s: float = 0.0
    tool_s: float = 0.0  # wall time of tool calls, within generate_s
    score_s: float = 0.0
    generated_tokens: int = 0
    # The step's wait for its episodes: all of generate_s and score_s when it samples, scores, then trains; with
    # bounded staleness, only what generation and scoring ahead of time had not finished (grpo/train/inflight.py)
    blocked_s: float = 0.0
    figures: dict[str, float] = field(default_factory=dict)  # the episode source's own metrics (async/...)


def merge_experience(parts: list[Experience]) -> Experience:
    """The global step from every rank's share, for metrics and samples. Prompt skips were counted on the
    global prompt list by every rank alike, so they are taken once; times are the slowest rank's."""
    first = parts[0]
    merged = Experience(episodes=[e for p in parts for e in p.episodes], group_size=first.group_size,
                        skipped_prompts=first.skipped_prompts, figures=dict(first.figures))
    for p in parts:
        merged.dropped_groups += p.dropped_groups
        merged.zero_variance_groups += p.zero_variance_groups
        merged.sampled_groups += p.sampled_groups
        merged.generated_tokens += p.generated_tokens
        merged.generate_s = max(merged.generate_s, p.generate_s)
        merged.tool_s = max(merged.tool_s, p.tool_s)
        merged.score_s = max(merged.score_s, p.score_s)
        merged.blocked_s = max(merged.blocked_s, p.blocked_s)
        for name, count in p.reward_errors.items():
            merged.reward_errors[name] = merged.reward_errors.get(name, 0) + count
        for name, count in p.reward_crashes.items():
            merged.reward_crashes[name] = merged.reward_crashes.get(name, 0) + count
        for name, values in p.reward_values.items():
            merged.reward_values.setdefault(name, []).extend(values)
        add_reward_reports(merged, p.reward_parts, p.reward_counts)
    return merged


def add_reward_reports(exp: Experience, parts: dict[str, dict[str, list]],
                       counts: dict[str, dict[str, float]]) -> None:
    """Append rewards' sub-scores and add their counts into exp (one scoring call's, or one rank's)."""
    for name, table in parts.items():
        for part, values in table.items():
            exp.reward_parts.setdefault(name, {}).setdefault(part, []).extend(values)
    for name, table in counts.items():
        mine = exp.reward_counts.setdefault(name, {})
        for key, value in table.items():
            mine[key] = mine.get(key, 0.0) + value


def tool_figures(episodes: list[Episode], tool_wall_s: float = 0.0) -> dict[str, float]:
    """metrics.jsonl's tools/* figures for a step of tool-using episodes (empty for one-turn episodes): calls,
    failed calls, turns, observation tokens per episode, tool time, and how many episodes each limit ended."""
    traces = [e.tools for e in episodes if e.tools is not None]
    if not traces:
        return {}
    n = len(traces)
    calls = sum(len(t.calls) for t in traces)
    errors = sum(bool(c.get("error", False)) for t in traces for c in t.calls)
    figures = {
        "tools/calls_mean": calls / n,
        "tools/errors": errors,
        "tools/error_fraction": errors / max(calls, 1),
        "tools/turns_mean": sum(t.turns for t in traces) / n,
        "tools/observation_tokens_mean": sum(t.observation_tokens for t in traces) / n,
        "tools/seconds": sum(t.seconds for t in traces),
        "tools/wall_s": tool_wall_s,  # the step's wall time waiting for tools (within time/generate_s)
    }
    from grpo.sampling.tools import LIMITS

    for limit in LIMITS:
        figures[f"tools/limit/{limit}"] = sum(t.limit == limit for t in traces)
    return figures


@dataclass
class TokenBatch:
    """Episodes as per-token tensors: N episodes, T positions after the prompt (the longest episode's; rows end in
    padding). Built once per step by token_batch; a micro-batch holds `rows` of it."""

    episodes: list[Episode]  # their prompts, for the layouts that put prompt and tokens in rows
    input_ids: torch.Tensor  # [N, T] long: the tokens after the prompt, exactly as sampled; pad_id past the end
    positions: torch.Tensor  # [N, T] long: each token's position in its sequence (prompt length + t)
    loss_mask: torch.Tensor  # [N, T] float: 1.0 on model tokens; 0.0 on environment tokens and padding
    advantages: torch.Tensor  # [N, T] float: the episode's advantage on each of its positions
    old_logprobs: torch.Tensor  # [N, T] float: the sampler's log-probs of model tokens; 0.0 elsewhere
    group_id: torch.Tensor  # [N] long
    version: torch.Tensor  # [N] long: the policy version that sampled each episode
    lengths: torch.Tensor  # [N] long: tokens after the prompt
    pad_id: int  # the token that fills rows past their end (and the layouts' padding)
    ref_logprobs: torch.Tensor | None = None  # [N, T] the frozen reference's, set by the update when beta > 0

    def rows(self, which: range) -> "TokenBatch":
        """These rows, cut to the longest of them (at least one column), as contiguous tensors."""
        width = max(max(self.lengths[which.start:which.stop].tolist(), default=0), 1)
        cut = lambda t: t[which.start:which.stop, :width].contiguous()  # noqa: E731
        return TokenBatch(self.episodes[which.start:which.stop], cut(self.input_ids), cut(self.positions),
                          cut(self.loss_mask), cut(self.advantages), cut(self.old_logprobs),
                          self.group_id[which.start:which.stop], self.version[which.start:which.stop],
                          self.lengths[which.start:which.stop], self.pad_id,
                          cut(self.ref_logprobs) if self.ref_logprobs is not None else None)

    def to(self, device: torch.device) -> "TokenBatch":
        move = lambda t: t.to(device) if t is not None else None  # noqa: E731
        return TokenBatch(self.episodes, move(self.input_ids), move(self.positions), move(self.loss_mask),
                          move(self.advantages), move(self.old_logprobs), move(self.group_id), move(self.version),
                          self.lengths, self.pad_id, move(self.ref_logprobs))

    @property
    def model_tokens(self) -> int:
        return int(self.loss_mask.sum())


def token_batch(episodes: list[Episode], pad_id: int) -> TokenBatch:
    """The step's per-token batch (on the CPU: micro-batches move their rows to the device)."""
    N = len(episodes)
    lengths = [e.length for e in episodes]
    T = max(max(lengths, default=0), 1)
    input_ids = torch.full((N, T), pad_id, dtype=torch.long)  # [N, T]
    positions = torch.zeros((N, T), dtype=torch.long)  # [N, T]
    loss_mask = torch.zeros((N, T))  # [N, T]
    old_logprobs = torch.zeros((N, T))  # [N, T]
    for i, e in enumerate(episodes):
        P, col = len(e.prompt_ids), 0
        positions[i, :lengths[i]] = torch.arange(P, P + lengths[i])
        for s in e.segments:
            n = len(s.token_ids)
            if n and s.trained:
                loss_mask[i, col:col + n] = 1.0
                old_logprobs[i, col:col + n] = torch.tensor(s.sampler_logprobs, dtype=torch.float32)
            if n:
                input_ids[i, col:col + n] = torch.tensor(s.token_ids)
            col += n
    advantages = torch.tensor([e.advantage for e in episodes], dtype=torch.float32)  # [N]
    return TokenBatch(episodes, input_ids, positions, loss_mask, advantages.unsqueeze(-1).expand(N, T).contiguous(),
                      old_logprobs, torch.tensor([e.group_id for e in episodes], dtype=torch.long),
                      torch.tensor([e.policy_version for e in episodes], dtype=torch.long),
                      torch.tensor(lengths, dtype=torch.long), pad_id)


@dataclass
class UpdateStats:
    loss: float = 0.0
    kl: float = 0.0
    clip_fraction: float = 0.0
    entropy: float = 0.0
    grad_norm: float = 0.0
    ratio_mean: float = 0.0
    logprob_gap: float = 0.0  # mean |sampler - trainer| log-prob of model tokens on the first pass (before any update)
    rank_logprob_gap: float = 0.0  # the same over this rank's tokens only (each rank checks its own sync)
    tokens: int = 0  # model tokens trained on (environment tokens are context only)
    correction: str = "none"  # the sampler correction applied (train.sampler_correction, auto resolved)
    correction_weight_mean: float = 1.0  # mean importance weight per token (after truncation / masking)
    correction_flagged_fraction: float = 0.0  # tokens truncated (tis) or masked (mis)
    skipped: bool = False  # a pass had a non-finite gradient and its optimizer step was not taken
    padded_fraction: float = 0.0  # share of the forward pass's positions that are padding (prompt + completion)
