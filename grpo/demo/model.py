"""The demo model: a tiny Llama (about 1M parameters). head_dim is 64 because vLLM's kernels need it."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def build_tiny_llama(vocab_size: int, bos_id: int, eos_id: int, pad_id: int, seed: int = 0, hidden: int = 128,
                     layers: int = 4, heads: int = 2, max_positions: int = 512) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=4 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         head_dim=hidden // heads, max_position_embeddings=max_positions, tie_word_embeddings=True,
                         bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id)
    return LlamaForCausalLM(config)
