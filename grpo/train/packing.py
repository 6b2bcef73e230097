"""How the training pass lays one micro-batch's episodes out in rows (train.packing, chosen once per run):

padded         a row per episode, its prompt left-padded and its tokens right-padded to the longest (the layout
               every other one is checked against)
sequences      prompt + completion pairs packed into rows with no pad tokens between them, position ids restarting
               at each pair; attention stays inside each pair: transformers reads the restarts from the position
               ids (varlen flash-attention kernels on CUDA, a block-diagonal mask with sdpa / eager)
shared_prompt  a group's prompt once, then its completions, in one row: each completion attends to the prompt and
               to itself (a 4D mask), so the prompt's forward and backward run once per group instead of G times;
               groups are the episodes' group ids, never found by comparing prompts

A "completion" here is everything after the prompt: the model's tokens and any environment tokens between them,
all of them context, the loss mask (grpo/train/episodes.py) saying which are trained. Every layout yields the same
per-token log-probs [n, C] (to float rounding: tests/test_packing.py), so the loss code never knows which one ran.
Micro-batches are cut by a sequence count or, with train.max_tokens_per_micro_batch, by the tokens their rows
hold."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grpo.train.episodes import Episode, TokenBatch, token_batch

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
    """The forward pass's inputs for some rows of the step's TokenBatch, and those rows (`tokens`)."""

    input_ids: torch.Tensor  # [R, L]
    attention_mask: torch.Tensor | None  # padded [R, L]; shared_prompt [R, 1, L, L] additive; sequences None
    position_ids: torch.Tensor  # [R, L] positions within each sequence, as generation counted them
    logits_at: int | torch.Tensor  # padded: the last C+1 positions; packed: bool [R, L], the positions needed
    source: torch.Tensor  # [n, C] which of the kept positions' logits predicts each token after the prompt
    tokens: TokenBatch  # [n, C] this micro-batch's rows, cut to their longest, on the device
    positions: int  # R * L: what the forward pass computes
    real_positions: int  # of which hold a token
    # Varlen flash-attention kernels (sequences in one row): the sequences' boundaries, computed once here and
    # passed to the forward (cu_seq_lens_q/k [S+1] int32, max_length_q/k int), instead of each layer deriving them
    # from position_ids again (with a host sync for the max); None for every other layout.
    varlen: dict | None = None

    @property
    def mask(self) -> torch.Tensor:
        """[n, C] the loss mask of the micro-batch's rows."""
        return self.tokens.loss_mask


def plan_micro_batches(episodes: list[Episode], layout: Layout, count_at_least: int = 1) -> list[range]:
    """Consecutive runs of episodes (rows of the step's batch), each one micro-batch; at least `count_at_least` of
    them (every rank must run as many forward/backward passes as the others, so ranks agree on the largest count
    first)."""
    if layout.max_tokens <= 0:
        size = max(layout.micro_batch_size, 1)
        chunks = [range(i, min(i + size, len(episodes))) for i in range(0, len(episodes), size)]
    else:
        chunks, start = [], 0
        for i in range(len(episodes)):
            if i > start and _cost(episodes[start:i + 1], layout.kind) > layout.max_tokens:
                chunks.append(range(start, i))
                start = i
        if start < len(episodes):
            chunks.append(range(start, len(episodes)))
    while len(chunks) < min(count_at_least, len(episodes)):  # split the largest until there are enough
        i = max(range(len(chunks)), key=lambda k: len(chunks[k]))
        half = chunks[i].start + len(chunks[i]) // 2
        chunks[i:i + 1] = [range(chunks[i].start, half), range(half, chunks[i].stop)]
    return chunks


def _cost(episodes: list[Episode], kind: str) -> int:
    """Positions the rows of these episodes hold (before rows are padded to a common length)."""
    if kind == "padded":
        return len(episodes) * (max(len(e.prompt_ids) for e in episodes) + max(e.length for e in episodes))
    if kind == "sequences":
        return sum(len(e.prompt_ids) + e.length for e in episodes)
    return sum(_block_len(episodes, block) for block in _prompt_blocks(episodes, SHARED_BLOCK_TOKENS))


