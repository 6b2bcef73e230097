"""`grpo train` end to end on a tiny random model: files written, exact resume, dynamic sampling, LoRA,
and the sampler/policy agreement check."""

import json
import textwrap

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from conftest import write_recipe

from grpo.recipe import load_recipe
from grpo.train.trainer import train


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    (tmp_path / "toy_rewards.py").write_text(textwrap.dedent("""
        def vowels(prompts, completions, **kw):
            # some completions score more than others, so groups have variance on a random model
            return [sum(ch in "aeiou" for ch in c) / max(len(c), 1) for c in completions]

        SENT = []

        def vowels_then_sigterm(prompts, completions, **kw):
            # preemption in the middle of step 2 (the step finishes, then the run saves and stops)
            if len(SENT) == 1:
                import os, signal
                os.kill(os.getpid(), signal.SIGTERM)
            SENT.append(1)
            return vowels(prompts, completions)

        def flat_for_even(prompts, completions, level, **kw):
            # level is a dataset column; groups of even-level prompts all score the same
            return [1.0 if lv % 2 == 0 else sum(map(ord, c)) % 7 for c, lv in zip(completions, level)]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "toy_rewards"


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_run_writes_metrics_samples_and_loadable_checkpoints(tmp_path, tiny_model_dir, sums_file, reward_module):
    out = train(load_recipe(write_recipe(tmp_path, tiny_model_dir, sums_file, "toy_rewards:vowels")))
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for key in ("reward/mean", "reward/std", "reward/toy_rewards:vowels/mean", "reward/toy_rewards:vowels/errors",
                "advantage/std", "groups/zero_variance_fraction", "completion/length_mean",
                "completion/length_max", "completion/truncated_fraction", "kl", "clip_fraction", "entropy",
                "grad_norm", "lr", "time/generate_s", "time/score_s", "time/train_s", "time/sync_s",
                "throughput/tokens_per_s", "sampler/logprob_gap"):
        assert key in metrics[-1], key
    assert metrics[-1]["sampler/logprob_gap"] < 1e-3
    samples = read_jsonl(out / "samples.jsonl")
    assert {"prompt", "completion", "reward", "advantage", "answer"} <= set(samples[0])
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir())
    assert checkpoints == ["step-000002", "step-000003"]
    model = AutoModelForCausalLM.from_pretrained(out / "checkpoints" / "step-000003")  # loads as it is
    assert model.config.num_hidden_layers == 2


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path, tiny_model_dir, sums_file, reward_module):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = train(load_recipe(write_recipe(tmp_path / "a", tiny_model_dir, sums_file, "toy_rewards:vowels")))
    path = write_recipe(tmp_path / "b", tiny_model_dir, sums_file, "toy_rewards:vowels")
    train(load_recipe(path, ["train.steps=2"]))
    resumed = train(load_recipe(path))  # finds step 2 in output_dir and goes on to step 3
    a = load_file(straight / "checkpoints/step-000003/model.safetensors")
    b = load_file(resumed / "checkpoints/step-000003/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_jsonl(straight / "metrics.jsonl")[-1]["reward/mean"] == read_jsonl(resumed / "metrics.jsonl")[-1]["reward/mean"]
    assert [m["step"] for m in read_jsonl(resumed / "metrics.jsonl")] == [1, 2, 3]


@pytest.mark.slow
def test_resume_after_sigterm_continues_exactly(tmp_path, tiny_model_dir, sums_file, reward_module, monkeypatch):
    from grpo.train.signals import Stopped

    # The reward signals its own process once (module state): it must be the trainer's, not a plugin worker's.
    monkeypatch.setenv("GRPO_REWARDS_IN_PROCESS", "1")

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = train(load_recipe(write_recipe(tmp_path / "a", tiny_model_dir, sums_file, "toy_rewards:vowels")))
    path = write_recipe(tmp_path / "b", tiny_model_dir, sums_file, "toy_rewards:vowels_then_sigterm")
    with pytest.raises(Stopped) as stopped:
        train(load_recipe(path, ["checkpoint.every=0"]))
    assert stopped.value.exit_code == 143 and stopped.value.step == 2
    resumed = train(load_recipe(path, ["checkpoint.every=0"]))  # the reward's signal is spent
    a = load_file(straight / "checkpoints/step-000003/model.safetensors")
    b = load_file(resumed / "checkpoints/step-000003/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [m["step"] for m in read_jsonl(resumed / "metrics.jsonl")] == [1, 2, 3]


def test_dynamic_sampling_drops_flat_groups_and_refills(tmp_path, tiny_model_dir, sums_file, reward_module):
    path = write_recipe(tmp_path, tiny_model_dir, sums_file, "toy_rewards:flat_for_even",
                        extra="train: {steps: 2, prompts_per_step: 2, micro_batch_size: 4, dynamic_sampling: true, "
                              "max_sampling_rounds: 6}\n")
    out = train(load_recipe(path))
    metrics = read_jsonl(out / "metrics.jsonl")
    assert sum(m["groups/dropped"] for m in metrics) > 0
    assert all(m["groups/trained"] == 2 for m in metrics)


@pytest.mark.slow
def test_lora_trains_adapters_and_saves_a_merged_model(tmp_path, tiny_model_dir, sums_file, reward_module):
    pytest.importorskip("peft")
    path = write_recipe(tmp_path, tiny_model_dir, sums_file, "toy_rewards:vowels",
                        extra="model: {lora: {enabled: true, r: 4, alpha: 8, target_modules: [q_proj, v_proj]}}\n"
                              "train: {steps: 2, prompts_per_step: 2, micro_batch_size: 4, lr: 1.0e-2, beta: 0.05}\n")
    out = train(load_recipe(path, [f"model.path={tiny_model_dir}"]))
    ckpt = out / "checkpoints" / "step-000002"
    assert (ckpt / "adapter" / "adapter_model.safetensors").is_file()
    merged = AutoModelForCausalLM.from_pretrained(ckpt).state_dict()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[q], base[q])  # the adapter was merged in
    assert torch.equal(merged["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])


def test_a_failed_weight_sync_is_an_error(tmp_path, tiny_model_dir, sums_file, reward_module, monkeypatch):
    from grpo.sampling import hf

    real = hf.HFSampler._finish

    def stale(self, tokens, logprobs, settings):  # as if the sampler ran on other weights
        return real(self, tokens, [lp - 2.0 for lp in logprobs], settings)

    monkeypatch.setattr(hf.HFSampler, "_finish", stale)
    with pytest.raises(RuntimeError, match="sampler.max_logprob_gap"):
        train(load_recipe(write_recipe(tmp_path, tiny_model_dir, sums_file, "toy_rewards:vowels")))


def test_a_run_that_died_before_its_first_checkpoint_is_kept_aside_and_started_over(tmp_path, tiny_model_dir,
                                                                                     sums_file, reward_module, capsys):
    """The same command again works (no dead end), and nothing the earlier attempt wrote is overwritten or lost."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "died": true}\n')
    (run / "samples.jsonl").write_text("{}\n")
    out = train(load_recipe(write_recipe(tmp_path, tiny_model_dir, sums_file, "toy_rewards:vowels")))
    [attempt] = (out / "attempts").iterdir()
    assert (attempt / "metrics.jsonl").read_text() == '{"step": 1, "died": true}\n'
    assert (attempt / "samples.jsonl").is_file()
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()][0] == 1
    assert "died" not in (out / "metrics.jsonl").read_text()
    assert f"its files are kept in {attempt}" in capsys.readouterr().err


def test_resume_never_sets_the_earlier_run_aside_checkpoints_included(tmp_path, tiny_model_dir, sums_file,
                                                                      reward_module):
    path = write_recipe(tmp_path, tiny_model_dir, sums_file, "toy_rewards:vowels")
    out = train(load_recipe(path, ["train.steps=1"]))
    first = (out / "metrics.jsonl").read_text()
    train(load_recipe(path, ["train.steps=1", "checkpoint.resume=never"]))
    [attempt] = (out / "attempts").iterdir()
    assert (attempt / "metrics.jsonl").read_text() == first and (attempt / "checkpoints").is_dir()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1  # a fresh run: step 1 again


def test_gradient_checkpointing_and_bf16_run(tmp_path, tiny_model_dir, sums_file, reward_module):
    path = write_recipe(tmp_path, tiny_model_dir, sums_file, "toy_rewards:vowels")
    out = train(load_recipe(path, ["train.steps=1", "model.gradient_checkpointing=true", "model.dtype=bfloat16",
                                   "sampler.max_logprob_gap=2.0"]))
    metrics = read_jsonl(out / "metrics.jsonl")
    assert metrics[0]["grad_norm"] > 0
    # bf16 is the compute dtype; the checkpoint holds the fp32 master weights the optimizer stepped
    saved = load_file(str(out / "checkpoints" / "step-000001" / "model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.float32}
    assert json.loads((out / "environment.json").read_text())["compute_dtype"] == "bfloat16"


def test_lr_schedules():
    from grpo.schedule import lr_factor

    def f(done, kind="cosine"):
        return lr_factor(done, 10, 2, kind)

    assert [f(0), f(1)] == [0.5, 1.0]  # linear warm-up
    assert f(2) == pytest.approx(1.0) and f(6) == pytest.approx(0.5) and f(10) == pytest.approx(0.0)
    assert f(6, "linear") == pytest.approx(0.5)
    assert f(9, "constant") == 1.0
    # SFT's shape: the warm-up ramp multiplies a decay that runs over all steps
    assert lr_factor(0, 10, 2, "cosine", decay_from_start=True) == pytest.approx(0.5)
    assert lr_factor(5, 10, 2, "cosine", decay_from_start=True) == pytest.approx(0.5)


def test_accuracy_comes_from_a_plugin_that_declares_correctness(tmp_path, tiny_model_dir, sums_file, monkeypatch):
    """`accuracy` is logged for any reward whose function says 1.0 means right, not only for built-in names."""
    plugin = tmp_path / "judge_plugin.py"
    plugin.write_text("def judge(prompts, completions, **kw):\n    return [1.0 if c[:1].isdigit() else 0.0 "
                      "for c in completions]\njudge.measures_correctness = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = train(load_recipe(None, [f"model.path={tiny_model_dir}", f"data.path={sums_file}",
                                   "rewards=[{name: 'judge_plugin:judge'}]", "train.steps=1",
                                   "train.prompts_per_step=2", "sampler.group_size=2", "sampler.max_new_tokens=4",
                                   "train.micro_batch_size=4", f"output_dir={tmp_path / 'run'}",
                                   "logging.progress_bar=false", "sampler.max_logprob_gap=5"]))
    row = read_jsonl(out / "metrics.jsonl")[0]
    assert "accuracy" in row and row["accuracy"] == row["reward/judge_plugin:judge/mean"]
    env = json.loads((out / "environment.json").read_text())
    assert env["world_size"] == 1 and env["strategy"] == "none" and env["torch"] == torch.__version__
    import importlib.util

    # logging.tensorboard defaults to auto: on exactly when the package is installed
    assert (out / "tensorboard").exists() == (importlib.util.find_spec("tensorboard") is not None)
