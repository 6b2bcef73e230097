"""How the training pass lays one micro-batch's rollouts out in rows (train.packing, chosen once per run):

padded         a row per completion, its prompt left-padded and the completion right-padded to the longest (the
               layout every other one is checked against)
sequences      prompt + completion pairs packed into rows with no pad tokens between them, position ids restarting
               at each pair; attention stays inside each pair: transformers reads the restarts from the position
               ids (varlen flash-attention kernels on CUDA, a block-diagonal mask with sdpa / eager)
shared_prompt  a group's prompt once, then its completions, in one row: each completion attends to the prompt and
               to itself (a 4D mask), so the prompt's forward and backward run once per group instead of G times

Every layout yields the same per-token log-probs [n, C] (to float rounding: tests/test_packing.py), so the loss
code never knows which one ran. Micro-batches are cut by a sequence count or, with
train.max_tokens_per_micro_batch, by the tokens their rows hold."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grpo.train.rollouts import Rollout

LAYOUTS = ("padded", "sequences", "shared_prompt")
# A shared_prompt block (a prompt and the completions after it) is cut at this length: its mask and attention
# grow with the square of it, and past a few thousand tokens that costs more than the prompt copies it saves.
SHARED_BLOCK_TOKENS = 2048


@dataclass
class Layout:
    kind: str  # one of LAYOUTS
    micro_batch_size: int  # sequences per micro-batch when max_tokens is 0
    max_tokens: int  # 0: cut by micro_batch_size; else a micro-batch's rows hold at most this many positions
    # A packed row's capacity, at least the longest block (0: just that); None: one row per micro-batch, for
    # varlen kernels, whose cost grows with each sequence's length and not the row's
    row_tokens: int | None = 0
    # shared_prompt's mask: bool for sdpa (True = attend), additive float for eager attention (which adds it)
    mask_dtype: torch.dtype = torch.bool


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # [R, L]
    attention_mask: torch.Tensor | None  # padded [R, L]; shared_prompt [R, 1, L, L] additive; sequences None
    position_ids: torch.Tensor  # [R, L] positions within each sequence, as generation counted them
    logits_at: int | torch.Tensor  # padded: the last C+1 positions; packed: bool [R, L], the positions needed
    source: torch.Tensor  # [n, C] which of the kept positions' logits predicts each completion token
    targets: torch.Tensor  # [n, C] completion token ids
    mask: torch.Tensor  # [n, C] 1.0 on completion tokens
    sampler_logprobs: torch.Tensor  # [n, C]
    advantages: torch.Tensor  # [n]
    positions: int  # R * L: what the forward pass computes
    real_positions: int  # of which hold a token
    # Varlen flash-attention kernels (sequences in one row): the sequences' boundaries, computed once here and
    # passed to the forward (cu_seq_lens_q/k [S+1] int32, max_length_q/k int), instead of each layer deriving them
    # from position_ids again (with a host sync for the max); None for every other layout.
    varlen: dict | None = None


def plan_micro_batches(rollouts: list[Rollout], layout: Layout, count_at_least: int = 1) -> list[list[Rollout]]:
    """Consecutive runs of rollouts, each one micro-batch; at least `count_at_least` of them (every rank must run
    as many forward/backward passes as the others, so ranks agree on the largest count first)."""
    if layout.max_tokens <= 0:
        size = max(layout.micro_batch_size, 1)
        chunks = [rollouts[i:i + size] for i in range(0, len(rollouts), size)]
    else:
        chunks, current = [], []
        for r in rollouts:
            if current and _cost(current + [r], layout.kind) > layout.max_tokens:
                chunks.append(current)
                current = []
            current.append(r)
        if current:
            chunks.append(current)
    while len(chunks) < min(count_at_least, len(rollouts)):  # split the largest until there are enough
        i = max(range(len(chunks)), key=lambda k: len(chunks[k]))
        half = len(chunks[i]) // 2
        chunks[i:i + 1] = [chunks[i][:half], chunks[i][half:]]
    return chunks


def _cost(rollouts: list[Rollout], kind: str) -> int:
    """Positions the rows of these rollouts hold (before rows are padded to a common length)."""
    if kind == "padded":
        return len(rollouts) * (max(len(r.prompt_ids) for r in rollouts) +
                                max(len(r.completion.token_ids) for r in rollouts))
    if kind == "sequences":
        return sum(len(r.prompt_ids) + len(r.completion.token_ids) for r in rollouts)
    return sum(_block_len(block) for block in _prompt_blocks(rollouts, SHARED_BLOCK_TOKENS))


def make_micro_batch(rollouts: list[Rollout], layout: Layout, pad_id: int, device: torch.device) -> MicroBatch:
    if layout.kind == "padded":
        return _padded(rollouts, pad_id, device)
    share = layout.kind == "shared_prompt"
    blocks = _prompt_blocks(rollouts, layout.row_tokens or SHARED_BLOCK_TOKENS) if share else [[r] for r in rollouts]
    mb = _packed(rollouts, _fill_rows(blocks, layout.row_tokens), pad_id, device, share, layout.mask_dtype)
    if layout.row_tokens is None and not share:
        mb.varlen = varlen_kwargs([len(r.prompt_ids) + len(r.completion.token_ids) for r in rollouts], device)
    return mb


def varlen_kwargs(lengths: list[int], device: torch.device) -> dict:
    """flash-attention's varlen arguments for sequences of these lengths laid end to end in one row."""
    bounds = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32).to(device)  # [S+1]
    longest = max(lengths)
    return {"cu_seq_lens_q": bounds, "cu_seq_lens_k": bounds, "max_length_q": longest, "max_length_k": longest}


