import json
import os
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo.demo import BUILDS, resolve_demo_model
from grpo.demo.model import build_tiny_llama
from grpo.demo.task import PROMPT_TEMPLATE, make_problems, with_guesses, write_shipped_files
from grpo.demo.tokenizer import build_char_tokenizer
from grpo.errors import UserError
from grpo.tools.sft import _collate, encode_pair, supervised_fine_tune

ROOT = Path(__file__).resolve().parents[1]


def test_char_tokenizer_round_trips_spaces_newlines_and_punctuation(tmp_path):
    build_char_tokenizer().save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    text = "Question: Tom has 3 apples.\n  Answer:\t 3 + 4 = 7. The answer is 7.\n\n"
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id and len(ids) == len(text) + 1  # one token per character, after BOS
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id} == {1, 2, 0}


def test_tiny_llama_has_head_dim_64_and_loads_back(tmp_path):
    tok = build_char_tokenizer()
    model = build_tiny_llama(len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert model.config.head_dim == 64 and model.config.hidden_size // model.config.num_attention_heads == 64
    assert 0.8e6 < sum(p.numel() for p in model.parameters()) < 1.5e6
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.model_type == "llama" and loaded.config.num_hidden_layers == 4
    assert AutoTokenizer.from_pretrained(tmp_path).eos_token_id == tok.eos_token_id
    ids = torch.tensor([tok("Question: 1 + 1\nAnswer:").input_ids])
    assert torch.equal(loaded(ids).logits, model.eval()(ids).logits)


def test_same_seed_same_model():
    a, b, c = (build_tiny_llama(104, 1, 2, 0, seed=s, layers=1) for s in (0, 0, 1))
    assert torch.equal(a.model.embed_tokens.weight, b.model.embed_tokens.weight)
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)


def test_problems_are_deterministic_and_consistent():
    a, b = make_problems(200, seed=3), make_problems(200, seed=3)
    assert a == b and a != make_problems(200, seed=4)
    for p in a:
        assert p["solution"].startswith(" ") and p["solution"].endswith(f" The answer is {p['answer']}.")
        steps = p["solution"].strip().split(". ")[:-1]
        assert 1 <= len(steps) <= 2
        for step in steps:  # every worked line is true arithmetic
            lhs, rhs = step.strip(" .").split(" = ")
            assert eval(lhs) == int(rhs)  # noqa: S307 - our own generated arithmetic
        assert steps[-1].endswith(f"= {p['answer']}") and int(p["answer"]) >= 0


def test_the_sloppy_teacher_guesses_on_about_the_asked_fraction_and_works_out_the_rest():
    problems = make_problems(2000, seed=3)
    taught = with_guesses(problems, 0.7, seed=9)
    assert taught == with_guesses(problems, 0.7, seed=9) and problems == make_problems(2000, seed=3)  # untouched
    guesses = [t for t, p in zip(taught, problems) if t["solution"] != p["solution"]]
    assert 0.65 < len(guesses) / len(problems) < 0.75
    assert all(g["solution"].startswith(" The answer is ") and " = " not in g["solution"] for g in guesses)
    assert {g["solution"][-2] for g in guesses} == set("0123456789")  # guessed digits, right or not
    assert with_guesses(problems, 0.0, seed=9) == problems


def test_shipped_files_are_what_the_generator_writes(tmp_path):
    write_shipped_files(tmp_path)
    for name in ("train.jsonl", "test.jsonl"):
        assert (tmp_path / name).read_text() == (ROOT / "data" / "arith" / name).read_text(), \
            f"data/arith/{name} is stale: run python -m grpo.demo.task"
    questions = {n: [json.loads(line)["question"] for line in (tmp_path / n).read_text().splitlines()]
                 for n in ("train.jsonl", "test.jsonl")}
    assert len(questions["train.jsonl"]) == 2000 and len(set(questions["test.jsonl"])) == 200
    assert not set(questions["test.jsonl"]) & set(questions["train.jsonl"])  # held out


