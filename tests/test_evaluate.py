"""`grpo eval` end to end on CPU: a tiny random Llama (conftest), a small local set, a grader written here."""

import hashlib
import json
import sys
from pathlib import Path

import pytest
from conftest import eval_config
from typer.testing import CliRunner

from grpo.config import EvalConfig
from grpo.errors import ConfigError, UserError
from grpo.recipe import load_eval_section
from grpo.eval.metrics import normalize_answer
from grpo.config import VllmConfig
from grpo.eval.periodic import PeriodicEval
from grpo.eval.run import run_eval
from grpo.rules import eval_rules as check_eval_config

ROOT = Path(__file__).resolve().parents[1]

# A random model is never right under the math grader; this grader gives it partial credit (about half of all
# characters count as "right" first characters), so pass@k, maj@k and the seed all matter.
GRADER = '''
def first_char(prompts, completions, answer, **kwargs):
    return [1.0 if c[:1] and ord(c[0]) % 2 == 0 else 0.0 for c in completions]

def fragile(prompts, completions, answer, **kwargs):
    if any(c[:1] and ord(c[0]) % 2 for c in completions):
        raise RuntimeError("a grader bug")
    return [0.5 for _ in completions]
'''


@pytest.fixture
def grader_module(tmp_path, monkeypatch):
    (tmp_path / "eval_test_graders.py").write_text(GRADER)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("eval_test_graders", None)
    return "eval_test_graders"


@pytest.fixture
def problems_file(tmp_path):
    path = tmp_path / "adds.jsonl"
    with path.open("w") as f:
        for a in range(5):
            f.write(json.dumps({"question": f"{a}+1=", "answer": str(a + 1), "level": a % 2}) + "\n")
    return path


def config(data, module, fn="first_char", **kw):
    return eval_config(data, f"{module}:{fn}", **kw)


