"""A sampler that plays a script instead of a model, for the multi-turn episode tests (tests/test_tool_*.py)."""

from grpo.demo.tokenizer import build_char_tokenizer
from grpo.sampling.base import Completion, Group

TOK = build_char_tokenizer()


class Scripted:
    """A sampler whose model turn is script(context text, row index) -> text; every token's log-prob is -0.5."""

    backend = "hf"

    def __init__(self, script):
        self.script, self.calls = script, []

    def generate(self, prompt_ids, settings, rows=None):
        self.calls.append((len(prompt_ids), settings))
        groups = []
        for ids in prompt_ids:
            context = TOK.decode(ids, skip_special_tokens=True)
            group = Group(prompt_ids=list(ids))
            for i in range(settings.n):
                text = self.script(context, i)
                hit = [s for s in settings.stop if s in text]
                if hit:  # the sampler ends the turn at the stop string (kept: include_stop)
                    text = text[:text.index(hit[0]) + len(hit[0])]
                tokens = TOK(text, add_special_tokens=False)["input_ids"][:settings.max_new_tokens]
                reason = "length" if len(tokens) < len(TOK(text, add_special_tokens=False)["input_ids"]) else "stop"
                group.completions.append(Completion(tokens, [-0.5] * len(tokens),
                                                    TOK.decode(tokens, skip_special_tokens=True), reason))
            groups.append(group)
        return groups

    def sync_weights(self, model): ...
    def sleep(self): ...
    def wake(self): ...
    def close(self): ...