def test_sft_trains_on_target_tokens_only_unless_asked():
    tok = build_char_tokenizer()
    prompt, target = encode_pair(tok, "Question: 1 + 1\nAnswer:", " 2.")
    assert prompt[0] == tok.bos_token_id and target[-1] == tok.eos_token_id
    _, weights, attention = _collate([(prompt, target), ([1, 5], [6, 2])], tok.pad_token_id, "cpu")
    assert weights[0].tolist() == [0.0] * len(prompt) + [1.0] * len(target)
    assert weights[1].sum() == 2 and attention[1].sum() == 4  # padding: no loss, no attention
    _, weights, _ = _collate([(prompt, target)], tok.pad_token_id, "cpu", prompt_loss_weight=0.5)
    assert weights[0, 0] == 0 and weights[0, 1] == 0.5  # nothing predicts the first token


@pytest.mark.slow
def test_sft_lowers_the_loss_in_a_few_steps():
    tok = build_char_tokenizer()
    model = build_tiny_llama(len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, layers=1)
    pairs = [(PROMPT_TEMPLATE.format(**p), p["solution"]) for p in make_problems(64, seed=0)]
    stats = supervised_fine_tune(model, tok, pairs, steps=30, batch_size=8, lr=3e-3, warmup=5, log_every=5)
    assert stats["last_loss"] < 0.6 * stats["first_loss"]
    assert not model.training


def test_sft_rejects_bad_arguments_with_a_fix():
    tok = build_char_tokenizer()
    model = build_tiny_llama(len(tok), 1, 2, 0, layers=1)
    with pytest.raises(UserError, match="empty"):
        supervised_fine_tune(model, tok, [], steps=1)
    with pytest.raises(UserError, match="cosine, constant"):
        supervised_fine_tune(model, tok, [("a", "b")], steps=1, schedule="linear")


@pytest.fixture(autouse=True)
def build_instead_of_shipped(monkeypatch):
    """These tests exercise the build and its cache, so the shipped copy is set aside (GRPO_DEMO_REBUILD)."""
    monkeypatch.setenv("GRPO_DEMO_REBUILD", "1")


def test_shipped_weights_are_the_current_build_and_load(tmp_path, monkeypatch):
    from grpo.demo import SHIPPED

    monkeypatch.delenv("GRPO_DEMO_REBUILD")
    monkeypatch.setattr("grpo.demo.build_demo_model", lambda *a: pytest.fail("the shipped copy should be used"))
    path = resolve_demo_model("demo:tiny-arith", tmp_path)
    assert path == SHIPPED / "tiny-arith" and list(tmp_path.iterdir()) == []
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.hidden_size // model.config.num_attention_heads == 64
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.decode(tok("Question: 1\nAnswer:").input_ids, skip_special_tokens=True) == "Question: 1\nAnswer:"
    # changed build settings no longer match the shipped weights: they are rebuilt, never silently reused
    monkeypatch.setitem(BUILDS, "tiny-arith", dict(BUILDS["tiny-arith"], sft_steps=1))
    from grpo.demo import shipped_copy

    assert shipped_copy("tiny-arith", BUILDS["tiny-arith"]) is None


def test_unknown_demo_model_lists_the_known_ones(tmp_path):
    with pytest.raises(UserError, match="demo:tiny-arith"):
        resolve_demo_model("demo:huge", tmp_path)


def _fake_build(calls):
    def build(out_dir, settings):  # the real build is exercised by the slow test below
        calls.append(out_dir)
        build_char_tokenizer().save_pretrained(out_dir)
        (out_dir / "config.json").write_text("{}")
    return build


