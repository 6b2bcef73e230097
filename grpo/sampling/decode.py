"""The transformers sampler's decoding loop: G samples of each prompt from one prefill, finished rows dropped.

Why not `model.generate`: for RL it recomputes what we know and keeps what we do not need. Each of a prompt's G
rows would prefill the same prompt again; rows that reached EOS keep decoding until the longest is done (half
the row-steps of a typical batch); and the sampled token's log-prob has to be fished out of its processors. Here
the prompts are prefilled once, their KV cache is repeated G times, every step samples from the tempered full
distribution (top-p on top) and records that log-prob, and the cache sheds finished rows as they accumulate.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

# Drop finished rows from the cache once they are this share of the rows still in it: dropping copies the whole
# cache, so doing it at every EOS would cost more than the rows it saves.
COMPACT_AT = 0.25


@dataclass
class Drawn:
    tokens: list[list[int]]  # [rows][<= max_new_tokens] prompt-major, n rows per prompt; cut after the first EOS
    logprobs: list[list[float]]  # same shape: log-prob of each token under softmax(logits / temperature)


@torch.no_grad()
def draw(model, prompts: list[list[int]], n: int, *, temperature: float, top_p: float, max_new_tokens: int,
         pad_id: int, eos_ids: set[int], synced: bool = False, stop_sequences: list[list[int]] = ()) -> Drawn:
    """n completions of each prompt (rows prompt-major). temperature <= 0: greedy. synced: the model is sharded
    (FSDP), so every forward is a collective and this rank keeps stepping until every rank is done.
    stop_sequences: token sequences that end a row like EOS does (the caller cuts the text at its stop string)."""
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    # Left padding: every prompt ends at the same column, so the new tokens line up across rows.
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)  # [B, W]
    attention = torch.zeros((len(prompts), width), dtype=torch.long)  # [B, W]
    for r, p in enumerate(prompts):
        input_ids[r, width - len(p):] = torch.tensor(p)
        attention[r, width - len(p):] = 1
    input_ids, attention = input_ids.to(device), attention.to(device)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)  # [B, W]
    # What the forward takes, read off the model itself (a PEFT wrapper's forward only says **kwargs).
    takes = inspect.signature(model.get_base_model().forward if hasattr(model, "get_base_model")
                              else model.forward).parameters
    last_only = {"logits_to_keep": 1} if "logits_to_keep" in takes else {}
    out = model(input_ids=input_ids, attention_mask=attention, position_ids=positions, use_cache=True, **last_only)
    cache = out.cache if hasattr(out, "cache") else out.past_key_values  # transformers >= 5.2x names it `cache`
    cache_kwarg = "cache" if "cache" in takes else "past_key_values"
    cache.batch_repeat_interleave(n)  # one prefill per prompt, shared by its n rows
    logits = out.logits[:, -1].repeat_interleave(n, dim=0)  # [N, V] N = B * n
    attention = attention.repeat_interleave(n, dim=0)  # [N, W]
    next_position = positions[:, -1].repeat_interleave(n) + 1  # [N]
    rows = torch.arange(len(prompts) * n, device=device)  # [A] which row each cache row is (A rows still active)
    total = rows.numel()
    tokens = torch.full((total, max_new_tokens), pad_id, dtype=torch.long, device=device)  # [N, M]
    logprobs = torch.zeros((total, max_new_tokens), device=device)  # [N, M]
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=device)  # [E]
    stops = [torch.tensor(seq, dtype=torch.long, device=device) for seq in stop_sequences]  # each [k]
    finished = torch.zeros(total, dtype=torch.bool, device=device)  # [A]
    steps = 0
    for t in range(max_new_tokens):
        token, logprob = _sample(logits, temperature, top_p)  # [A], [A]
        tokens[rows, t] = token
        logprobs[rows, t] = logprob
        steps = t + 1
        finished |= torch.isin(token, eos)
        for seq in stops:
            if t + 1 >= len(seq):
                finished |= (tokens[rows, t + 1 - len(seq):t + 1] == seq).all(-1)
        done = int(finished.sum())
        if _all_done(done == finished.numel(), synced, device) or t + 1 == max_new_tokens:
            break
        if done and done >= COMPACT_AT * finished.numel() and done < finished.numel():
            keep = (~finished).nonzero().squeeze(-1)  # [A']
            cache.batch_select_indices(keep)
            rows, token, attention, next_position = rows[keep], token[keep], attention[keep], next_position[keep]
            finished = finished[keep]
        attention = torch.cat([attention, attention.new_ones((attention.shape[0], 1))], dim=-1)  # [A, W+t+1]
        logits = model(input_ids=token.unsqueeze(-1), attention_mask=attention,
                       position_ids=next_position.unsqueeze(-1), use_cache=True, **{cache_kwarg: cache}).logits[:, -1]
        next_position = next_position + 1
    tokens, logprobs = tokens[:, :steps].cpu().tolist(), logprobs[:, :steps].cpu().tolist()
    for r, row in enumerate(tokens):  # a row may have sampled on after its EOS until the cache dropped it
        end = next((i + 1 for i, tok in enumerate(row) if tok in eos_ids), len(row))
        tokens[r], logprobs[r] = row[:end], logprobs[r][:end]
    return Drawn(tokens, logprobs)


def _sample(logits: torch.Tensor, temperature: float, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [A, V] -> the drawn token [A] and its log-prob [A] under softmax(logits / T) over the whole
    vocabulary (what the trainer computes; top-p only narrows where the draw may land)."""
    if temperature <= 0:
        logp = torch.log_softmax(logits.float(), dim=-1)  # [A, V]
        token = logp.argmax(-1)  # [A]
        return token, logp.gather(-1, token.unsqueeze(-1)).squeeze(-1)
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)  # [A, V]
    probs = logp.exp()  # [A, V]
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)  # [A, V]
        # Keep the smallest prefix whose mass reaches top_p: a token is dropped when the mass before it does.
        drop = (sorted_probs.cumsum(-1) - sorted_probs) >= top_p  # [A, V]
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))  # [A, V]
    # Inverse CDF: one uniform number a row. torch.multinomial draws an exponential per vocabulary entry on CPU,
    # which for a 50k vocabulary cost more than the rest of the step's sampling.
    # In float64: past a float32 sum of 0.5, adding a token of p < 3e-8 would leave the sum unchanged and make that
    # token impossible to draw, though its log-prob says it was possible (MPS has no float64).
    exact = torch.float32 if probs.device.type == "mps" else torch.float64
    cdf = probs.to(exact).cumsum(-1)  # [A, V]
    u = torch.rand((probs.shape[0], 1), device=probs.device).to(exact) * cdf[:, -1:]  # [A, 1]
    token = torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)  # [A]
    return token, logp.gather(-1, token.unsqueeze(-1)).squeeze(-1)


def _all_done(done_here: bool, synced: bool, device: torch.device) -> bool:
    """Whether every rank is done (with a sharded model, the ranks must stop decoding together)."""
    if not synced:
        return done_here
    import torch.distributed as dist

    flag = torch.tensor([0.0 if done_here else 1.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag.item() == 0.0
