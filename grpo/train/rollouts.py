"""One step's experience: sample groups, score them, compute advantages (and, with dynamic sampling, drop
groups that teach nothing and sample more prompts to refill the batch)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from grpo.config import DataConfig, TrainConfig
from grpo.data import PromptRenderer, PromptStream
from grpo.errors import UserError
from grpo.parallel import World
from grpo.objectives.advantages import AdvantageFn, compute_advantages, zero_variance_groups
from grpo.sampling.base import Completion, Sampler, SamplingSettings
from grpo.seeds import derive_seed
from grpo.train.profiling import stage
from rewards.scoring import NamedReward, reward_columns, score


@dataclass
class Rollout:
    """One completion with everything the update and the logs need."""

    prompt_text: str
    prompt_ids: list[int]
    completion: Completion
    row: dict
    reward: float = 0.0
    advantage: float = 0.0
    per_reward: dict[str, float | None] = field(default_factory=dict)


@dataclass
class Experience:
    rollouts: list[Rollout]  # [B*G] group by group
    group_size: int
    dropped_groups: int = 0  # zero-variance groups removed by dynamic sampling
    zero_variance_groups: int = 0  # among the groups sampled this step
    sampled_groups: int = 0
    reward_errors: dict[str, int] = field(default_factory=dict)
    reward_values: dict[str, list[float | None]] = field(default_factory=dict)  # name -> values of sampled rollouts
    skipped_prompts: int = 0  # longer than max_prompt_tokens
    generate_s: float = 0.0
    score_s: float = 0.0
    generated_tokens: int = 0


def collect_experience(settings: SamplingSettings, *, stream: PromptStream, renderer: PromptRenderer,
                       sampler: Sampler, rewards: list[NamedReward], advantage_fn: AdvantageFn, data: DataConfig,
                       train: TrainConfig, world: World = World.single()) -> Experience:
    """This rank's share of the step: every rank reads the same prompts from the same seeded stream (so the data
    position is global and identical everywhere) and samples only its own slice, whole groups each."""
    G = settings.n
    exp = Experience(rollouts=[], group_size=G)
    kept: list[list[Rollout]] = []
    prompts_per_step, dynamic_sampling = train.prompts_per_step, train.dynamic_sampling
    kept_globally = 0
    for round_index in range(train.max_sampling_rounds if dynamic_sampling else 1):
        per_rank = -(-(prompts_per_step - kept_globally) // world.size)  # ceil: every rank samples as many
        rows, texts, ids = _next_prompts(stream, renderer, per_rank * world.size, data.max_prompt_tokens, exp)
        mine = slice(world.rank * per_rank, (world.rank + 1) * per_rank)
        rows, texts, ids = rows[mine], texts[mine], ids[mine]
        round_seed = derive_seed(settings.seed, round=round_index)
        round_settings = SamplingSettings(**{**settings.__dict__, "seed": round_seed})
        with stage("grpo/generate") as timed:
            groups = sampler.generate(ids, round_settings)
        exp.generate_s += timed.seconds
        rollouts = [Rollout(texts[g], ids[g], c, rows[g]) for g, group in enumerate(groups) for c in group.completions]
        exp.generated_tokens += sum(len(r.completion.token_ids) for r in rollouts)

        with stage("grpo/score") as timed:
            _score(rollouts, rewards, data.answer_column, settings.max_new_tokens, exp)
        exp.score_s += timed.seconds

        totals = torch.tensor([r.reward for r in rollouts], dtype=torch.float32)  # [b*G]
        flat = zero_variance_groups(totals, G)  # [b]
        exp.sampled_groups += len(groups)
        exp.zero_variance_groups += int(flat.sum())
        for g in range(len(groups)):
            if dynamic_sampling and bool(flat[g]):
                exp.dropped_groups += 1
                continue
            kept.append(rollouts[g * G:(g + 1) * G])
        if not dynamic_sampling:
            break  # one round, whole groups on every rank: nothing to agree on
        kept_globally = int(world.sum([len(kept)])[0])  # every rank takes the same decision to stop
        if kept_globally >= prompts_per_step:
            break
    kept = _share_groups(kept, prompts_per_step, world) if dynamic_sampling else kept[:prompts_per_step]
    exp.rollouts = [r for group in kept for r in group]
    assign_advantages(exp.rollouts, advantage_fn, G, world)
    return exp


def assign_advantages(rollouts: list[Rollout], advantage_fn: AdvantageFn, group_size: int,
                      world: World = World.single()) -> None:
    """Set each rollout's advantage from the rewards of this rank's whole groups; batch-level advantages
    (REINFORCE++) normalise over every rank's rollouts. Every rank holds as many rollouts (see _share_groups),
    so either all call the collective or none does."""
    if rollouts:
        totals = torch.tensor([r.reward for r in rollouts], dtype=torch.float32)  # [B*G]
        for r, a in zip(rollouts, compute_advantages(advantage_fn, totals, group_size, world.sum).tolist()):
            r.advantage = a


def _share_groups(kept: list[list[Rollout]], wanted: int, world: World) -> list[list[Rollout]]:
    """Dynamic sampling keeps a different number of groups on each rank. The step trains the first `wanted`
    groups in a global order (rank by rank), cut to a multiple of the world size and dealt out evenly, so that
    every rank runs the same number of micro-batches (FSDP's collectives need that)."""
    if not world.distributed:
        return kept[:wanted]
    everyone = [group for rank_groups in world.gather(kept) for group in rank_groups][:wanted]
    share = len(everyone) // world.size
    return everyone[world.rank * share:(world.rank + 1) * share]


def merge_experience(parts: list[Experience]) -> Experience:
    """The global step from every rank's share, for metrics and samples. Prompt skips were counted on the
    global prompt list by every rank alike, so they are taken once; times are the slowest rank's."""
    first = parts[0]
    merged = Experience(rollouts=[r for p in parts for r in p.rollouts], group_size=first.group_size,
                        skipped_prompts=first.skipped_prompts)
    for p in parts:
        merged.dropped_groups += p.dropped_groups
        merged.zero_variance_groups += p.zero_variance_groups
        merged.sampled_groups += p.sampled_groups
        merged.generated_tokens += p.generated_tokens
        merged.generate_s = max(merged.generate_s, p.generate_s)
        merged.score_s = max(merged.score_s, p.score_s)
        for name, count in p.reward_errors.items():
            merged.reward_errors[name] = merged.reward_errors.get(name, 0) + count
        for name, values in p.reward_values.items():
            merged.reward_values.setdefault(name, []).extend(values)
    return merged


def _next_prompts(stream: PromptStream, renderer: PromptRenderer, count: int, max_prompt_tokens: int,
                  exp: Experience) -> tuple[list[dict], list[str], list[list[int]]]:
    rows, texts, ids = [], [], []
    skipped_in_a_row = 0
    while len(rows) < count:
        row = stream.take(1)[0]
        text = renderer.text(row)
        tokens = renderer.ids(text)
        if len(tokens) > max_prompt_tokens:
            exp.skipped_prompts += 1
            skipped_in_a_row += 1
            if skipped_in_a_row > 10 * len(stream.rows):
                raise UserError(f"data.max_prompt_tokens: every prompt is longer than {max_prompt_tokens} tokens; "
                                f"raise data.max_prompt_tokens")
            continue
        skipped_in_a_row = 0
        rows.append(row)
        texts.append(text)
        ids.append(tokens)
    return rows, texts, ids


def _score(rollouts: list[Rollout], rewards: list[NamedReward], answer_column: str, max_new_tokens: int,
           exp: Experience) -> None:
    columns = reward_columns([r.row for r in rollouts], [r.row.get(answer_column) for r in rollouts],
                             [r.completion.token_ids for r in rollouts],
                             [r.completion.finish_reason for r in rollouts], max_new_tokens)
    scores = score(rewards, [r.prompt_text for r in rollouts], [r.completion.text for r in rollouts], columns)
    for i, r in enumerate(rollouts):
        r.reward = scores.total[i]
        r.per_reward = {name: values[i] for name, values in scores.per_reward.items()}
    for name, count in scores.errors.items():
        exp.reward_errors[name] = exp.reward_errors.get(name, 0) + count
    for name, values in scores.per_reward.items():
        exp.reward_values.setdefault(name, []).extend(values)
