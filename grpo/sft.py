"""Supervised fine-tuning on (prompt, target) pairs: the warm start that gives RL a policy with some reward
variance to work from. Loss on target tokens only; any causal LM and tokenizer."""

from __future__ import annotations

import math
import random
from typing import Callable

import torch


def encode_pair(tokenizer, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """Prompt ids exactly as the RL sampler will see them (the tokenizer's BOS and all), target ids + EOS."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids, target_ids


def supervised_fine_tune(model, tokenizer, pairs: list[tuple[str, str]], steps: int, batch_size: int = 32,
                         lr: float = 1e-3, warmup: int = 20, seed: int = 0,
                         log: Callable[[int, float], None] | None = None, log_every: int = 50) -> dict:
    """AdamW with warm-up then cosine decay; returns {"first_loss", "last_loss"}."""
    device = next(model.parameters()).device
    encoded = [encode_pair(tokenizer, p, t) for p, t in pairs]
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    schedule = lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / max(steps, 1)))  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model.train()
    first = last = float("nan")
    recent: list[float] = []
    for step in range(steps):
        batch = [encoded[rng.randrange(len(encoded))] for _ in range(batch_size)]
        input_ids, labels, attention = _collate(batch, tokenizer.pad_token_id, device)
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        value = loss.item()
        first = value if step == 0 else first
        recent = (recent + [value])[-log_every:]
        last = sum(recent) / len(recent)
        if log is not None and (step + 1) % log_every == 0:
            log(step + 1, last)
    model.eval()
    return {"first_loss": first, "last_loss": last}


def _collate(batch: list[tuple[list[int], list[int]]], pad_id: int, device) -> tuple[torch.Tensor, ...]:
    width = max(len(p) + len(t) for p, t in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # [N, T] right-padded
    labels = torch.full((len(batch), width), -100, dtype=torch.long)  # [N, T] -100: no loss (prompt, padding)
    attention = torch.zeros((len(batch), width), dtype=torch.long)  # [N, T]
    for i, (p, t) in enumerate(batch):
        ids = p + t
        input_ids[i, :len(ids)] = torch.tensor(ids)
        labels[i, len(p):len(ids)] = torch.tensor(t)
        attention[i, :len(ids)] = 1
    return input_ids.to(device), labels.to(device), attention.to(device)