def test_end_to_end_writes_consistent_files(tiny_model_dir, problems_file, grader_module, tmp_path, capsys):
    out = tmp_path / "out"
    summary = run_eval(config(problems_file, grader_module, group_by="level"), model_path=tiny_model_dir,
                       output_dir=out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["samples.jsonl", "summary.json", "summary.md"]  # no temp left

    lines = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == 5 and all(len(r["samples"]) == 3 for r in lines)
    for r in lines:
        for s in r["samples"]:
            assert s["correct"] == (s["score"] >= 1.0)
            assert s["extracted"] == normalize_answer(s["text"])  # not the math grader: the whole completion
            assert s["finish_reason"] in ("stop", "length") and 1 <= s["tokens"] <= 5
        assert r["num_correct"] == sum(s["correct"] for s in r["samples"])
    # The summary's numbers are what the samples say.
    correct = [[s["correct"] for s in r["samples"]] for r in lines]
    overall = summary["metrics"]["overall"]
    assert overall["metrics"]["avg@3"] == pytest.approx(sum(map(sum, correct)) / 15)
    assert overall["metrics"]["pass@3"] == pytest.approx(sum(any(c) for c in correct) / 5)
    assert overall["metrics"]["maj@3"] == pytest.approx(sum(r["majority_correct"] for r in lines) / 5)
    assert 0 < overall["metrics"]["avg@3"] < 1  # the grader's partial credit shows up: the test can tell runs apart
    truncated = [s["finish_reason"] == "length" for r in lines for s in r["samples"]]
    assert overall["truncation_rate"] == pytest.approx(sum(truncated) / 15)
    assert set(summary["metrics"]["groups"]) == {"adds/level=0", "adds/level=1"}

    written = json.loads((out / "summary.json").read_text())
    assert written["metrics"] == summary["metrics"]
    assert written["data"][0]["file_sha256"] == hashlib.sha256(problems_file.read_bytes()).hexdigest()
    assert written["model"]["path"] == str(tiny_model_dir) and len(written["model"]["files_sha256"]) == 64
    for key, value in {"k": 3, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 5, "sampler": "hf"}.items():
        assert written["sampling"][key] == value
    assert written["seed"] == 0 and written["grader"]["name"].endswith(":first_char")
    assert written["grpo_version"]
    md = (out / "summary.md").read_text()
    assert "| dataset | problems | avg@3 |" in md and "| adds |" in md and "grader" in md
    printed = capsys.readouterr().out
    assert "avg@3" in printed and "adds" in printed  # the console table


@pytest.mark.slow
def test_same_seed_same_numbers_other_seed_other_samples(tiny_model_dir, problems_file, grader_module, tmp_path):
    from grpo.modeling import load_tokenizer

    cfg = config(problems_file, grader_module)
    first = run_eval(cfg, model_path=tiny_model_dir, output_dir=tmp_path / "a", progress=False, console=False)
    again = run_eval(cfg, model_path=tiny_model_dir, output_dir=tmp_path / "b", progress=False, console=False)
    assert first["metrics"] == again["metrics"]
    assert (tmp_path / "a" / "samples.jsonl").read_text() == (tmp_path / "b" / "samples.jsonl").read_text()
    other = config(problems_file, grader_module, seed=1)
    run_eval(other, model_path=tiny_model_dir, output_dir=tmp_path / "c", progress=False, console=False,
             tokenizer=load_tokenizer(tiny_model_dir))
    assert (tmp_path / "c" / "samples.jsonl").read_text() != (tmp_path / "a" / "samples.jsonl").read_text()


def test_bad_data_path_names_it_before_loading_a_model(tmp_path, grader_module):
    missing = tmp_path / "nope" / "aime.jsonl"
    with pytest.raises(UserError, match=str(missing)):
        run_eval(config(missing, grader_module), model_path=tmp_path / "no-model", output_dir=tmp_path / "o")


def test_cli_bad_data_exits_2_with_the_path(tmp_path, tiny_model_dir):
    from grpo.cli import app

    missing = tmp_path / "missing.jsonl"
    result = CliRunner().invoke(app, ["eval", "--model", str(tiny_model_dir), "--data", str(missing)])
    assert result.exit_code == 2
    assert str(missing) in result.output and "no such file" in result.output


def test_cli_recipe_with_command_line_overrides(tmp_path, tiny_model_dir, problems_file, grader_module):
    from grpo.cli import app

    recipe = tmp_path / "eval.yaml"
    recipe.write_text(f"eval:\n  data: {problems_file}\n  prompt_template: '{{question}}'\n  grader: "
                      f"{grader_module}:first_char\n  k: 4\n  temperature: 0.7\n  max_new_tokens: 4\n  bootstrap: 20\n")
    out = tmp_path / "cli-out"
    result = CliRunner().invoke(app, ["eval", "--model", str(tiny_model_dir), "--recipe", str(recipe), "--k", "2",
                                      "--limit", "3", "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sampling"]["k"] == 2  # command line beats the recipe
    assert summary["sampling"]["temperature"] == 0.7  # the recipe beats the default
    assert summary["data"][0]["problems"] == 3
    assert "avg@2" in result.output


def test_grader_crash_scores_zero_and_is_counted(tiny_model_dir, problems_file, grader_module, tmp_path):
    cfg = config(problems_file, grader_module, "fragile")
    summary = run_eval(cfg, model_path=tiny_model_dir, output_dir=tmp_path / "o", progress=False, console=False)
    assert summary["metrics"]["overall"]["metrics"]["avg@3"] == 0.0  # 0.5 is below the 1.0 bar; crashes score 0
    lines = [json.loads(x) for x in (tmp_path / "o" / "samples.jsonl").read_text().splitlines()]
    crashed = sum(bool(s["text"][:1]) and ord(s["text"][0]) % 2 == 1 for r in lines for s in r["samples"])
    assert 0 < crashed and summary["grader"]["errors"] == crashed
    assert {s["score"] for r in lines for s in r["samples"]} == {0.0, 0.5}


def test_answer_pattern_extracts_the_gold_answer(tiny_model_dir, tmp_path, grader_module):
    data = tmp_path / "gsm.jsonl"
    data.write_text(json.dumps({"question": "1+1=", "answer": "one and one\n#### 2"}) + "\n")
    cfg = config(data, grader_module, answer_pattern=r"####\s*(.+)", k=1)
    run_eval(cfg, model_path=tiny_model_dir, output_dir=tmp_path / "o", progress=False, console=False)
    record = json.loads((tmp_path / "o" / "samples.jsonl").read_text())
    assert record["answer"] == "2"
    bad = config(data, grader_module, answer_pattern=r"ANSWER:(\d+)", k=1)
    with pytest.raises(UserError, match="does not match"):
        run_eval(bad, model_path=tiny_model_dir, output_dir=tmp_path / "p", progress=False, console=False)


def test_config_problems_are_reported_together(tmp_path):
    cfg = EvalConfig(data="x.jsonl", k=0, temperature=-1, top_p=1.5, answer_pattern="(", bootstrap=-1)
    problems = check_eval_config(cfg)
    for key in ("eval.k", "eval.temperature", "eval.top_p", "eval.answer_pattern", "eval.bootstrap"):
        assert any(p.startswith(key) for p in problems), key
    with pytest.raises(ConfigError):
        run_eval(cfg, output_dir=tmp_path)


def test_missing_column_is_named(tmp_path, problems_file, grader_module, tiny_model_dir):
    cfg = config(problems_file, grader_module, prompt_template="{problem}", answer_column="solution")
    with pytest.raises(ConfigError) as info:
        run_eval(cfg, model_path=tiny_model_dir, output_dir=tmp_path / "o")
    assert "{problem}" in str(info.value) and "'solution'" in str(info.value)


def test_periodic_eval_returns_flat_metrics_and_reads_its_sets_once(tiny_model_dir, problems_file, grader_module,
                                                                     tmp_path):
    import dataclasses

    import torch

    from grpo.config import ModelConfig
    from grpo.modeling import load_policy, load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    policy = load_policy(ModelConfig(path=str(tiny_model_dir)), tiny_model_dir, torch.device("cpu"))
    evaluator = PeriodicEval(dataclasses.replace(config(problems_file, grader_module, k=4), every=7), "hf")
    Path(problems_file).unlink()  # read at setup, never again
    assert evaluator(policy, tokenizer, None, tmp_path, 6) == {}  # not a step eval.every names
    rng_before = torch.random.get_rng_state()
    metrics = evaluator(policy, tokenizer, None, tmp_path, 7)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # training's random stream is not moved
    assert policy.training  # left in train mode
    assert {"eval/avg@4", "eval/pass@1", "eval/pass@2", "eval/pass@4", "eval/maj@4", "eval/length_mean",
            "eval/truncation_rate"} <= set(metrics)
    assert all(isinstance(v, float) for v in metrics.values())
    assert metrics["eval/pass@1"] == pytest.approx(metrics["eval/avg@4"])
    summary = json.loads((tmp_path / "eval" / "step_000007" / "summary.json").read_text())
    assert summary["step"] == 7


@pytest.mark.parametrize("name", ["aime24_avg32", "math500_pass1x4", "gsm8k"])
def test_shipped_eval_recipes_validate(name, monkeypatch):
    # Eval recipes hold only an eval: section, so they are read with load_eval_section (which drops the
    # training-only requirements a bare recipe lacks) rather than load_recipe; every other problem still counts.
    monkeypatch.chdir(ROOT)
    cfg, _ = load_eval_section(ROOT / "recipes" / "eval" / f"{name}.yaml")
    assert check_eval_config(cfg) == []
    assert cfg.grader == "math" and cfg.answer_column == "answer"
    assert cfg.data.startswith("data/eval/")  # shipped in the repo: nothing outside it, no hub
    expected = {"aime24_avg32": (32, 1.0, 30), "math500_pass1x4": (4, 0.6, 500), "gsm8k": (1, 0.0, 1319)}[name]
    assert (cfg.k, cfg.temperature) == expected[:2]
    row = {"problem": "P", "question": "Q"}
    assert "\\boxed{}" in cfg.prompt_template.format_map(row)
    from grpo.eval.sets import gold_answer, load_eval_sets

    (evalset,) = load_eval_sets(cfg)  # checks the template's fields and the answer column against the rows
    assert len(evalset.rows) == expected[2] and evalset.file_sha256 is not None
    assert all(str(gold_answer(r, cfg, cfg.data, i)).strip() for i, r in enumerate(evalset.rows))


def test_eval_recipe_with_a_typo_still_fails(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("eval:\n  data: x.jsonl\n  temprature: 0.6\n")
    with pytest.raises(ConfigError, match="did you mean 'eval.temperature'"):
        load_eval_section(recipe)


def test_vllm_sampler_missing_is_a_user_error(tmp_path, problems_file, grader_module, tiny_model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "grpo.sampling.vllm", None)  # as if the module (or vllm) were absent
    cfg = config(problems_file, grader_module, sampler="vllm")
    with pytest.raises(UserError, match="--sampler hf"):
        run_eval(cfg, model_path=tiny_model_dir, output_dir=tmp_path / "o")


def test_vllm_sampler_is_built_from_the_model_directory(tmp_path, problems_file, grader_module, tiny_model_dir,
                                                        monkeypatch):
    import types

    from grpo.sampling.base import Completion, Group

    built = {}

    class FakeVLLMSampler:  # records how eval builds and calls it; answers "4" to everything
        backend = "vllm"

        def close(self):
            built["closed"] = True

        def __init__(self, model_path, **kwargs):
            built.update(model_path=model_path, **kwargs)
            built["calls"] = []

        def generate(self, prompt_ids, settings, rows=None):
            built["calls"].append((len(prompt_ids), settings))
            return [Group(list(p), [Completion([5], [0.0], "4", "stop") for _ in range(settings.n)])
                    for p in prompt_ids]

    monkeypatch.setitem(sys.modules, "grpo.sampling.vllm", types.SimpleNamespace(VLLMSampler=FakeVLLMSampler))
    cfg = config(problems_file, grader_module, "first_char", sampler="vllm", k=2, seed=3)
    summary = run_eval(cfg, model_path=tiny_model_dir, output_dir=tmp_path / "o", progress=False, console=False,
                       engine=VllmConfig(kv_cache_memory_bytes=1 << 28, gpu_memory_utilization=0.85))
    assert built["model_path"] == str(tiny_model_dir) and built["seed"] == 3
    assert built["kv_cache_memory_bytes"] == 1 << 28 and built["gpu_memory_utilization"] == 0.85
    assert [n for n, _ in built["calls"]] == [5]  # all five problems in one call (vLLM batches itself)
    settings = built["calls"][0][1]
    assert (settings.n, settings.temperature, settings.max_new_tokens) == (2, 1.0, 5)
    assert summary["sampling"]["sampler"] == "vllm" and built["closed"]  # eval closes the engine it built
    assert summary["metrics"]["overall"]["metrics"]["avg@2"] == 1.0  # "4": ord 52 is even -> right
    assert summary["metrics"]["overall"]["metrics"]["maj@2"] == 1.0


def test_demo_model_on_the_demo_test_set_with_the_math_grader(tmp_path):
    """The README's first eval command, on a slice: the shipped demo model, a local file, the real grader."""
    from grpo.cli import app

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "demo-eval"
    result = CliRunner().invoke(app, ["eval", "--model", "demo:tiny-arith", "--data", str(root / "data/arith/test.jsonl"),
                                      "--prompt-template", "Question: {question}\nAnswer:", "--k", "4",
                                      "--temperature", "1.0", "--top-p", "1.0", "--max-tokens", "48", "--limit", "16",
                                      "--bootstrap", "50", "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    overall = json.loads((out / "summary.json").read_text())["metrics"]["overall"]
    assert overall["problems"] == 16 and {"avg@4", "pass@4", "maj@4"} <= set(overall["metrics"])
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    graded = [s for p in samples for s in p["samples"]]
    assert len(graded) == 64 and all(s["extracted"] is not None for s in graded if "The answer is" in s["text"])
    accuracy = sum(s["correct"] for s in graded) / len(graded)
    assert overall["metrics"]["avg@4"] == pytest.approx(accuracy)
    assert 0 < accuracy < 1  # the warm-started model is right some of the time, wrong often
