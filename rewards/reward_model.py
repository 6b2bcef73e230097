"""`reward_model`: a sequence-classification model (one score per text: one trained by `grpo rm`, or a published
one) as a reward. It is a model, not a function, so it is built once at setup by a factory:

    make_reward_model(settings, device, dtype) -> reward(prompts, completions, **kwargs) -> list[float]

`settings` are the recipe's `rewards[].args`; `device` and `dtype` are the trainer's (the model is loaded there,
frozen, in the compute dtype). Loading happens in the factory, so it never counts against the reward's time
limit. The reward runs in the trainer's process (a torch model has no place in the torch-free plugin workers);
under torchrun every rank builds its own copy.

A prompt and a completion become one text through the reward model's chat template when its tokenizer has one
(user turn = prompt, assistant turn = completion), else by plain concatenation: `pair_text` below, which
`grpo rm` also trains with, so a model trained there is scored here exactly as it was trained.

This module imports nothing from grpo: the factory receives what it needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rewards.args import read_checked, unknown_keys
from rewards.errors import UserError


def pair_text(tokenizer: Any, prompt: str, completion: str) -> tuple[str, bool]:
    """(text, has_specials): the text a reward model reads for `completion` answering `prompt`. has_specials is
    true when the chat template already wrote the special tokens (BOS and the like), so tokenizing must not add
    them again."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
        return tokenizer.apply_chat_template(messages, tokenize=False), True
    return prompt + completion, False


def encode_pair(tokenizer: Any, prompt: str, completion: str) -> list[int]:
    """The token ids of pair_text: the one tokenization that training (grpo rm) and scoring share."""
    text, has_specials = pair_text(tokenizer, prompt, completion)
    return tokenizer(text, add_special_tokens=not has_specials)["input_ids"]


@dataclass
class RewardModelSettings:
    """rewards[].args of the `reward_model` reward."""

    path: str = ""  # a directory loadable by AutoModelForSequenceClassification (num_labels=1), or a hub id
    batch_size: int = 16  # texts per forward pass
    # Per call (one step's batch): scores become (s - mean) / (std + 1e-6). A reward model's raw scale is
    # arbitrary, and its offset drifts between models; group-relative advantages ignore the offset anyway, but
    # the weight against other rewards does not.
    normalize: bool = False
    clip: float | None = None  # after normalising: scores clamped to [-clip, clip] (an outlier cannot swamp a batch)
    # Longer texts keep their last max_tokens tokens (the score is read at the last token). None: the
    # tokenizer's model_max_length, when it states one.
    max_tokens: int | None = None
    trust_remote_code: bool = False


def read_settings(settings: dict[str, Any] | None) -> RewardModelSettings:
    """The recipe's args checked; every problem raised together as one UserError."""
    return read_checked(RewardModelSettings, settings, settings_problems)


def settings_problems(settings: dict[str, Any] | None) -> list[str]:
    """What is wrong with the recipe's args, without loading anything (for `grpo validate`): unknown keys (with
    a "did you mean"), a missing path, values out of range."""
    settings = dict(settings or {})
    problems = unknown_keys(settings, RewardModelSettings, "rewards[reward_model].args")
    if problems:
        return problems
    s = RewardModelSettings(**settings)
    if not s.path or not isinstance(s.path, str):
        problems.append("rewards[reward_model].args.path: required; give the reward model's directory (e.g. the "
                        "`model` folder a `grpo rm` run writes) or a hub id")
    if not isinstance(s.batch_size, int) or isinstance(s.batch_size, bool) or s.batch_size < 1:
        problems.append(f"rewards[reward_model].args.batch_size: must be an integer >= 1, got {s.batch_size!r}")
    if not isinstance(s.normalize, bool):
        problems.append(f"rewards[reward_model].args.normalize: must be true or false, got {s.normalize!r}")
    if s.clip is not None and (not isinstance(s.clip, (int, float)) or isinstance(s.clip, bool) or s.clip <= 0):
        problems.append(f"rewards[reward_model].args.clip: must be a number > 0 (or null), got {s.clip!r}")
    if s.max_tokens is not None and (not isinstance(s.max_tokens, int) or s.max_tokens < 2):
        problems.append(f"rewards[reward_model].args.max_tokens: must be an integer >= 2 (or null), got "
                        f"{s.max_tokens!r}")
    return problems


