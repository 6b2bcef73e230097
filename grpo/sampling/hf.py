"""The transformers sampler: batched `generate` on the policy itself (CPU or GPU), so weight sync is free."""

from __future__ import annotations

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from grpo.sampling.base import Completion, Group, SamplingSettings


class HFSampler:
    backend = "hf"

    def __init__(self, model: torch.nn.Module, tokenizer, generation_batch_size: int = 64, synced: bool = False):
        """synced=True: the model is sharded over ranks (FSDP), so every decoding step is a collective; each
        rank then keeps stepping until all ranks' sequences are done (transformers' synced_gpus)."""
        self.model = model
        self.sync_kwargs = {"synced_gpus": True} if synced else {}
        self.tokenizer = tokenizer
        self.generation_batch_size = generation_batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        eos = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None \
            else tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()

    def generate(self, prompt_ids: list[list[int]], settings: SamplingSettings) -> list[Group]:
        rows = [(i, ids) for i, ids in enumerate(prompt_ids) for _ in range(settings.n)]  # prompt-major, n each
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(settings.seed)  # reproducible draws for a given seed, whatever ran before
        groups = [Group(prompt_ids=list(ids)) for ids in prompt_ids]
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(rows), self.generation_batch_size):
                chunk = rows[start:start + self.generation_batch_size]
                for (prompt_index, _), completion in zip(chunk, self._generate_chunk([r[1] for r in chunk], settings)):
                    groups[prompt_index].completions.append(completion)
        finally:
            self.model.train(was_training)
            torch.random.set_rng_state(generator_state)
        return groups

    @torch.no_grad()
    def _generate_chunk(self, prompts: list[list[int]], settings: SamplingSettings) -> list[Completion]:
        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        # Left padding: every prompt ends at the same column, so new tokens line up across the batch.
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)  # [R, P]
        attention = torch.zeros((len(prompts), width), dtype=torch.long)  # [R, P]
        for r, p in enumerate(prompts):
            input_ids[r, width - len(p):] = torch.tensor(p)
            attention[r, width - len(p):] = 1
        greedy = settings.temperature <= 0
        recorder = _LogprobRecorder(1.0 if greedy else settings.temperature)
        # Only our settings: a checkpoint's generation_config (Qwen ships top_k=20, repetition_penalty=1.05) is
        # merged into any config passed to generate, and would silently change the distribution the policy
        # gradient assumes. So generate runs with a neutral default in its place.
        generation = GenerationConfig(
            do_sample=not greedy,
            temperature=None if greedy else settings.temperature,
            top_p=None if greedy else settings.top_p,
            top_k=None if greedy else 0,  # 0 disables top-k; None would fall back to 50
            max_new_tokens=settings.max_new_tokens,
            pad_token_id=self.pad_id,
            eos_token_id=sorted(self.eos_ids) or None,
            use_cache=True,  # the policy may have it off for gradient checkpointing; decoding needs it
            return_dict_in_generate=True,
        )
        checkpoint_defaults = self.model.generation_config
        self.model.generation_config = GenerationConfig()
        try:
            out = self.model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                      generation_config=generation, logits_processor=LogitsProcessorList([recorder]),
                                      **self.sync_kwargs)
        finally:
            self.model.generation_config = checkpoint_defaults
        new_tokens = out.sequences[:, width:]  # [R, L]
        logprobs = recorder.finish(new_tokens).cpu()  # [R, L]
        new_tokens = new_tokens.cpu()
        return [self._finish(new_tokens[r].tolist(), logprobs[r].tolist(), settings) for r in range(len(prompts))]

    def _finish(self, tokens: list[int], logprobs: list[float], settings: SamplingSettings) -> Completion:
        """Cut at the first EOS (kept) or stop string; what follows is padding from finished rows."""
        end = next((i + 1 for i, t in enumerate(tokens) if t in self.eos_ids), None)
        if end is not None:
            tokens, logprobs, reason = tokens[:end], logprobs[:end], "stop"
        else:
            reason = "length"
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        if settings.stop:
            cut = _first_stop(text, settings.stop)
            if cut is not None:
                keep = self._tokens_covering(tokens, cut)
                tokens, logprobs, reason = tokens[:keep], logprobs[:keep], "stop"
                text = text[:cut]
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


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


class _LogprobRecorder(LogitsProcessor):
    """Records the log-prob of each sampled token one step at a time, so generate never holds the logits of
    every step ([R, L, V] is tens of GB for a 150k vocabulary).

    transformers runs user processors before its temperature / top-k / top-p warpers, so `scores` are the raw
    logits here; dividing by the temperature gives exactly what the trainer computes (full vocabulary, no
    top-p renormalisation). tests/test_hf_sampler.py fails loudly if a transformers release changes that order.
    """

    def __init__(self, temperature: float):
        self.temperature = temperature
        self.previous: torch.Tensor | None = None  # [R, V] log-probs of the step whose token is not yet known
        self.picked: list[torch.Tensor] = []  # L-1 tensors [R]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.previous is not None:  # input_ids[:, -1] is the token just sampled from `previous`
            self.picked.append(self.previous.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self.previous = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def finish(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """new_tokens [R, L] -> log-probs [R, L] (the last step's token is only known now)."""
        if self.previous is not None and len(self.picked) < new_tokens.shape[1]:
            self.picked.append(self.previous.gather(-1, new_tokens[:, len(self.picked)].unsqueeze(-1)).squeeze(-1))
        if not self.picked:
            return torch.zeros(new_tokens.shape, dtype=torch.float32)
        return torch.stack(self.picked, dim=1)  # [R, L]
