"""The transformers sampler: our decoding loop (decode.py) on the policy itself (CPU or GPU), so weight sync is
free."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from grpo.sampling.base import Completion, Group, SamplingSettings, stop_token_ids
from grpo.sampling.decode import draw


class HFSampler:
    backend = "hf"

    def __init__(self, model: torch.nn.Module, tokenizer, generation_batch_size: int = 64, synced: bool = False,
                 decode_context: Callable[[], contextlib.AbstractContextManager] | None = None):
        """synced=True: the model is sharded over ranks (FSDP), so ranks decode in lockstep; each rank keeps
        stepping until all ranks' sequences are done. decode_context: what every generate runs in (the trainer's
        precision, so the sampler decodes in the compute dtype its forward uses; FSDP's weights gathered once)."""
        self.model = model
        self.decode_context = decode_context or contextlib.nullcontext
        self.synced = synced
        self.tokenizer = tokenizer
        self.generation_batch_size = generation_batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        # generation_config's EOS ids, the tokenizer's, and a chat template's end of turn (a base checkpoint's
        # generation_config knows only <|endoftext|>, while a chat-templated prompt is answered up to <|im_end|>)
        self.eos_ids = stop_token_ids(None, tokenizer, model.generation_config.eos_token_id)

    def generate(self, prompt_ids: list[list[int]], settings: SamplingSettings,
                 rows: list[dict] | None = None) -> list[Group]:
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(settings.seed)  # reproducible draws for a given seed, whatever ran before
        groups = [Group(prompt_ids=list(ids)) for ids in prompt_ids]
        # Whole groups per chunk: a prompt's n rows share its prefill.
        per_chunk = max(1, self.generation_batch_size // settings.n)
        was_training = self.model.training
        self.model.eval()
        try:
            with self.decode_context():
                self._draw_all(prompt_ids, settings, groups, per_chunk)
        finally:
            self.model.train(was_training)
            torch.random.set_rng_state(generator_state)
        return groups

    def _draw_all(self, prompt_ids: list[list[int]], settings: SamplingSettings, groups: list[Group],
                  per_chunk: int) -> None:
        # A row ends early on a stop string's tokens as the tokenizer spells it alone (exact for the demo's
        # characters; a BPE tokenizer may spell it otherwise in context, and then the cut below still finds it).
        stop_sequences = [ids for s in settings.stop if s
                          for ids in [self.tokenizer(s, add_special_tokens=False)["input_ids"]] if ids]
        for start in range(0, len(prompt_ids), per_chunk):
            drawn = draw(self.model, prompt_ids[start:start + per_chunk], settings.n,
                         temperature=settings.temperature, top_p=settings.top_p,
                         max_new_tokens=settings.max_new_tokens, pad_id=self.pad_id, eos_ids=self.eos_ids,
                         synced=self.synced, stop_sequences=stop_sequences)
            for row, (tokens, logprobs) in enumerate(zip(drawn.tokens, drawn.logprobs)):
                groups[start + row // settings.n].completions.append(self._finish(tokens, logprobs, settings))

    def _finish(self, tokens: list[int], logprobs: list[float], settings: SamplingSettings) -> Completion:
        """Decode, and cut at a stop string. draw() already ended each row at its first EOS (kept)."""
        reason = "stop" if tokens and tokens[-1] in self.eos_ids else "length"
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        if settings.stop:
            found = _first_stop(text, settings.stop)
            if found is not None:
                cut, stop = found
                # Without include_stop the text ends before the stop string and the tokens at its first token
                # (so the model learns to begin it); with it, both end after it (a tool call's closing tag).
                end = cut + len(stop) if settings.include_stop else cut
                keep = self._tokens_covering(tokens, end - 1 if settings.include_stop else end)
                tokens, logprobs, reason = tokens[:keep], logprobs[:keep], "stop"
                text = text[:end]
        return Completion(token_ids=tokens, logprobs=logprobs, text=text, finish_reason=reason)

    def _tokens_covering(self, tokens: list[int], chars: int) -> int:
        """Fewest leading tokens whose text reaches past `chars` characters (so the stop string is generated)."""
        for k in range(1, len(tokens) + 1):
            if len(self.tokenizer.decode(tokens[:k], skip_special_tokens=True)) > chars:
                return k
        return len(tokens)

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Nothing to copy: this sampler generates with the policy module itself."""

    def sleep(self) -> None:
        """Nothing to free: generation memory is released when generate returns."""

    def close(self) -> None:
        pass

    def wake(self) -> None:
        """See sleep()."""


def _first_stop(text: str, stops: tuple[str, ...]) -> tuple[int, str] | None:
    """Where the first stop string starts, and which it is (the longest of those starting there)."""
    hits = [(text.find(s), -len(s), s) for s in stops if s and s in text]
    return (min(hits)[0], min(hits)[2]) if hits else None