def test_demo_build_is_cached_and_keyed_by_its_settings(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("grpo.demo.build_demo_model", _fake_build(calls))
    first = resolve_demo_model("demo:tiny-arith", tmp_path)
    again = resolve_demo_model("demo:tiny-arith", tmp_path)
    assert first == again and len(calls) == 1
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary directory left behind
    monkeypatch.setitem(BUILDS, "tiny-arith", dict(BUILDS["tiny-arith"], sft_steps=1))
    assert resolve_demo_model("demo:tiny-arith", tmp_path) != first  # changed settings: a new build
    monkeypatch.setattr("grpo.demo.BUILD_VERSION", -1)
    assert len({resolve_demo_model("demo:tiny-arith", tmp_path), first}) == 2  # changed code version too


def test_demo_cache_dir_defaults_to_grpo_cache(tmp_path, monkeypatch):
    monkeypatch.setattr("grpo.demo.build_demo_model", _fake_build([]))
    monkeypatch.setenv("GRPO_CACHE", str(tmp_path / "c"))
    assert resolve_demo_model("demo:tiny-arith").parent == tmp_path / "c"


def test_interrupted_build_leaves_no_cache_entry(tmp_path, monkeypatch):
    def broken(out_dir, settings):
        (out_dir / "model.safetensors").write_text("half")
        raise KeyboardInterrupt

    monkeypatch.setattr("grpo.demo.build_demo_model", broken)
    with pytest.raises(KeyboardInterrupt):
        resolve_demo_model("demo:tiny-arith", tmp_path)
    assert list(tmp_path.iterdir()) == []
    calls = []
    monkeypatch.setattr("grpo.demo.build_demo_model", _fake_build(calls))
    assert (resolve_demo_model("demo:tiny-arith", tmp_path) / "config.json").is_file() and len(calls) == 1


@pytest.mark.slow
def test_shipped_demo_model_sometimes_works_it_out_and_sometimes_guesses(monkeypatch):
    """What RL has to learn on the demo: the warm start shows its working on some samples (right most of the
    time) and guesses on the others (right about one time in ten), so groups have mixed rewards and the reward
    can tell the two behaviours apart."""
    sys.path.insert(0, str(ROOT / "bench"))
    from demo_accuracy import generate, is_correct

    monkeypatch.delenv("GRPO_DEMO_REBUILD")
    path = resolve_demo_model("demo:tiny-arith")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    rows = [json.loads(line) for line in (ROOT / "data/arith/test.jsonl").read_text().splitlines()][:100]
    groups = generate(model, tok, [PROMPT_TEMPLATE.format(**r) for r in rows], samples=4, temperature=1.0)
    worked = [is_correct(t, r["answer"]) for g, r in zip(groups, rows) for t in g if " = " in t]
    guessed = [is_correct(t, r["answer"]) for g, r in zip(groups, rows) for t in g if " = " not in t]
    assert 0.1 < len(worked) / 400 < 0.9, len(worked)
    assert sum(worked) / len(worked) > sum(guessed) / len(guessed) + 0.3, (sum(worked), len(worked), sum(guessed))
    assert sum(0 < sum(is_correct(t, r["answer"]) for t in g) < 4 for g, r in zip(groups, rows)) > 40


@pytest.mark.slow
def test_real_demo_build_loads_and_answers_in_the_task_format(tmp_path, monkeypatch):
    """The whole build pipeline (tokenizer, model, warm start, save, cache), with fewer warm-start steps than
    the shipped build (2000 steps take about 6 minutes on 2 cores)."""
    monkeypatch.setitem(BUILDS, "tiny-arith", dict(BUILDS["tiny-arith"], sft_steps=150))
    sys.path.insert(0, str(ROOT / "bench"))
    from demo_accuracy import generate

    path = resolve_demo_model("demo:tiny-arith", tmp_path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    prompt = PROMPT_TEMPLATE.format(question="Tom has 2 eggs and finds 3 more. How many eggs now?")
    texts = generate(model, tok, [prompt], samples=8, temperature=1.0)[0]
    assert sum("The answer is" in t for t in texts) >= 4, texts
    assert json.loads((path / "demo_build.json").read_text())["settings"]["sft_steps"] == 150
    assert os.listdir(tmp_path) == [path.name]