def make_micro_batch(episodes: list[Episode], layout: Layout, pad_id: int, device: torch.device) -> MicroBatch:
    """One micro-batch of these episodes alone (the layout probe, tests): the update cuts its micro-batches from the
    step's batch with micro_batch."""
    return micro_batch(token_batch(episodes, pad_id), range(len(episodes)), layout, device)


def micro_batch(batch: TokenBatch, rows: range, layout: Layout, device: torch.device) -> MicroBatch:
    """The forward inputs of `rows` of the step's batch, laid out as `layout` says, with those rows on the device."""
    tokens = batch.rows(rows)
    if layout.kind == "padded":
        return _padded(tokens, device)
    share = layout.kind == "shared_prompt"
    episodes = tokens.episodes
    blocks = (_prompt_blocks(episodes, layout.row_tokens or SHARED_BLOCK_TOKENS) if share
              else [[i] for i in range(len(episodes))])
    mb = _packed(tokens, _fill_rows(episodes, blocks, layout.row_tokens), device, share, layout.mask_dtype)
    if layout.row_tokens is None and not share:
        mb.varlen = varlen_kwargs([len(e.prompt_ids) + e.length for e in episodes], device)
    return mb


def varlen_kwargs(lengths: list[int], device: torch.device) -> dict:
    """flash-attention's varlen arguments for sequences of these lengths laid end to end in one row."""
    bounds = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32).to(device)  # [S+1]
    longest = max(lengths)
    return {"cu_seq_lens_q": bounds, "cu_seq_lens_k": bounds, "max_length_q": longest, "max_length_k": longest}


def _padded(tokens: TokenBatch, device: torch.device) -> MicroBatch:
    episodes = tokens.episodes
    n, C = tokens.input_ids.shape
    P = max(len(e.prompt_ids) for e in episodes)
    lengths = tokens.lengths.tolist()
    input_ids = torch.full((n, P + C), tokens.pad_id, dtype=torch.long)  # [n, P+C]
    attention = torch.zeros((n, P + C), dtype=torch.long)  # [n, P+C]
    input_ids[:, P:] = tokens.input_ids  # pad_id past each row's end already
    for i, e in enumerate(episodes):
        p = e.prompt_ids
        input_ids[i, P - len(p):P] = torch.tensor(p)
        attention[i, P - len(p):P + lengths[i]] = 1
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)  # [n, P+C] count only real tokens, as generation did
    to = lambda t: t.to(device)  # noqa: E731
    source = torch.arange(n * C).view(n, C)  # [n, C] the logits of the last C+1 positions but one, flattened
    return MicroBatch(to(input_ids), to(attention), to(position_ids), C + 1, to(source), tokens.to(device),
                      positions=n * (P + C), real_positions=int(attention.sum()))


def _prompt_blocks(episodes: list[Episode], row_tokens: int | None) -> list[list[int]]:
    """Runs of consecutive episodes of one group (or the part of it in this micro-batch), as indices, each cut so
    that the prompt and its completions fit in a row (a completion too long for any row keeps its own)."""
    blocks: list[list[int]] = []
    for i, e in enumerate(episodes):
        if blocks and episodes[blocks[-1][0]].group_id == e.group_id and (
                row_tokens is None or _block_len(episodes, blocks[-1] + [i]) <= row_tokens):
            blocks[-1].append(i)
        else:
            blocks.append([i])
    return blocks


def _block_len(episodes: list[Episode], block: list[int]) -> int:
    return len(episodes[block[0]].prompt_ids) + sum(episodes[i].length for i in block)


