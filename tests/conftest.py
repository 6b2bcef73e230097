import os

# Any hub call fails fast instead of hanging on a network that is not there.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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


# ------------------------------------------------------------------------------------------------ shared helpers
# Plain functions: a test file imports them with `from conftest import ...`.

def write_recipe(folder, model_dir, data, reward, *, out="run", file="recipe.yaml", name="test", steps=3,
                 checkpoint="{every: 2, keep_last: 2}",
                 logging="{samples_every: 1, num_samples: 2, progress_bar: false}", reward_timeout_s=None, extra=""):
    """A training recipe for a tiny run, written to folder/file: the model in `model_dir`, the rows of `data`
    (prompt_template "{question}"), the one reward `reward` (with rewards[].timeout_s when `reward_timeout_s` is
    given), `steps` steps of 2 prompts x 4 completions of 6 tokens, output_dir folder/out. `checkpoint` and
    `logging` are those sections' YAML; `extra` is YAML appended as it is (a section given again there replaces the
    one above). Returns the file's path."""
    limit = f", timeout_s: {reward_timeout_s}" if reward_timeout_s is not None else ""
    path = Path(folder) / file
    path.write_text(textwrap.dedent(f"""
        name: {name}
        output_dir: {Path(folder) / out}
        seed: 3
        model: {{path: {model_dir}}}
        data: {{path: {data}, prompt_template: "{{question}}"}}
        sampler: {{group_size: 4, max_new_tokens: 6}}
        rewards: [{{name: "{reward}"{limit}}}]
        train: {{steps: {steps}, prompts_per_step: 2, micro_batch_size: 4, lr: 1.0e-3}}
        checkpoint: {checkpoint}
        logging: {logging}
    """) + textwrap.dedent(extra))
    return path


def grpo(*args, cwd=ROOT, env=None, pre=None, timeout=120, check=False):
    """The grpo command line in a child process, its output captured (a CompletedProcess; args may be paths).
    By default `python -m grpo.cli ARGS`. With `pre` (Python source, "" included) the child runs `pre` first and
    then grpo's app in the same process, as the `grpo` script would (a fault injected into a real run).
    env: variables set on top of this process's environment (None: inherited as it is). check: assert that it
    exited 0 (the message is its stdout and stderr)."""
    args = [str(a) for a in args]
    if pre is None:
        cmd = [sys.executable, "-m", "grpo.cli", *args]
    else:
        code = f"{pre}\nimport sys\nfrom grpo.cli import app\nsys.argv = ['grpo', *{args!r}]\napp()"
        cmd = [sys.executable, "-c", code]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=None if env is None else {**os.environ, **env})
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def _set(cfg, changes):
    for key, value in changes.items():
        node = cfg
        *parents, last = key.split(".")
        for part in parents:
            node = getattr(node, part)
        setattr(node, last, value)


def recipe_config(*changes, **train):
    """A RecipeConfig built in memory for a test: the defaults, then each dict of dotted keys in `changes` in turn
    ({"model.dtype": "bfloat16"}, values already typed), then the keyword arguments as train.<name>."""
    from grpo.config import RecipeConfig

    cfg = RecipeConfig()
    for each in changes:
        _set(cfg, each)
    _set(cfg, {f"train.{k}": v for k, v in train.items()})
    return cfg


def eval_config(data, grader, **fields):
    """An EvalConfig for a quick test eval: the rows of `data` (prompt_template "{question}"), the grader
    "module:function", k=3 samples of at most 5 tokens at temperature 1, top_p 1, bootstrap 50, seed 0; any field
    as a keyword argument overrides these."""
    from grpo.config import EvalConfig

    base = dict(data=str(data), prompt_template="{question}", grader=grader, k=3,
                temperature=1.0, top_p=1.0, max_new_tokens=5, bootstrap=50, seed=0)
    return EvalConfig(**{**base, **fields})
