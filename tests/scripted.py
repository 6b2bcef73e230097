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


class ScriptedEngine(Scripted):
    """Scripted, with the engine interface of vLLM's step loop (open_requests): requests can be added while others
    are in flight, and each step() finishes the oldest request only, so the order in which episodes reach the
    engine is visible in `log` ((event, key) pairs: "add" and "done")."""

    streams = True

    def __init__(self, script):
        super().__init__(script)
        self.log, self.seeds = [], []

    def open_requests(self, seed):
        from contextlib import contextmanager

        @contextmanager
        def opened():
            self.seeds.append(seed)
            yield _Requests(self)
        return opened()


class _Requests:
    def __init__(self, engine):
        self.engine, self.queue = engine, []

    def add(self, key, prompt_ids, settings, index=0):
        self.engine.log.append(("add", key))
        self.queue.append((key, prompt_ids, settings))

    def pending(self):
        return len(self.queue)

    def step(self):
        key, prompt_ids, settings = self.queue.pop(0)
        [group] = self.engine.generate([prompt_ids], settings)
        self.engine.log.append(("done", key))
        return [(key, group.completions)]
