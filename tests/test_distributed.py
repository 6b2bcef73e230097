"""Scale-out on CPU: torchrun with 2 processes (gloo) against one process on the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent / "distributed"
pytestmark = pytest.mark.slow  # every test here launches torchrun (2 ranks) or a training process

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def torchrun(*args, nproc=2, timeout=600, cwd=ROOT):
    # --standalone: torchrun picks a free port itself, so concurrent runs never collide
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV, cwd=cwd)


def python(*args, timeout=600):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=ENV, cwd=ROOT)


@pytest.fixture(scope="module")
def update_results(tmp_path_factory, tiny_model_dir):
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    single = python(HERE / "one_update.py", tiny_model_dir, one)
    assert single.returncode == 0, single.stderr[-3000:]
    multi = torchrun(HERE / "one_update.py", tiny_model_dir, two)
    assert multi.returncode == 0, multi.stderr[-3000:]
    return one, two


def case_names():
    sys.path.insert(0, str(HERE))
    try:
        from one_update import CASES
    finally:
        sys.path.pop(0)
    return [c[0] for c in CASES]


@pytest.mark.parametrize("case", case_names())
def test_two_ranks_update_equals_one_process(update_results, case):
    one, two = (torch.load(d / f"{case}.pt") for d in update_results)
    assert one["tokens"] == two["tokens"]  # the global batch's token count, all-reduced
    assert two["loss"] == pytest.approx(one["loss"], abs=1e-6)
    assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-5)
    assert two["kl"] == pytest.approx(one["kl"], abs=1e-7)
    if "advantages" in one:  # the objectives cases: advantages (REINFORCE++: global batch) and correction
        assert two["advantages"] == pytest.approx(one["advantages"], abs=1e-6)
        assert two["correction_weight_mean"] == pytest.approx(one["correction_weight_mean"], rel=1e-6)
        assert two["clip_fraction"] == pytest.approx(one["clip_fraction"], abs=1e-7)
    for name, w in one["weights"].items():
        torch.testing.assert_close(two["weights"][name], w, atol=1e-6, rtol=1e-5, msg=name)


def test_the_update_moved_the_weights(update_results, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    after = torch.load(update_results[1] / "fsdp-token_mean-beta0.0-mu1.pt")["weights"]
    assert max(float((after[k] - start[k]).abs().max()) for k in start) > 1e-4


SMALL = ["train.prompts_per_step=4", "sampler.group_size=4", "sampler.max_new_tokens=12", "train.micro_batch_size=4",
         "logging.progress_bar=false", "logging.samples_every=1", "logging.num_samples=16"]


def grpo_train(out, *overrides, nproc=2, timeout=600):
    args = ["-m", "grpo", "train", "recipes/tiny.yaml", f"output_dir={out}", *SMALL, *overrides]
    return torchrun(*args, nproc=nproc, timeout=timeout) if nproc > 1 else python(*args, timeout=timeout)


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def same_figures(a, b):
    keep = lambda r: {k: v for k, v in r.items() if not k.startswith(("time/", "throughput/"))}  # noqa: E731
    return [keep(r) for r in a] == [keep(r) for r in b]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """3 steps on 2 ranks, uninterrupted, with a checkpoint after step 2."""
    out = tmp_path_factory.mktemp("straight") / "run"
    result = grpo_train(out, "train.steps=3", "checkpoint.every=2", "checkpoint.keep_last=3")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_two_ranks_write_each_step_once(straight_run):
    metrics = rows(straight_run / "metrics.jsonl")
    assert [r["step"] for r in metrics] == [1, 2, 3]  # one writer: no step logged twice
    assert all(r["groups/trained"] == 4 for r in metrics)  # the global batch: 4 groups over 2 ranks
    samples = rows(straight_run / "samples.jsonl")
    assert {r["step"] for r in samples} == {1, 2, 3} and len(samples) == 3 * 16  # every completion of the step
    assert sorted(p.name for p in (straight_run / "checkpoints").iterdir()) == ["latest", "step-000002",
                                                                               "step-000003"]


def test_resume_on_two_ranks_equals_the_straight_run(straight_run, tmp_path):
    out = tmp_path / "resumed"
    (out / "checkpoints").mkdir(parents=True)
    import shutil

    shutil.copytree(straight_run / "checkpoints" / "step-000002", out / "checkpoints" / "step-000002")
    (out / "metrics.jsonl").write_text("".join(line + "\n" for line in
                                               (straight_run / "metrics.jsonl").read_text().splitlines()[:2]))
    result = grpo_train(out, "train.steps=3", "checkpoint.every=2", "checkpoint.keep_last=3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stdout
    assert same_figures(rows(out / "metrics.jsonl"), rows(straight_run / "metrics.jsonl"))
    a = load_weights(out / "checkpoints" / "step-000003")
    b = load_weights(straight_run / "checkpoints" / "step-000003")
    for name in b:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5)


def test_a_two_rank_checkpoint_resumes_on_one_process(straight_run, tmp_path):
    """World-size-free checkpoints: the 2-rank step-2 checkpoint resumes in one process, with its weights,
    optimizer moments (by parameter name) and the global data position."""
    import shutil

    out = tmp_path / "one"
    shutil.copytree(straight_run / "checkpoints" / "step-000002", out / "checkpoints" / "step-000002")
    result = grpo_train(out, "train.steps=3", "checkpoint.every=2", nproc=1)
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(out / "checkpoints" / "step-000003" / "trainer_state.pt", weights_only=False)
    saved = torch.load(straight_run / "checkpoints" / "step-000002" / "trainer_state.pt", weights_only=False)
    assert saved["world_size"] == 2 and state["world_size"] == 1
    assert state["data"]["position"] == saved["data"]["position"] + 4  # one more step of 4 prompts
    moments = torch.load(out / "checkpoints" / "step-000003" / "optimizer.pt", weights_only=False)
    saved_moments = torch.load(straight_run / "checkpoints" / "step-000002" / "optimizer.pt", weights_only=False)
    assert set(moments["state"]) == set(saved_moments["state"]) and moments["state"]
    step3 = {r["prompt"] for r in rows(out / "samples.jsonl") if r["step"] == 3}
    assert step3 == {r["prompt"] for r in rows(straight_run / "samples.jsonl") if r["step"] == 3}


def load_weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_a_rank_that_fails_ends_the_job_naming_it(tmp_path):
    plugin = tmp_path / "rank_bomb.py"
    plugin.write_text("import os\n\nclass Boom(BaseException):\n    pass\n\n"
                      "def reward(prompts, completions, **kw):\n"
                      "    if os.environ.get('RANK') == '1':\n        raise Boom('the reward blew up on purpose')\n"
                      "    return [0.0] * len(completions)\n")
    env_path = f"{tmp_path}{os.pathsep}{ENV.get('PYTHONPATH', '')}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "grpo", "train", "recipes/tiny.yaml", f"output_dir={tmp_path / 'run'}",
           *SMALL, "train.steps=2", "rewards=[{name: 'rank_bomb:reward'}]", "distributed.timeout_s=60"]
    # In process: in its own worker (the default for plugins) the raise would be contained and scored 0; here the
    # reward stands for anything that takes one rank down.
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env={**ENV, "PYTHONPATH": env_path, "GRPO_REWARDS_IN_PROCESS": "1"})
    assert result.returncode != 0
    assert "rank 1/2: failed: Boom: the reward blew up on purpose" in result.stderr


def test_dynamic_sampling_deals_the_kept_groups_out_evenly(tmp_path):
    out = tmp_path / "dyn"
    result = grpo_train(out, "train.steps=2", "train.dynamic_sampling=true", "train.max_sampling_rounds=2",
                        "checkpoint.every=0")
    assert result.returncode == 0, result.stderr[-3000:]
    for row in rows(out / "metrics.jsonl"):
        assert row["groups/trained"] % 2 == 0 and row["groups/trained"] <= 4  # whole groups, same on each rank
        assert row["groups/zero_variance_fraction"] <= 1.0


def test_eval_on_two_ranks_covers_every_problem_once(tmp_path):
    out = tmp_path / "ev"
    result = torchrun("-m", "grpo", "eval", "--model", "demo:tiny-arith", "--data", "data/arith/test.jsonl",
                      "--prompt-template", "Question: {question}\nAnswer:", "--k", "2", "--limit", "7",
                      "--max-tokens", "24", "--output-dir", out, "--bootstrap", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    records = rows(out / "samples.jsonl")
    assert [r["index"] for r in records] == list(range(7))  # 7 problems over 2 ranks (one padded), each once
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"][0]["problems"] == 7 and all(len(r["samples"]) == 2 for r in records)
    assert result.stdout.count("avg@2") == 1  # one console table: rank 0's


def test_periodic_eval_on_two_ranks_gathers_every_problem(tmp_path):
    out = tmp_path / "ev"
    result = grpo_train(out, "train.steps=2", "checkpoint.every=0", "eval.every=2", "eval.data=data/arith/test.jsonl",
                        "eval.prompt_template=Question: {question}\nAnswer:", "eval.limit=5", "eval.k=2",
                        "eval.max_new_tokens=16", "eval.bootstrap=0")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "eval" / "step_000002" / "summary.json").read_text())
    assert summary["data"][0]["problems"] == 5
    assert [r["index"] for r in rows(out / "eval" / "step_000002" / "samples.jsonl")] == list(range(5))
    assert "eval/avg@2" in rows(out / "metrics.jsonl")[-1]


def test_tool_episodes_on_two_sharded_ranks_take_their_turns_together(tmp_path):
    """FSDP decodes in lockstep: ranks whose episodes call the calculator a different number of times must still
    make the same generate calls (a rank with nothing left decodes a stand-in), or the job would hang."""
    out = tmp_path / "tools"
    result = torchrun("-m", "grpo", "train", "recipes/tiny-tools.yaml", f"output_dir={out}", "train.steps=2",
                      "train.prompts_per_step=4", "sampler.group_size=4", "train.micro_batch_size=8",
                      "distributed.strategy=fsdp", "checkpoint.every=0", "eval.every=0", "logging.progress_bar=false")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = rows(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2] and all("tools/calls_mean" in m for m in metrics)