def _padded(rollouts: list[Rollout], pad_id: int, device: torch.device) -> MicroBatch:
    n = len(rollouts)
    P = max(len(r.prompt_ids) for r in rollouts)
    C = max(max(len(r.completion.token_ids) for r in rollouts), 1)
    input_ids = torch.full((n, P + C), pad_id, dtype=torch.long)  # [n, P+C]
    attention = torch.zeros((n, P + C), dtype=torch.long)  # [n, P+C]
    for i, r in enumerate(rollouts):
        p, c = r.prompt_ids, r.completion.token_ids
        input_ids[i, P - len(p):P] = torch.tensor(p)
        attention[i, P - len(p):P] = 1
        if c:
            input_ids[i, P:P + len(c)] = torch.tensor(c)
            attention[i, P:P + len(c)] = 1
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)  # [n, P+C] count only real tokens, as generation did
    targets, mask, sampler_lp, advantages = _completion_tensors(rollouts, C, pad_id)
    to = lambda t: t.to(device)  # noqa: E731
    source = torch.arange(n * C).view(n, C)  # [n, C] the logits of the last C+1 positions but one, flattened
    return MicroBatch(to(input_ids), to(attention), to(position_ids), C + 1, to(source), to(targets), to(mask),
                      to(sampler_lp), to(advantages), positions=n * (P + C), real_positions=int(attention.sum()))


def _completion_tensors(rollouts: list[Rollout], C: int, pad_id: int) -> tuple[torch.Tensor, ...]:
    n = len(rollouts)
    targets = torch.full((n, C), pad_id, dtype=torch.long)  # [n, C]
    mask = torch.zeros((n, C))  # [n, C]
    sampler_lp = torch.zeros((n, C))  # [n, C]
    for i, r in enumerate(rollouts):
        c = r.completion.token_ids
        if c:
            targets[i, :len(c)] = torch.tensor(c)
            mask[i, :len(c)] = 1.0
            sampler_lp[i, :len(c)] = torch.tensor(r.completion.logprobs, dtype=torch.float32)
    advantages = torch.tensor([r.advantage for r in rollouts], dtype=torch.float32)  # [n]
    return targets, mask, sampler_lp, advantages


def _prompt_blocks(rollouts: list[Rollout], row_tokens: int | None) -> list[list[Rollout]]:
    """Runs of consecutive rollouts with the same prompt (a group, or the part of one in this micro-batch), each
    cut so that the prompt and its completions fit in a row (a completion too long for any row keeps its own)."""
    blocks: list[list[Rollout]] = []
    for r in rollouts:
        if blocks and blocks[-1][0].prompt_ids == r.prompt_ids and (
                row_tokens is None or _block_len(blocks[-1] + [r]) <= row_tokens):
            blocks[-1].append(r)
        else:
            blocks.append([r])
    return blocks


def _block_len(block: list[Rollout]) -> int:
    return len(block[0].prompt_ids) + sum(len(r.completion.token_ids) for r in block)


def _fill_rows(blocks: list[list[Rollout]], row_tokens: int | None) -> list[list[list[Rollout]]]:
    """First-fit decreasing: rows no longer than the longest block (or row_tokens), so a row's attention costs no
    more than the padded layout's longest row; None puts every block in one row."""
    if row_tokens is None:
        return [blocks]
    capacity = max(row_tokens, max(_block_len(b) for b in blocks))
    rows: list[list[list[Rollout]]] = []
    room: list[int] = []
    for block in sorted(blocks, key=_block_len, reverse=True):
        need = _block_len(block)
        fit = next((k for k, free in enumerate(room) if free >= need), None)
        if fit is None:
            rows.append([])
            room.append(capacity)
            fit = len(rows) - 1
        rows[fit].append(block)
        room[fit] -= need
    return rows


