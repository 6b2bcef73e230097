"""grpo rm (a reward model on preference pairs) and the reward_model reward: the Bradley-Terry math on hand-made
scores, the recipe's and the data's errors, a tiny causal LM trained on the demo's arithmetic preferences until
held-out pairwise accuracy >= 0.8 (issue 30's bar), its output loaded as AutoModelForSequenceClassification and
used as a reward, and an exact resume."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from conftest import ROOT, build_tiny_model
from grpo.errors import ConfigError, UserError
from grpo.rm.loss import bradley_terry_loss, pairwise_accuracy
from rewards.reward_model import postprocess, read_settings


# ------------------------------------------------------------------------------------------------ the math

def test_bradley_terry_loss_is_the_mean_negative_log_likelihood_of_the_preference():
    chosen = torch.tensor([2.0, 0.0, -1.0])
    rejected = torch.tensor([0.0, 0.0, 1.0])
    # margins 2, 0, -2: -log sigmoid(m) = log(1 + e^-m)
    expected = (math.log1p(math.exp(-2)) + math.log(2) + math.log1p(math.exp(2))) / 3
    assert float(bradley_terry_loss(chosen, rejected)) == pytest.approx(expected, rel=1e-6)


def test_bradley_terry_gradient_pushes_chosen_up_and_rejected_down_by_the_preference_error():
    chosen = torch.tensor([2.0, 0.0], requires_grad=True)
    rejected = torch.tensor([0.0, 0.0], requires_grad=True)
    bradley_terry_loss(chosen, rejected).backward()
    # d/dc of -log sigmoid(c - r) / N = -(1 - sigmoid(c - r)) / N, and the opposite for r
    sig = torch.sigmoid(torch.tensor([2.0, 0.0]))
    assert torch.allclose(chosen.grad, -(1 - sig) / 2)
    assert torch.allclose(rejected.grad, (1 - sig) / 2)
    assert chosen.grad[1] == pytest.approx(-0.25)  # an undecided pair gets the largest push


def test_micro_batches_sum_to_the_batch_loss():
    torch.manual_seed(0)
    chosen, rejected = torch.randn(6), torch.randn(6)
    parts = sum(bradley_terry_loss(chosen[i:i + 2], rejected[i:i + 2], total_pairs=6) for i in range(0, 6, 2))
    assert float(parts) == pytest.approx(float(bradley_terry_loss(chosen, rejected)), rel=1e-6)


def test_a_badly_wrong_pair_gives_a_large_finite_loss_not_inf():
    loss = bradley_terry_loss(torch.tensor([-500.0]), torch.tensor([500.0]))
    assert float(loss) == pytest.approx(1000.0)


def test_pairwise_accuracy_counts_a_tie_as_wrong():
    assert pairwise_accuracy(torch.tensor([1.0, 0.0, 2.0, 0.5]), torch.tensor([0.0, 0.0, 3.0, 0.0])) == 0.5


def test_reward_postprocess_normalises_over_the_batch_then_clips():
    scores = torch.tensor([1.0, 2.0, 3.0, 10.0])
    out = postprocess(scores, normalize=True, clip=1.0)
    z = (scores - scores.mean()) / (scores.std(unbiased=False) + 1e-6)
    assert torch.allclose(out, z.clamp(-1, 1))
    assert out.max() == 1.0 and out[0] > -1.0
    assert postprocess(torch.tensor([4.0]), normalize=True, clip=None).tolist() == [0.0]  # no spread in one
    assert postprocess(scores, normalize=False, clip=None).tolist() == scores.tolist()


def test_reward_model_settings_name_unknown_and_missing_keys():
    with pytest.raises(UserError, match=r"args\.batchsize: unknown key \(did you mean 'batch_size'\?\)"):
        read_settings({"path": "x", "batchsize": 4})
    with pytest.raises(UserError, match=r"args\.path: required"):
        read_settings({})
    with pytest.raises(UserError, match=r"args\.clip: must be a number > 0"):
        read_settings({"path": "x", "clip": -1})


# ------------------------------------------------------------------------------------------------ recipe and data

@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("rm-tiny-lm"), seed=0, layers=2, hidden=64)


@pytest.fixture(scope="module")
def arith_pairs():
    """The demo's arithmetic as preferences, as shipped (data/arith/prefs-*.jsonl, grpo.rm.arith_pairs): the right
    worked answer chosen, a wrong one rejected; 2000 training pairs, 200 held out."""
    return ROOT / "data" / "arith" / "prefs-train.jsonl", ROOT / "data" / "arith" / "prefs-test.jsonl"


def test_the_shipped_pairs_are_what_the_generator_writes(tmp_path, arith_pairs):
    from grpo.rm.arith_pairs import WRONG_KINDS, write_pair_files

    made = write_pair_files(tmp_path)
    assert [p.read_bytes() for p in made] == [p.read_bytes() for p in arith_pairs]
    rows = [json.loads(line) for line in arith_pairs[1].read_text().splitlines()]
    assert len(rows) == 200 and len(WRONG_KINDS) == 4
    for row in rows:  # every rejected completion ends in a wrong answer, every chosen one in the right answer
        assert row["chosen"].endswith(f"The answer is {row['answer']}.")
        assert not row["rejected"].endswith(f"The answer is {row['answer']}.")


def test_miscalculated_working_carries_the_wrong_result_to_the_answer():
    import random

    from grpo.rm.arith_pairs import miscalculated

    seen = {miscalculated(" 7 + 1 = 8. 8 - 5 = 3. The answer is 3.", random.Random(seed)) for seed in range(40)}
    assert " 7 + 1 = 6. 6 - 5 = 1. The answer is 1." in seen  # the first step wrong, the second right from it
    assert " 7 + 1 = 8. 8 - 5 = 0. The answer is 0." in seen  # the last step wrong
    assert all(not text.endswith("The answer is 3.") for text in seen)


def rm_args(tmp_path, model, pairs, *extra):
    train, test = pairs
    return [f"model.path={model}", f"data.path={train}", f"data.eval_path={test}", f"output_dir={tmp_path / 'rm'}",
            "device=cpu", "seed=0", *extra]


def test_recipe_errors_are_reported_together_naming_each_key(tmp_path):
    from grpo.rm.config import load_rm_recipe

    recipe = tmp_path / "rm.yaml"
    recipe.write_text("data: {path: prefs.jsonl, chosen_colum: good}\ntrain: {stepz: 3, lr: -1}\n")
    with pytest.raises(ConfigError) as err:
        load_rm_recipe(recipe, ["train.batch_size=0"])
    text = str(err.value)
    assert "data.chosen_colum: unknown key (did you mean 'data.chosen_column'?)" in text
    assert "train.stepz: unknown key (did you mean 'train.steps'?)" in text
    assert "train.lr: must be > 0, got -1.0" in text and "train.batch_size: must be > 0, got 0" in text
    assert str(recipe) in text


def test_a_missing_column_names_the_key_and_the_files_columns(tmp_path, tiny_lm):
    from grpo.rm.command import run_rm_command

    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps({"question": "1+1=", "good": "2", "bad": "3"}) + "\n" for _ in range(4)))
    with pytest.raises(UserError) as err:
        run_rm_command(None, [f"model.path={tiny_lm}", f"data.path={data}", "data.chosen_column=good",
                              f"output_dir={tmp_path / 'rm'}"])
    text = str(err.value)
    assert "data.prompt_column='prompt'" in text and "data.rejected_column='rejected'" in text
    assert "data.chosen_column" not in text  # that one was found
    assert "its columns are question, good, bad" in text and str(data) in text
    assert not (tmp_path / "rm").exists()  # stopped before anything was written


def test_a_second_run_on_a_held_output_dir_is_refused_naming_the_holder(tmp_path, tiny_lm, arith_pairs):
    from grpo.lock import RunLock
    from grpo.rm.command import run_rm_command

    held = RunLock(tmp_path / "rm", "grpo train").acquire()  # what a running trainer holds
    try:
        with pytest.raises(UserError, match=r"rm is in use by another grpo train \(pid \d+ on .*One run per output_dir"):
            run_rm_command(None, rm_args(tmp_path, tiny_lm, arith_pairs))
    finally:
        held.release()
    assert not (tmp_path / "rm" / "checkpoints").exists()


def test_bad_rows_are_skipped_with_a_warning_or_stop_the_run(tmp_path, capsys):
    from grpo.rm.config import RmDataConfig
    from grpo.rm.data import checked_rows

    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a", "rejected": "a"},
            {"prompt": "p", "chosen": ["a"], "rejected": "b"}]
    assert checked_rows(rows, RmDataConfig(), "f.jsonl") == rows[:1]
    warning = capsys.readouterr().err
    assert "2 of 3 rows of f.jsonl cannot train" in warning
    assert "row 2: chosen and rejected are the same text" in warning and "row 3: column 'chosen' is a list" in warning
    with pytest.raises(UserError, match="data.on_bad_row=skip"):
        checked_rows(rows, RmDataConfig(on_bad_row="error"), "f.jsonl")


# ------------------------------------------------------------------------------------------------ training

@pytest.fixture(scope="module")
def trained(tmp_path_factory, arith_pairs):
    """One grpo rm run, shared by the tests that read its output: recipes/rm/tiny-arith.yaml as shipped (the demo
    policy as the base, as RLHF starts the reward model from the SFT model), 400 steps of 32 pairs. Measured
    held-out accuracy 0.75 at step 200, 0.835 at 300, 0.865 at 400; the bare guesses are told apart within 25
    steps, the wrong working and the other problem's working only later."""
    from grpo.rm.command import run_rm_command

    folder = tmp_path_factory.mktemp("rm-run")
    return run_rm_command(ROOT / "recipes" / "rm" / "tiny-arith.yaml",
                          [f"output_dir={folder / 'rm'}", "device=cpu", "checkpoint.every=0",
                           f"data.path={arith_pairs[0]}", f"data.eval_path={arith_pairs[1]}"])