def _fill_rows(episodes: list[Episode], blocks: list[list[int]], row_tokens: int | None) -> list[list[list[int]]]:
    """First-fit decreasing: rows no longer than the longest block (or row_tokens), so a row's attention costs no
    more than the padded layout's longest row; None puts every block in one row."""
    if row_tokens is None:
        return [blocks]
    length = lambda block: _block_len(episodes, block)  # noqa: E731
    capacity = max(row_tokens, max(length(b) for b in blocks))
    rows: list[list[list[int]]] = []
    room: list[int] = []
    for block in sorted(blocks, key=length, reverse=True):
        need = length(block)
        fit = next((k for k, free in enumerate(room) if free >= need), None)
        if fit is None:
            rows.append([])
            room.append(capacity)
            fit = len(rows) - 1
        rows[fit].append(block)
        room[fit] -= need
    return rows


def _packed(tokens: TokenBatch, rows: list[list[list[int]]], device: torch.device, share: bool,
            mask_dtype: torch.dtype) -> MicroBatch:
    """Rows of blocks [prompt, completion, completion, ...]; each completion token is predicted by the position
    before it, the first by the prompt's last position (shared by the block's completions)."""
    episodes = tokens.episodes
    lengths = tokens.lengths.tolist()
    R, L = len(rows), max(sum(_block_len(episodes, b) for b in row) for row in rows)
    C = tokens.input_ids.shape[1]
    input_ids = torch.full((R, L), tokens.pad_id, dtype=torch.long)  # [R, L]
    position_ids = torch.zeros((R, L), dtype=torch.long)  # [R, L]
    keep = torch.zeros((R, L), dtype=torch.bool)  # [R, L] positions whose logits predict a completion token
    group = torch.full((R, L), -1, dtype=torch.long)  # [R, L] block of each position (-1: padding)
    part = torch.zeros((R, L), dtype=torch.long)  # [R, L] 0: prompt, j: the block's j-th completion
    predictor: dict[int, tuple[int, torch.Tensor]] = {}  # episode index -> (row, columns predicting its tokens)
    block_index = 0
    for row_index, row in enumerate(rows):
        col = 0
        for block in row:
            prompt = episodes[block[0]].prompt_ids
            assert prompt, "an episode without prompt tokens cannot be trained"  # the renderer never makes one
            P = len(prompt)
            input_ids[row_index, col:col + P] = torch.tensor(prompt)
            position_ids[row_index, col:col + P] = torch.arange(P)
            group[row_index, col:col + P] = block_index
            last_prompt = col + P - 1
            col += P
            for j, i in enumerate(block, start=1):
                c = lengths[i]
                if c:
                    input_ids[row_index, col:col + c] = tokens.input_ids[i, :c]
                    position_ids[row_index, col:col + c] = tokens.positions[i, :c]
                    group[row_index, col:col + c] = block_index
                    part[row_index, col:col + c] = j
                columns = torch.cat([torch.tensor([last_prompt]), torch.arange(col, col + max(c - 1, 0))])[:c]
                predictor[i] = (row_index, columns)
                keep[row_index, columns] = True
                col += c
            block_index += 1
        # Padding continues the positions from 0 as a sequence of its own: never a restart inside a real one.
        position_ids[row_index, col:] = torch.arange(L - col)
    if not keep.any():  # every completion empty: one position all the same, so the gathers have a row to read
        keep[0, 0] = True
    kept_rank = keep.flatten().cumsum(0).view(R, L) - 1  # [R, L] index of each kept position among the kept
    source = torch.zeros((len(episodes), C), dtype=torch.long)  # [n, C]; 0 on padding (masked out)
    for i in range(len(episodes)):
        row_index, columns = predictor[i]
        source[i, :len(columns)] = kept_rank[row_index, columns]
    attention = _shared_prompt_mask(group, part, mask_dtype) if share else None
    to = lambda t: t.to(device)  # noqa: E731
    return MicroBatch(to(input_ids), to(attention) if attention is not None else None, to(position_ids), to(keep),
                      to(source), tokens.to(device), positions=R * L, real_positions=int((group >= 0).sum()))


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

