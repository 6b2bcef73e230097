"""The one interface every sampling backend implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingSettings:
    """What to draw for each prompt. Recorded verbatim beside eval scores."""

    n: int = 1  # completions per prompt (the group size G during training)
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int = 0  # base seed; backends derive a distinct seed per prompt from it

    @classmethod
    def of(cls, generation, n: int, seed: int) -> "SamplingSettings":
        """From a config's generation slice (grpo.config.GenerationConfig)."""
        return cls(n=n, temperature=generation.temperature, top_p=generation.top_p,
                   max_new_tokens=generation.max_new_tokens, stop=tuple(generation.stop), seed=seed)


@dataclass
class Completion:
    """One sampled completion of one prompt."""

    token_ids: list[int]  # generated tokens, EOS included when the model stopped on it
    logprobs: list[float]  # sampler's log-prob of each generated token (same length as token_ids)
    text: str  # decoded completion, stop string and special tokens removed
    finish_reason: FinishReason  # "stop": EOS or a stop string; "length": hit max_new_tokens


@dataclass
class Group:
    """The n completions drawn for one prompt."""

    prompt_ids: list[int]
    completions: list[Completion] = field(default_factory=list)


class Sampler(Protocol):
    """Generates completions; never scores. Backends: hf.HFSampler, vllm.VLLMSampler."""

    backend: str  # "hf" or "vllm": recorded beside eval scores

    def generate(self, prompt_ids: list[list[int]], settings: SamplingSettings) -> list[Group]:
        """One Group per prompt, in order, each with settings.n completions."""
        ...

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the sampler draw from `model`'s current weights (no-op when it shares them)."""
        ...

    def sleep(self) -> None:
        """Free generation memory (KV cache) while the trainer steps; no-op where not supported."""
        ...

    def wake(self) -> None:
        """Undo sleep() before the next generate()."""
        ...

    def close(self) -> None:
        """Release the engine (before the process group goes: a vLLM engine under torchrun holds groups in it)."""
        ...
