"""The one interface every sampling backend implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from grpo.errors import UserError

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingSettings:
    """What to draw for each prompt. Recorded verbatim beside eval scores."""

    n: int = 1  # completions per prompt (the group size G during training)
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    include_stop: bool = False  # keep the stop string that ended a completion in its text and tokens (tool calls)
    # The call's base seed: hf seeds the call with it; vllm derives a seed per prompt from it (seed_mode=request)
    # or seeds the call's batched draw with it (seed_mode=engine).
    seed: int = 0

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
    tools: "ToolTrace | None" = None  # a multi-turn episode's tool use (grpo/sampling/tools.py); None: one turn


@dataclass
class ToolTrace:
    """What happened between a multi-turn completion's model turns. The completion's token_ids hold every token
    after the prompt, model's and environment's; `observations` says which are the environment's (their logprobs
    entries are 0.0 placeholders: context, never trained on)."""

    calls: list[dict] = field(default_factory=list)  # each: call (the turn's text), output, error, seconds
    observations: list[tuple[int, int]] = field(default_factory=list)  # [start, end) token spans of observations
    turns: int = 1  # model turns
    observation_tokens: int = 0
    seconds: float = 0.0  # tool time, summed over calls
    limit: str | None = None  # the episode limit that ended it (turns, tool_calls, total_tokens, tool_seconds)
    final_text: str = ""  # what the model wrote after the last observation (where its answer is read)
    transcript: list[dict] = field(default_factory=list)  # turn by turn: {"role": "model" | "tool", "text"}


@dataclass
class Group:
    """The n completions drawn for one prompt."""

    prompt_ids: list[int]
    completions: list[Completion] = field(default_factory=list)


@dataclass
class Reply:
    """One served request of a sampler in another process (hf_worker, vllm_server): the groups, the policy version
    that sampled them (every group of a request comes from one version: no partial rollouts), and the sampler's
    own clock."""

    groups: list[Group]
    version: int
    generate_s: float  # the sampler's time generating this request
    idle_s: float  # the sampler's time waiting for work before it (waiting on the trainer)


class QueuedSampler:
    """A sampler in another process that takes requests ahead of time (submit, then take the Reply): its plain
    generate() is one request, served after everything already queued (an eval during an async run waits its
    turn). Subclasses keep `_sent`, the requests sent so far."""

    _sent: int

    def generate(self, prompt_ids: list[list[int]], settings: SamplingSettings,
                 rows: list[dict] | None = None) -> list[Group]:
        key = ("generate", self._sent)
        self.submit(key, prompt_ids, settings)
        return self.take(key).groups


class SamplerGone(UserError):
    """A sampler in another process (the generation worker, the vLLM server) died, hung, or failed: the run stops
    (grpo train's exit names the checkpoint to resume from)."""


class Sampler(Protocol):
    """Generates completions; never scores. Backends: hf.HFSampler, vllm.VLLMSampler."""

    backend: str  # "hf", "vllm" or "hf_worker": recorded beside eval scores

    def generate(self, prompt_ids: list[list[int]], settings: SamplingSettings,
                 rows: list[dict] | None = None) -> list[Group]:
        """One Group per prompt, in order, each with settings.n completions. rows: each prompt's dataset row
        (what a tool-using episode's environment reads: grpo/sampling/tools.py; the plain samplers ignore it)."""
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


class Requests(Protocol):
    """Requests in flight on an engine that takes new ones while it decodes (vLLM's step loop): what lets a
    tool-using episode continue the moment its observation is in, while the others decode on
    (grpo/sampling/tools.py). A sampler offers it as `open_requests(seed)`, a context manager, where its
    `streams` attribute is true."""

    def add(self, key: Any, prompt_ids: list[int], settings: SamplingSettings, index: int = 0) -> None:
        """Start a request; `index` names it for a per-request seed (seed_mode=request)."""
        ...

    def step(self) -> list[tuple[Any, list[Completion]]]:
        """Advance every request one engine step; the requests that finished, as (key, settings.n completions)."""
        ...

    def pending(self) -> int:
        """Requests started and not yet returned by step()."""
        ...


# ---------------------------------------------------------------------------------------------------- stop ids

# The end-of-turn tokens of common chat templates, for templates that cannot be rendered here (see end_of_turn_id).
KNOWN_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|eot|>")
_MARK = "GRPO_END_OF_TURN_PROBE"  # an assistant message that no template rewrites


def stop_token_ids(model_path: str | Path | None, tokenizer: Any,
                   generation_config_eos: int | list[int] | None = None) -> set[int]:
    """Every token id that ends a completion: the checkpoint's generation_config.json EOS ids (read from
    `model_path`, and/or given as `generation_config_eos`, e.g. a loaded model's generation_config.eos_token_id),
    the tokenizer's EOS, and the chat template's end-of-turn token. The last matters for base checkpoints used
    with a chat template: Qwen2.5 base lists only <|endoftext|> as EOS, but its template ends each turn with
    <|im_end|>, so without it a completion would run past the end of its turn to max_new_tokens."""
    ids = set(_id_list(generation_config_eos))
    if model_path is not None:
        ids.update(_id_list(_generation_config_eos(str(model_path))))
    if tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    turn = end_of_turn_id(tokenizer)
    if turn is not None:
        ids.add(turn)
    return ids


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The id of the token the tokenizer's chat template puts right after an assistant message, when there is a
    template and that token is one token of the vocabulary (an added/special token); else None. Found by
    rendering a two-turn chat, so any template works; templates that refuse that chat fall back to the known
    end-of-turn names the template text mentions."""
    template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    if not template:
        return None
    added = _added_tokens(tokenizer)
    after = _text_after_assistant_turn(tokenizer)
    if after is not None:
        token = next((t for t in sorted(added, key=len, reverse=True) if after.lstrip(" ").startswith(t)), None)
        return added[token] if token is not None else None
    known = next((t for t in KNOWN_END_OF_TURN if t in added and t in str(template)), None)
    return added[known] if known is not None else None


def _text_after_assistant_turn(tokenizer: Any) -> str | None:
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _MARK}]
    try:
        text = tokenizer.apply_chat_template(chat, tokenize=False)
    except Exception:  # a template may refuse this chat (roles, system prompt required, ...): use the fallback
        return None
    if not isinstance(text, str) or _MARK not in text:
        return None
    return text.split(_MARK, 1)[1]


def _added_tokens(tokenizer: Any) -> dict[str, int]:
    """Tokens the tokenizer holds as single added/special tokens (chat markers always are)."""
    try:
        return {str(t): int(i) for t, i in tokenizer.get_added_vocab().items()}
    except (AttributeError, TypeError):
        return {}


def _generation_config_eos(model_path: str) -> int | list[int] | None:
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model_path).eos_token_id
    except OSError:  # no generation_config.json: the tokenizer's EOS is all there is
        return None


def _id_list(ids: int | list[int] | None) -> list[int]:
    if ids is None:
        return []
    return [int(i) for i in ids] if isinstance(ids, (list, tuple, set)) else [int(ids)]
