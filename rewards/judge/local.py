"""A local transformers model as the judge: loaded once at setup on the trainer's device, frozen, and asked in
batches (greedy at temperature 0). It runs in the trainer's process, as the reward model does; under torchrun
each rank loads its own copy.

api=chat wraps each prompt in the model's chat template (a user turn); api=completions gives the text as it is
(a base model, or the tiny demo model, which has no template)."""

from __future__ import annotations

from typing import Any

from rewards.errors import UserError


class LocalJudge:
    def __init__(self, path: str, api: str, device: Any, dtype: Any, max_tokens: int, temperature: float,
                 batch_size: int, trust_remote_code: bool):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        resolved = _resolved(path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(resolved, trust_remote_code=trust_remote_code)
            self.model = AutoModelForCausalLM.from_pretrained(resolved, dtype=dtype,
                                                              trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise UserError(f"rewards[judge].args.model: cannot load {path} as a causal language model ({first})")
        if api == "chat" and not getattr(self.tokenizer, "chat_template", None):
            raise UserError(f"rewards[judge].args.api: chat, but {path}'s tokenizer has no chat template; set "
                            f"api: completions to give the judge the prompt as plain text")
        self.tokenizer.padding_side = "left"  # generation continues every row from its last real token
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.device, self.api = torch.device(device), api
        self.max_tokens, self.temperature, self.batch_size = max_tokens, temperature, batch_size
        stated = getattr(self.tokenizer, "model_max_length", None)
        context = getattr(self.model.config, "max_position_embeddings", None) or stated
        self.max_prompt_tokens = max(1, int(context) - max_tokens) if isinstance(context, int) else None

    def replies(self, prompts: list[str]) -> list[str]:
        """The judge's reply to each prompt, in order."""
        import torch

        texts = [self._text(p) for p in prompts]
        out: list[str] = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                out += self._generate(texts[start:start + self.batch_size])
        return out

    def _text(self, prompt: str) -> str:
        if self.api == "chat":
            return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True)
        return prompt

    def _generate(self, texts: list[str]) -> list[str]:
        encoded = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=self.api != "chat")
        ids, mask = encoded["input_ids"], encoded["attention_mask"]  # [b, T]
        if self.max_prompt_tokens is not None and ids.shape[1] > self.max_prompt_tokens:
            ids, mask = ids[:, -self.max_prompt_tokens:], mask[:, -self.max_prompt_tokens:]  # keep the question's end
        sampling = {"do_sample": True, "temperature": self.temperature} if self.temperature > 0 \
            else {"do_sample": False}
        generated = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                        max_new_tokens=self.max_tokens, pad_token_id=self.tokenizer.pad_token_id,
                                        **sampling)  # [b, T + new]
        return self.tokenizer.batch_decode(generated[:, ids.shape[1]:], skip_special_tokens=True)


def _resolved(path: str) -> Any:
    """grpo's own model names (demo:tiny-arith) as the trainer resolves them; anything else as given."""
    if path.startswith("demo:"):
        from grpo.modeling import resolve_model_path

        return resolve_model_path(path)
    return path