@pytest.mark.slow
def test_grpo_rm_reaches_the_bar_on_held_out_arithmetic_pairs(trained):
    lines = [json.loads(line) for line in (trained.parent / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 401))
    evals = [r for r in lines if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [100, 200, 300, 400] and evals[-1]["eval/pairs"] == 200
    assert evals[-1]["eval/accuracy"] >= 0.8, evals
    assert evals[-1]["eval/loss"] < math.log(2)  # below the loss of a model that cannot tell (margin 0)


@pytest.mark.slow
def test_the_output_loads_as_a_sequence_classifier_and_prefers_the_right_answers(trained, arith_pairs):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rewards.reward_model import encode_pair

    model = AutoModelForSequenceClassification.from_pretrained(trained).eval()
    tokenizer = AutoTokenizer.from_pretrained(trained)
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.pad_token_id
    held_out = [json.loads(line) for line in arith_pairs[1].read_text().splitlines()]
    wins = 0
    with torch.no_grad():
        for row in held_out:
            score = [float(model(torch.tensor([encode_pair(tokenizer, row["prompt"], row[side])])).logits[0, 0])
                     for side in ("chosen", "rejected")]
            wins += score[0] > score[1]
    assert wins / len(held_out) >= 0.8


@pytest.mark.slow
def test_the_reward_model_reward_scores_batched_as_the_model_does_one_by_one(trained, arith_pairs):
    from rewards.reward_model import make_reward_model

    assert make_reward_model.reward_factory is True
    reward = make_reward_model({"path": str(trained), "batch_size": 3}, torch.device("cpu"), torch.float32)
    rows = [json.loads(line) for line in arith_pairs[1].read_text().splitlines()]
    n = len(rows)
    prompts = [r["prompt"] for r in rows] * 2
    completions = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    batched = reward(prompts, completions, answer=[r["answer"] for r in rows] * 2)
    some = [*range(5), *range(n, n + 5)]  # chosen and rejected texts, of different lengths
    alone = [reward([prompts[i]], [completions[i]])[0] for i in some]
    assert [batched[i] for i in some] == pytest.approx(alone, abs=1e-4)  # padding and reordering change nothing
    assert sum(batched[i] > batched[i + n] for i in range(n)) / n >= 0.8
    normalised = make_reward_model({"path": str(trained), "normalize": True, "clip": 1.5}, "cpu", torch.float32)
    values = torch.tensor(normalised(prompts, completions))
    assert values.abs().max() <= 1.5 and abs(float(values.mean())) < 0.3


@pytest.mark.slow
def test_rl_on_the_reward_model_alone_raises_its_score_and_the_checked_accuracy(tmp_path, trained):
    """The RLHF pipeline's last stage (issue 30's bar): recipes/tiny-reward-model.yaml as shipped, with the reward
    model trained above as the only reward; the math checker runs with weight 0, logged and never rewarded. Over
    the run both the reward model's score and the arithmetic accuracy rise (first vs last 20 steps)."""
    from conftest import ROOT, grpo

    out = tmp_path / "run"
    result = grpo("train", ROOT / "recipes" / "tiny-reward-model.yaml", f"output_dir={out}",
                  "logging.progress_bar=false", "logging.samples_every=0",
                  f"rewards=[{{name: reward_model, args: {{path: {trained}, batch_size: 64}}}}, "
                  f"{{name: math, weight: 0.0}}]", timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 60 and all(m["reward/reward_model/errors"] == 0 for m in metrics)
    assert all(m["reward/mean"] == pytest.approx(m["reward/reward_model/mean"]) for m in metrics)  # math weighs 0

    def mean(key, part):
        return sum(m[key] for m in part) / len(part)

    first, last = metrics[:20], metrics[-20:]
    score = mean("reward/reward_model/mean", first), mean("reward/reward_model/mean", last)
    accuracy = mean("reward/math/mean", first), mean("reward/math/mean", last)
    assert score[1] > score[0] + 0.5, score
    # a step's accuracy is the mean of 64 samples: over 20 steps noise moves it about +-0.015
    assert accuracy[1] > accuracy[0] + 0.05, accuracy


@pytest.mark.slow
def test_resume_after_a_stop_gives_the_weights_of_an_uninterrupted_run(tmp_path, tiny_lm, arith_pairs):
    from safetensors.torch import load_file

    from grpo.rm.command import run_rm_command

    settings = ["train.steps=4", "train.batch_size=4", "train.micro_batch_size=2", "train.lr=1.0e-3",
                "train.eval_every=4", "checkpoint.every=2", "checkpoint.keep_last=2", "data.limit=40"]
    whole = run_rm_command(None, rm_args(tmp_path / "a", tiny_lm, arith_pairs, *settings))
    # The stopped run: all it left is its step-2 checkpoint (the run died before step 3).
    stopped = tmp_path / "b" / "rm"
    shutil.copytree(whole.parent / "checkpoints" / "step-000002", stopped / "checkpoints" / "step-000002")
    resumed = run_rm_command(None, rm_args(tmp_path / "b", tiny_lm, arith_pairs, *settings))
    a, b = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (stopped / "metrics.jsonl").read_text().splitlines()]
    assert steps == [3, 4]  # the resumed run starts after its checkpoint
    first = load_file(stopped / "checkpoints" / "step-000002" / "model.safetensors")
    assert not all(torch.equal(first[k], b[k]) for k in a)  # and it did train past it


@pytest.mark.slow
def test_resume_under_a_changed_recipe_is_refused_naming_the_change(tmp_path, tiny_lm, arith_pairs):
    from grpo.rm.command import run_rm_command

    settings = ["train.steps=2", "train.batch_size=2", "train.eval_every=2", "checkpoint.every=1", "data.limit=20"]
    run_rm_command(None, rm_args(tmp_path, tiny_lm, arith_pairs, *settings))
    with pytest.raises(UserError, match=r"train\.lr \(1e-05 -> 0\.01\).*checkpoint\.allow_changes=true"):
        run_rm_command(None, rm_args(tmp_path, tiny_lm, arith_pairs, *settings, "train.steps=3", "train.lr=0.01"))
