"""Bad input files and output folders: a clear error that names the file, line or key and the fix, never a raw
traceback (issue 26: survive, round two)."""

from __future__ import annotations

import json

import pytest
from conftest import grpo, write_recipe

from grpo.data import load_rows
from grpo.errors import UserError
from grpo.validate import check_output_dir


def test_a_byte_that_is_not_utf8_names_the_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"q": "1+1", "a": "2"}\n{"q": "caf\xe9", "a": "3"}\n')
    with pytest.raises(UserError) as info:
        load_rows(str(path))
    assert f"dataset {path}, line 2: not UTF-8 text (byte 0xe9" in str(info.value) and "iconv" in str(info.value)


@pytest.mark.parametrize("suffix, text", [(".jsonl", '{"q": "1+1", "a": "2"}\n'), (".csv", "q,a\n1+1,2\n"),
                                          (".json", '[{"q": "1+1", "a": "2"}]')])
def test_a_byte_order_mark_is_read_as_utf8(tmp_path, suffix, text):
    path = tmp_path / f"rows{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert load_rows(str(path)) == [{"q": "1+1", "a": "2"}]  # the first column is "q", not "\ufeffq"


def test_a_broken_json_file_names_its_line(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text('[{"q": "1"},\n {"q": 2,}]')
    with pytest.raises(UserError, match=r"rows.json, line 2: not valid JSON"):
        load_rows(str(path))


def test_a_corrupt_parquet_file_is_named(tmp_path):
    path = tmp_path / "rows.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(UserError, match=r"rows.parquet: not a readable Parquet file"):
        load_rows(str(path))


def test_output_dir_must_be_a_writable_directory(tmp_path, monkeypatch):
    a_file = tmp_path / "taken"
    a_file.write_text("mine")
    [problem] = check_output_dir(str(a_file))
    assert problem.startswith(f"output_dir: {a_file} is a file")
    [problem] = check_output_dir(str(a_file / "runs" / "r1"))  # a file on the way
    assert f"{a_file} (on the way to {a_file / 'runs' / 'r1'}) is a file" in problem
    assert check_output_dir(str(tmp_path / "new" / "deeper")) == []  # can be made
    monkeypatch.setattr("grpo.validate.os.access", lambda path, mode: False)  # as on a read-only file system
    [problem] = check_output_dir(str(tmp_path / "new"))
    assert "is not writable here" in problem
    assert a_file.read_text() == "mine"


@pytest.mark.slow  # grpo in child processes
def test_train_and_validate_refuse_a_file_as_output_dir_with_exit_2(tmp_path, tiny_model_dir, sums_file):
    recipe = write_recipe(tmp_path, tiny_model_dir, sums_file, "math")
    (tmp_path / "run").write_text("not a folder")
    for command in ("validate", "train"):
        result = grpo(command, str(recipe), cwd=tmp_path, timeout=600)
        assert result.returncode == 2, result.stderr[-1500:]
        assert f"output_dir: {tmp_path / 'run'} is a file" in result.stderr or "run is a file" in result.stderr
        assert "Traceback" not in result.stderr
    assert (tmp_path / "run").read_text() == "not a folder"


@pytest.mark.slow  # grpo in child processes
def test_data_with_a_bad_byte_fails_validate_with_the_line(tmp_path, tiny_model_dir):
    data = tmp_path / "bad.jsonl"
    data.write_bytes(json.dumps({"question": "1+1", "answer": "2"}).encode() + b"\n\xff\xfe\n")
    recipe = write_recipe(tmp_path, tiny_model_dir, data, "math")
    result = grpo("validate", str(recipe), cwd=tmp_path, timeout=600)
    assert result.returncode == 2 and "line 2: not UTF-8 text (byte 0xff" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_model_path_that_is_neither_here_nor_reachable_is_said_at_once(monkeypatch):
    import huggingface_hub.constants as hub_constants
    from huggingface_hub import HfApi

    from grpo.modeling import hub_model_problem, resolve_model_path

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match=r"org/nope is not a local directory .*offline mode is on \(HF_HUB_OFFLINE=1\)"):
        resolve_model_path("org/nope")

    class ConnectError(Exception):  # what httpx raises with no network
        pass

    class RepositoryNotFoundError(Exception):
        pass

    def unreachable(self, model_id, timeout=None):
        raise ConnectError("[Errno -2] Name or service not known")

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(HfApi, "model_info", unreachable)
    assert "the hub is not reachable from here (ConnectError" in hub_model_problem("org/nope")

    def missing(self, model_id, timeout=None):
        raise RepositoryNotFoundError("404")

    monkeypatch.setattr(HfApi, "model_info", missing)
    assert "the hub has no model org/nope" in hub_model_problem("org/nope")
    monkeypatch.setattr(HfApi, "model_info", lambda self, model_id, timeout=None: object())
    assert hub_model_problem("org/nope") is None