def _packed(rollouts: list[Rollout], rows: list[list[list[Rollout]]], pad_id: int, device: torch.device,
            share: bool, mask_dtype: torch.dtype) -> MicroBatch:
    """Rows of blocks [prompt, completion, completion, ...]; each completion token is predicted by the position
    before it, the first by the prompt's last position (shared by the block's completions)."""
    R, L = len(rows), max(sum(_block_len(b) for b in row) for row in rows)
    C = max(max(len(r.completion.token_ids) for r in rollouts), 1)
    input_ids = torch.full((R, L), pad_id, dtype=torch.long)  # [R, L]
    position_ids = torch.zeros((R, L), dtype=torch.long)  # [R, L]
    keep = torch.zeros((R, L), dtype=torch.bool)  # [R, L] positions whose logits predict a completion token
    group = torch.full((R, L), -1, dtype=torch.long)  # [R, L] block of each position (-1: padding)
    part = torch.zeros((R, L), dtype=torch.long)  # [R, L] 0: prompt, j: the block's j-th completion
    predictor: dict[int, tuple[int, torch.Tensor]] = {}  # id(rollout) -> (row, columns predicting its tokens)
    block_index = 0
    for row_index, row in enumerate(rows):
        col = 0
        for block in row:
            prompt = block[0].prompt_ids
            assert prompt, "a rollout without prompt tokens cannot be trained"  # the renderer never makes one
            P = len(prompt)
            input_ids[row_index, col:col + P] = torch.tensor(prompt)
            position_ids[row_index, col:col + P] = torch.arange(P)
            group[row_index, col:col + P] = block_index
            last_prompt = col + P - 1
            col += P
            for j, r in enumerate(block, start=1):
                c = r.completion.token_ids
                if c:
                    input_ids[row_index, col:col + len(c)] = torch.tensor(c)
                    position_ids[row_index, col:col + len(c)] = torch.arange(P, P + len(c))
                    group[row_index, col:col + len(c)] = block_index
                    part[row_index, col:col + len(c)] = j
                columns = torch.cat([torch.tensor([last_prompt]), torch.arange(col, col + max(len(c) - 1, 0))])[:len(c)]
                predictor[id(r)] = (row_index, columns)
                keep[row_index, columns] = True
                col += len(c)
            block_index += 1
        # Padding continues the positions from 0 as a sequence of its own: never a restart inside a real one.
        position_ids[row_index, col:] = torch.arange(L - col)
    if not keep.any():  # every completion empty: one position all the same, so the gathers have a row to read
        keep[0, 0] = True
    kept_rank = keep.flatten().cumsum(0).view(R, L) - 1  # [R, L] index of each kept position among the kept
    source = torch.zeros((len(rollouts), C), dtype=torch.long)  # [n, C]; 0 on padding (masked out)
    for i, r in enumerate(rollouts):
        row_index, columns = predictor[id(r)]
        source[i, :len(columns)] = kept_rank[row_index, columns]
    attention = _shared_prompt_mask(group, part, mask_dtype) if share else None
    targets, mask, sampler_lp, advantages = _completion_tensors(rollouts, C, pad_id)
    to = lambda t: t.to(device)  # noqa: E731
    return MicroBatch(to(input_ids), to(attention) if attention is not None else None, to(position_ids), to(keep),
                      to(source), to(targets), to(mask), to(sampler_lp), to(advantages), positions=R * L,
                      real_positions=int((group >= 0).sum()))


def _shared_prompt_mask(group: torch.Tensor, part: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[R, L] block and part ids -> mask [R, 1, L, L] (bool, or additive in `dtype`): query q sees key k when
    both are in one block, k is not after q, and k is the prompt or q's own completion. A pad position sees only itself (a row of
    the softmax with nothing to see would be NaN, and NaN times a zero weight is still NaN)."""
    L = group.shape[1]
    same_block = group.unsqueeze(2) == group.unsqueeze(1)  # [R, L(q), L(k)]
    causal = torch.ones(L, L, dtype=torch.bool).tril()  # [L, L] k <= q
    visible_part = (part.unsqueeze(1) == 0) | (part.unsqueeze(2) == part.unsqueeze(1))  # [R, L, L]
    allowed = same_block & causal & visible_part & (group.unsqueeze(2) >= 0)  # [R, L, L]
    allowed |= torch.eye(L, dtype=torch.bool)  # pad positions: themselves (real ones already see themselves)
    if dtype == torch.bool:
        return allowed.unsqueeze(1)  # [R, 1, L, L]
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.unsqueeze(1)  # [R, 1, L, L]

