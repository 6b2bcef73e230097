"""Collection: one step's episodes, sampled group by group, scored, with their advantages (and, with dynamic
sampling, groups that teach nothing dropped and more prompts sampled to refill the batch). The types are in
grpo/train/episodes.py."""

from __future__ import annotations

from typing import Any

import torch

from grpo.config import DataConfig, TrainConfig
from grpo.data import PromptRenderer, PromptStream
from grpo.errors import UserError
from grpo.parallel import World
from grpo.objectives.advantages import AdvantageFn, compute_advantages, zero_variance_groups
from grpo.sampling.base import Group, Sampler, SamplingSettings
from grpo.seeds import derive_seed
from grpo.train.episodes import Episode, Experience, add_reward_reports
from grpo.train.profiling import stage
from rewards.scoring import NamedReward, reward_columns, score


def collect_experience(settings: SamplingSettings, *, stream: PromptStream, renderer: PromptRenderer,
                       sampler: Sampler, rewards: list[NamedReward], advantage_fn: AdvantageFn, data: DataConfig,
                       train: TrainConfig, world: World = World.single(), policy_version: int = 0) -> Experience:
    """This rank's share of the step: every rank reads the same prompts from the same seeded stream (so the data
    position is global and identical everywhere) and samples only its own slice, whole groups each.
    `policy_version`: the optimizer steps the sampling policy has taken, recorded on each episode."""
    G = settings.n
    exp = Experience(episodes=[], group_size=G)
    kept: list[list[Episode]] = []
    prompts_taken = 0  # over every rank and round: a group's id is its prompt's place in the step
    prompts_per_step, dynamic_sampling = train.prompts_per_step, train.dynamic_sampling
    kept_globally = 0
    for round_index in range(train.max_sampling_rounds if dynamic_sampling else 1):
        per_rank = -(-(prompts_per_step - kept_globally) // world.size)  # ceil: every rank samples as many
        rows, texts, ids = next_prompts(stream, renderer, per_rank * world.size, data.max_prompt_tokens, exp)
        mine = slice(world.rank * per_rank, (world.rank + 1) * per_rank)
        rows, texts, ids = rows[mine], texts[mine], ids[mine]
        round_seed = derive_seed(settings.seed, round=round_index)
        round_settings = SamplingSettings(**{**settings.__dict__, "seed": round_seed})
        with stage("grpo/generate") as timed:
            groups = sampler.generate(ids, round_settings, rows=rows)
        exp.generate_s += timed.seconds
        exp.tool_s += getattr(sampler, "tool_wall_s", 0.0)  # a tool-using sampler's share of that time
        first_id = prompts_taken + world.rank * per_rank
        prompts_taken += per_rank * world.size
        episodes, flat = scored_groups(groups, rows, texts, ids, first_id, policy_version, rewards, data,
                                       settings.max_new_tokens, exp)
        for g in range(len(groups)):
            if dynamic_sampling and bool(flat[g]):
                exp.dropped_groups += 1
                continue
            kept.append(episodes[g * G:(g + 1) * G])
        if not dynamic_sampling:
            break  # one round, whole groups on every rank: nothing to agree on
        kept_globally = int(world.sum([len(kept)])[0])  # every rank takes the same decision to stop
        if kept_globally >= prompts_per_step:
            break
    kept = _share_groups(kept, prompts_per_step, world) if dynamic_sampling else kept[:prompts_per_step]
    exp.episodes = [e for group in kept for e in group]
    assign_advantages(exp.episodes, advantage_fn, G, world)
    return exp


def scored_groups(groups: list[Group], rows: list[dict], texts: list[str], ids: list[list[int]], first_group_id: int,
                  policy_version: int, rewards: list[NamedReward], data: DataConfig, max_new_tokens: int,
                  exp: Experience, clock: Any = stage) -> tuple[list[Episode], torch.Tensor]:
    """One generate call's groups as scored episodes, group by group, and which groups scored all alike ([b] bool).
    `exp` counts the tokens, the scoring time and the groups. clock: how the scoring is timed (a helper thread
    passes grpo.train.profiling.timed: the loop's stages are the main thread's)."""
    G = exp.group_size
    episodes = [Episode.one_turn(ids[g], c, group_id=first_group_id + g, policy_version=policy_version,
                                 prompt_text=texts[g], row=rows[g])
                for g, group in enumerate(groups) for c in group.completions]
    exp.generated_tokens += sum(e.model_tokens for e in episodes)
    with clock("grpo/score") as scoring:
        _score(episodes, rewards, data.answer_column, max_new_tokens, exp)
    exp.score_s += scoring.seconds
    totals = torch.tensor([e.reward for e in episodes], dtype=torch.float32)  # [b*G]
    flat = zero_variance_groups(totals, G)  # [b]
    exp.sampled_groups += len(groups)
    exp.zero_variance_groups += int(flat.sum())
    return episodes, flat


def assign_advantages(episodes: list[Episode], advantage_fn: AdvantageFn, group_size: int,
                      world: World = World.single()) -> None:
    """Set each episode's advantage from the rewards of this rank's whole groups; batch-level advantages
    (REINFORCE++) normalise over every rank's episodes. Every rank holds as many episodes (see _share_groups),
    so either all call the collective or none does."""
    if episodes:
        totals = torch.tensor([e.reward for e in episodes], dtype=torch.float32)  # [B*G]
        for e, a in zip(episodes, compute_advantages(advantage_fn, totals, group_size, world.sum).tolist()):
            e.advantage = a


def _share_groups(kept: list[list[Episode]], wanted: int, world: World) -> list[list[Episode]]:
    """Dynamic sampling keeps a different number of groups on each rank. The step trains the first `wanted`
    groups in a global order (rank by rank), cut to a multiple of the world size and dealt out evenly, so that
    every rank runs the same number of micro-batches (FSDP's collectives need that)."""
    if not world.distributed:
        return kept[:wanted]
    everyone = [group for rank_groups in world.gather(kept) for group in rank_groups][:wanted]
    share = len(everyone) // world.size
    return everyone[world.rank * share:(world.rank + 1) * share]


def next_prompts(stream: PromptStream, renderer: PromptRenderer, count: int, max_prompt_tokens: int,
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


def _score(episodes: list[Episode], rewards: list[NamedReward], answer_column: str, max_new_tokens: int,
           exp: Experience) -> None:
    columns = reward_columns([e.row for e in episodes], [e.row.get(answer_column) for e in episodes],
                             [e.completion_ids for e in episodes], [e.finish_reason for e in episodes],
                             max_new_tokens, tools=[e.tools for e in episodes])
    scores = score(rewards, [e.prompt_text for e in episodes], [e.text for e in episodes], columns)
    for i, r in enumerate(episodes):
        r.reward = scores.total[i]
        r.per_reward = {name: values[i] for name, values in scores.per_reward.items()}
        r.reward_parts = {name: {part: values[i] for part, values in table.items()}
                          for name, table in scores.parts.items()}
    for name, count in scores.errors.items():
        exp.reward_errors[name] = exp.reward_errors.get(name, 0) + count
    for name, values in scores.per_reward.items():
        exp.reward_values.setdefault(name, []).extend(values)
    add_reward_reports(exp, scores.parts, scores.counts)
