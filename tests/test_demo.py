import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo.demo import BUILDS, resolve_demo_model
from grpo.demo.model import build_tiny_llama
from grpo.demo.task import PROMPT_TEMPLATE, make_problems
from grpo.demo.tokenizer import build_char_tokenizer
from grpo.errors import UserError
from grpo.sft import supervised_fine_tune


def test_char_tokenizer_round_trips_spaces_newlines_and_punctuation(tmp_path):
    build_char_tokenizer().save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    text = "Q: Tom has 3 apples.\n  A: 3 + 4 = 7. The answer is 7."
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id and len(ids) == len(text) + 1
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_tiny_llama_has_head_dim_64_and_loads_back(tmp_path):
    tok = build_char_tokenizer()
    model = build_tiny_llama(len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert model.config.hidden_size // model.config.num_attention_heads == 64  # vLLM needs it
    assert 0.8e6 < sum(p.numel() for p in model.parameters()) < 1.5e6
    model.save_pretrained(tmp_path)
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config.num_hidden_layers == 4


def test_problems_are_deterministic_and_consistent():
    a, b = make_problems(50, seed=3), make_problems(50, seed=3)
    assert a == b and a != make_problems(50, seed=4)
    for p in a:
        assert p["solution"].endswith(f"The answer is {p['answer']}.")
        for step in p["solution"].split(". ")[:-1]:  # every worked line is true arithmetic
            lhs, rhs = step.strip(" .").split(" = ")
            assert eval(lhs) == int(rhs)  # noqa: S307 - our own generated arithmetic


def test_sft_lowers_the_loss_in_a_few_steps():
    tok = build_char_tokenizer()
    model = build_tiny_llama(len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, layers=1)
    pairs = [(PROMPT_TEMPLATE.format(**p), p["solution"]) for p in make_problems(64, seed=0)]
    stats = supervised_fine_tune(model, tok, pairs, steps=30, batch_size=8, lr=3e-3, warmup=5, log_every=5)
    assert stats["last_loss"] < 0.6 * stats["first_loss"]


def test_unknown_demo_model_lists_the_known_ones(tmp_path):
    with pytest.raises(UserError, match="demo:tiny-arith"):
        resolve_demo_model("demo:huge", tmp_path)


def test_demo_build_is_cached_and_atomic(tmp_path, monkeypatch):
    calls = []

    def fake_build(out_dir, settings):  # the real build is exercised by the tiny-recipe test
        calls.append(out_dir)
        build_char_tokenizer().save_pretrained(out_dir)
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr("grpo.demo.build_demo_model", fake_build)
    first = resolve_demo_model("demo:tiny-arith", tmp_path)
    again = resolve_demo_model("demo:tiny-arith", tmp_path)
    assert first == again and len(calls) == 1
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary directory left behind
    monkeypatch.setitem(BUILDS, "tiny-arith", dict(BUILDS["tiny-arith"], sft_steps=1))
    assert resolve_demo_model("demo:tiny-arith", tmp_path) != first  # changed settings: a new build
