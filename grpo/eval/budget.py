"""How much memory `grpo eval` will need, estimated before anything loads, so that a protocol that cannot fit
(say --k 100000) is refused in a second with the numbers and the fix, not killed by the kernel an hour in.

Two terms grow with the protocol (the model's own weights are the same for any protocol and are left out):
- what is held until the summary is written: every sample's text and figures, problems x k of them;
- one generate call of the transformers sampler: k x (problems per call) rows, each with its KV cache over the
  prompt and the new tokens, the logits of one decode step, and the token ids and log-probs kept as Python lists.
  vLLM sizes its own KV cache at start-up, so with vLLM only the first term counts.
"""

from __future__ import annotations

import os
from typing import Any

from grpo.config import EvalConfig
from grpo.errors import UserError

SAMPLE_BYTES_PER_TOKEN = 8  # a sample's text (about 4 characters a token, as a str) and its extracted answer
SAMPLE_OVERHEAD_BYTES = 1024  # the dict of one sample's figures
LIST_BYTES_PER_TOKEN = 72  # a Python int and a float, with their list slots, per generated token of a call
LOGIT_COPIES = 3  # logits, their softmax and the top-p sort of one decode step, in float32
PROMPT_TOKENS_GUESS = 512  # prompts are rendered after the model loads; a generous length for math sets


def eval_memory_bytes(cfg: EvalConfig, problems: int, backend: str, shape: Any | None,
                      dtype_bytes: int) -> dict[str, float]:
    """The protocol's memory, by term (bytes). `shape`: grpo.plan.ModelShape of the model, None if unknown."""
    held = problems * cfg.k * (cfg.max_new_tokens * SAMPLE_BYTES_PER_TOKEN + SAMPLE_OVERHEAD_BYTES)
    terms = {"samples held until the summary": float(held)}
    if backend == "hf":
        rows = cfg.k * max(1, cfg.generation_batch_size // cfg.k)
        positions = PROMPT_TOKENS_GUESS + cfg.max_new_tokens
        terms["one generate call's token lists"] = float(rows * cfg.max_new_tokens * LIST_BYTES_PER_TOKEN)
        if shape is not None:
            kv_per_token = 2 * shape.layers * shape.kv_heads * shape.head_dim * dtype_bytes
            terms["one generate call's KV cache"] = float(rows * positions * kv_per_token)
            terms["one decode step's logits"] = float(rows * shape.vocab * 4 * LOGIT_COPIES)
    return terms


def available_bytes(device: str) -> int | None:
    """Memory this evaluation can still take: free GPU memory on cuda, MemAvailable on the host otherwise."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info()[0]) if torch.cuda.is_available() else None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else None


def check_fits(terms: dict[str, float], available: int | None, cfg: EvalConfig, problems: int) -> None:
    """Refuse (UserError, exit 2) a protocol whose estimate exceeds 90% of what is available."""
    need = sum(terms.values())
    if available is None or need <= 0.9 * available:
        return
    gb = 1024 ** 3
    parts = ", ".join(f"{name} {value / gb:,.1f} GiB" for name, value in sorted(terms.items(), key=lambda kv: -kv[1]))
    # The transformers sampler draws a problem's k rows in one call: a smaller batch helps only while k is below it.
    batch = " or a smaller --batch-size" if cfg.k < cfg.generation_batch_size else ""
    raise UserError(f"eval: k = {cfg.k} samples of up to {cfg.max_new_tokens} tokens for {problems} problems needs "
                    f"about {need / gb:,.1f} GiB ({parts}), and {available / gb:,.1f} GiB is available here. Lower "
                    f"--k or --max-tokens{batch}, or evaluate fewer problems (--limit).")