def test_a_bad_first_row_is_that_rows_problem_not_the_files(tmp_path, tiny_model_dir):
    from grpo.data import check_template
    from grpo.validate import validate_recipe

    data = tmp_path / "rows.jsonl"
    rows = [{"note": "header-ish row"}] + [{"question": f"{a}+{a}=", "answer": str(2 * a)} for a in range(6)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert check_template("{question}", rows, "data.prompt_template", str(data)) == []
    warnings: list[str] = []
    recipe = write_recipe(tmp_path, tiny_model_dir, data, "math")
    cfg = validate_recipe(recipe, warnings=warnings, check_environment=False)  # on_bad_row=skip: a warning
    assert cfg.data.path == str(data) and any("1 of 7 rows cannot train (row 1: no column question" in w
                                              for w in warnings)
    with pytest.raises(UserError, match="row 1: no column question"):
        validate_recipe(recipe, ["data.on_bad_row=error"], check_environment=False)


def test_greedy_eval_with_several_samples_is_refused():
    from grpo.config import EvalConfig
    from grpo.rules import eval_rules

    [problem] = eval_rules(EvalConfig(data="x.jsonl", k=8, temperature=0.0))
    assert problem.startswith("eval.k: 8 samples at temperature 0 are 8 copies of one greedy answer")
    assert eval_rules(EvalConfig(data="x.jsonl", k=1, temperature=0.0)) == []
    assert eval_rules(EvalConfig(data="x.jsonl", k=8, temperature=0.6)) == []


def test_an_eval_protocol_that_cannot_fit_is_refused_before_anything_loads(tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from grpo.cli import app
    from grpo.config import EvalConfig
    from grpo.eval.budget import eval_memory_bytes
    from grpo.plan import ModelShape

    shape = ModelShape(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, head_dim=16, vocab=1000, tied=True)
    terms = eval_memory_bytes(EvalConfig(data="x", k=4, max_new_tokens=100, generation_batch_size=8), 10, "hf",
                              shape, 4)
    assert terms["samples held until the summary"] == 10 * 4 * (100 * 8 + 1024)
    assert terms["one generate call's KV cache"] == 8 * (512 + 100) * (2 * 2 * 2 * 16 * 4)  # 8 rows a call
    assert "one generate call's KV cache" not in eval_memory_bytes(EvalConfig(data="x"), 10, "vllm", shape, 4)

    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"problem": f"{a}+{a}", "answer": str(2 * a)}) + "\n" for a in range(30)))
    result = CliRunner().invoke(app, ["eval", "--model", str(tiny_model_dir), "--data", str(data), "--k", "100000",
                                      "--max-tokens", "3072", "--temperature", "1.0",
                                      "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "eval: k = 100000 samples of up to 3072 tokens for 30 problems needs about" in result.output
    assert "Lower --k or --max-tokens" in result.output and not (tmp_path / "out").exists()