def make_reward_model(settings: dict[str, Any] | None, device: Any, dtype: Any) -> "RewardModelScorer":
    """The setup-time factory: load the model once on `device` in `dtype`, frozen; return the reward."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    s = read_settings(settings)
    try:
        tokenizer = AutoTokenizer.from_pretrained(s.path, trust_remote_code=s.trust_remote_code)
        model = AutoModelForSequenceClassification.from_pretrained(s.path, dtype=dtype,
                                                                   trust_remote_code=s.trust_remote_code)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise UserError(f"rewards[reward_model].args.path: cannot load {s.path} as a sequence-classification "
                        f"model ({first}). Give a directory written by `grpo rm` (its `model` folder) or another "
                        f"AutoModelForSequenceClassification checkpoint.") from exc
    if model.config.num_labels != 1:
        raise UserError(f"rewards[reward_model].args.path: {s.path} has {model.config.num_labels} labels; a reward "
                        f"model gives one score per text (num_labels=1). Train one with `grpo rm`.")
    if tokenizer.pad_token_id is None:  # batching needs a pad id; EOS is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:  # the model reads its score at the last token that is not padding
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    stated = getattr(tokenizer, "model_max_length", None)
    max_tokens = s.max_tokens or (stated if isinstance(stated, int) and stated < 1_000_000 else None)
    return RewardModelScorer(model, tokenizer, torch.device(device), s, max_tokens)


def planned_model(settings: dict[str, Any] | None) -> dict[str, Any]:
    """What `grpo plan` counts for this reward, read from the recipe's args without loading anything: the model
    it puts on each trainer's device and the texts it scores in one forward."""
    s = dict(settings or {})
    return {"path": str(s.get("path") or ""), "batch_size": s.get("batch_size", RewardModelSettings.batch_size),
            "max_tokens": s.get("max_tokens")}


# Read by rewards/scoring.py: a factory is built once at setup and runs in the trainer's process; its args are
# checked by settings_problems (grpo validate), not by the reward-function signature rules. grpo.plan reads
# planned_model.
make_reward_model.reward_factory = True
make_reward_model.settings_problems = settings_problems
make_reward_model.planned_model = planned_model
make_reward_model.learned = True  # a model's opinion: the reward-hacking alarms compare it with correctness


class RewardModelScorer:
    """The reward built by make_reward_model: prompts + completions -> one float each (the reward contract)."""

    def __init__(self, model: Any, tokenizer: Any, device: Any, settings: RewardModelSettings,
                 max_tokens: int | None):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.settings, self.max_tokens = settings, max_tokens

    def __call__(self, prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
        import torch

        ids = [encode_pair(self.tokenizer, p, c) for p, c in zip(prompts, completions)]
        if self.max_tokens is not None:
            ids = [row[-self.max_tokens:] for row in ids]  # keep the end: the score is read at the last token
        scores = torch.empty(len(ids))  # [N]
        # Longest first, in batches of similar length: less padding, and the order is restored by index.
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        with torch.inference_mode():
            for start in range(0, len(order), self.settings.batch_size):
                chosen = order[start:start + self.settings.batch_size]
                input_ids, attention = right_padded([ids[i] for i in chosen], self.tokenizer.pad_token_id)
                logits = self.model(input_ids=input_ids.to(self.device),
                                    attention_mask=attention.to(self.device)).logits  # [b, 1]
                scores[chosen] = logits[:, 0].float().cpu()
        return postprocess(scores, self.settings.normalize, self.settings.clip).tolist()


def right_padded(rows: list[list[int]], pad_id: int) -> tuple[Any, Any]:
    """[b, T] input ids padded on the right with pad_id, and the [b, T] attention mask (1 on real tokens)."""
    import torch

    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # [b, T]
    attention = torch.zeros((len(rows), width), dtype=torch.long)  # [b, T]
    for i, row in enumerate(rows):
        input_ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        attention[i, :len(row)] = 1
    return input_ids, attention


def postprocess(scores: Any, normalize: bool, clip: float | None) -> Any:
    """[N] raw scores -> [N] rewards: optionally standardised over the batch, then optionally clamped. A batch of
    one normalises to 0 (it has no spread to measure)."""
    if normalize:
        spread = scores.std(unbiased=False) if scores.numel() > 1 else scores.new_zeros(())
        scores = (scores - scores.mean()) / (spread + 1e-6)
    if clip is not None:
        scores = scores.clamp(-clip, clip)
    return scores
