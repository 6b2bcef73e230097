import os

# Any hub call fails fast instead of hanging on a network that is not there.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json

import pytest


def build_tiny_model(out_dir, seed=0, layers=2, hidden=64):
    """A random tiny Llama with the demo's character tokenizer: enough to exercise every code path in seconds.
    The same builders as the shipped demo model (grpo.demo), smaller."""
    from grpo.demo.model import build_tiny_llama
    from grpo.demo.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    tok.save_pretrained(out_dir)
    model = build_tiny_llama(len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, seed=seed,
                             hidden=hidden, layers=layers, heads=2, max_positions=256)
    model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture
def sums_file(tmp_path):
    path = tmp_path / "sums.jsonl"
    with path.open("w") as f:
        for a in range(12):
            f.write(json.dumps({"question": f"{a}+{a}=", "answer": str(2 * a), "level": a % 3}) + "\n")
    return path


@pytest.fixture
def background(tmp_path):
    """Processes the test starts in the background (tests/gate.py); any left running are killed at teardown."""
    from gate import Background

    procs = Background(tmp_path)
    yield procs
    procs.stop_all()
