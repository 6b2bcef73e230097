"""Supervised fine-tuning on (prompt, target) pairs: the warm start that gives RL a policy with some reward
variance to work from. Loss on target tokens only; works for any causal LM and its tokenizer."""

from __future__ import annotations

import random
from typing import Callable

import torch

from grpo.errors import UserError
from grpo.schedule import lr_factor

SCHEDULES = ("cosine", "constant")


def encode_pair(tokenizer, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """Prompt ids exactly as the RL sampler will see them (the tokenizer's BOS and all); target ids + EOS, so the
    model learns to stop where the sampler's EOS handling expects it to."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        target_ids = target_ids + [tokenizer.eos_token_id]
    return prompt_ids, target_ids


def encode_pieces(tokenizer, prompt: str, pieces: list[tuple[str, bool]]) -> tuple[list[int], list[int], list[float]]:
    """A tool-using target: (text, trained) pieces, the tool's outputs untrained (the model reads them in an
    episode, never writes them). Prompt ids, target ids + EOS, and the loss weight of each target token."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    target_ids: list[int] = []
    weights: list[float] = []
    for text, trained in pieces:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        target_ids += ids
        weights += [1.0 if trained else 0.0] * len(ids)
    if tokenizer.eos_token_id is not None:
        target_ids.append(tokenizer.eos_token_id)
        weights.append(1.0)
    return prompt_ids, target_ids, weights


def supervised_fine_tune(model, tokenizer, pairs: list[tuple[str, str | list[tuple[str, bool]]]], steps: int, batch_size: int = 32,
                         lr: float = 1e-3, warmup: int = 20, schedule: str = "cosine", weight_decay: float = 0.0,
                         max_grad_norm: float = 1.0, prompt_loss_weight: float = 0.0, seed: int = 0,
                         log: Callable[[int, float], None] | None = None, log_every: int = 50) -> dict:
    """Train `model` in place for `steps` AdamW steps on batches of `batch_size` pairs drawn with `seed`.

    Returns {"first_loss", "last_loss" (mean of the last `log_every` steps), "steps", "target_tokens"}; `log` is
    called every `log_every` steps with (step, running mean loss). The loss is the mean over target tokens;
    `prompt_loss_weight` > 0 also trains on the prompt tokens (a weighted mean), for a model learning the
    language from scratch; 0, the default, is plain prompt-masked SFT."""
    if not pairs:
        raise UserError("sft: no (prompt, target) pairs to train on; the data file is empty. Give a file with rows.")
    if schedule not in SCHEDULES:
        raise UserError(f"sft: schedule {schedule!r} is not one of {', '.join(SCHEDULES)}; pick one of those.")
    if steps < 1 or batch_size < 1:
        raise UserError(f"sft: steps ({steps}) and batch_size ({batch_size}) must be at least 1; raise them.")
    device = next(model.parameters()).device
    # Padding is masked out of attention and loss, so any id will do when the tokenizer has no pad token.
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    encoded = [encode_pair(tokenizer, p, t) if isinstance(t, str) else encode_pieces(tokenizer, p, t) for p, t in pairs]
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, warmup, schedule,
                                                                                    decay_from_start=True))
    model.train()
    first, recent, tokens = float("nan"), [], 0
    for step in range(steps):
        batch = [encoded[rng.randrange(len(encoded))] for _ in range(batch_size)]
        input_ids, weights, attention = _collate(batch, pad_id, device, prompt_loss_weight)
        logits = model(input_ids=input_ids, attention_mask=attention).logits  # [N, T, V]
        # position t predicts token t+1
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten(),
                                                reduction="none").view_as(weights[:, 1:])  # [N, T-1]
        loss = (nll * weights[:, 1:]).sum() / weights[:, 1:].sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        scheduler.step()
        value = float(loss.detach())
        first = value if step == 0 else first
        recent = (recent + [value])[-log_every:]
        tokens += sum(len(item[1]) for item in batch)
        if log is not None and (step + 1) % log_every == 0:
            log(step + 1, sum(recent) / len(recent))
    model.eval()
    return {"first_loss": first, "last_loss": sum(recent) / len(recent), "steps": steps, "target_tokens": tokens}


def _collate(batch: list[tuple[list[int], list[int]]], pad_id: int, device,
             prompt_loss_weight: float = 0.0) -> tuple[torch.Tensor, ...]:
    """Right-padded ids, the loss weight of each token (1 on targets, prompt_loss_weight on the prompt after its
    first token, 0 on padding), and the attention mask."""
    width = max(len(item[0]) + len(item[1]) for item in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # [N, T]
    weights = torch.zeros((len(batch), width))  # [N, T] weight of predicting token t
    attention = torch.zeros((len(batch), width), dtype=torch.long)  # [N, T] 1 on real tokens
    for i, item in enumerate(batch):
        p, t = item[0], item[1]
        ids = p + t
        input_ids[i, :len(ids)] = torch.tensor(ids)
        weights[i, 1:len(p)] = prompt_loss_weight
        # a third element weighs each target token (encode_pieces: tool outputs 0); else every one is 1
        weights[i, len(p):len(ids)] = torch.tensor(item[2]) if len(item) > 2 else 1.0
        attention[i, :len(ids)] = 1
    return input_ids.to(device), weights.to(device), attention.to(device)
