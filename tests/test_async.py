"""Generation ahead of training (train.max_staleness) and the sampler in its own process (sampler.backend=hf_worker):
the worker samples exactly what the in-process sampler would, its replies name the version that sampled them, a dead
or hung worker stops the run with a message; steps take their episodes by schedule, a reply older than k versions
never reaches the loss, and a resumed run requests the in-flight steps again from the checkpoint's data position."""

import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import ROOT, grpo, recipe_config, write_recipe
from gate import HOLD_SOURCE, REWARD_TIMEOUT_S, Gate, wait_for_text
from grpo.rules import recipe_rules
from grpo.sampling.base import Completion, Group, Reply, SamplingSettings
from grpo.sampling.hf import HFSampler
from grpo.sampling.worker import SamplerWorkerGone, WorkerSampler


def load(path):
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def tokens_of(groups):
    return [[c.token_ids for c in g.completions] for g in groups]


# ------------------------------------------------------------------------------------------------ the worker

def test_worker_samples_what_the_policy_would_and_follows_each_push(tiny_model_dir):
    model, tok = load(tiny_model_dir)
    worker = WorkerSampler(model, tok, 64, timeout_s=120, first_version=5)
    try:
        worker.sync_weights(model)  # version 5: the setup push of a run resumed at step 5
        prompts, settings = [tok("1+1=").input_ids, tok("2+3=").input_ids], SamplingSettings(n=3, max_new_tokens=8,
                                                                                               seed=11)
        worker.submit("a", prompts, settings)
        reply = worker.take("a")
        here = HFSampler(model, tok).generate(prompts, settings)
        assert reply.version == 5 and tokens_of(reply.groups) == tokens_of(here)
        gap = max(abs(x - y) for g, h in zip(reply.groups, here) for c, d in zip(g.completions, h.completions)
                  for x, y in zip(c.logprobs, d.logprobs))
        assert gap < 1e-5  # across the two processes: the same weights, the same log-probs

        with torch.no_grad():  # a training step's worth of change, pushed as version 6
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.5)
        worker.sync_weights(model)
        worker.submit("b", prompts, settings)
        moved = worker.take("b")
        assert moved.version == 6
        assert tokens_of(moved.groups) == tokens_of(HFSampler(model, tok).generate(prompts, settings))
        assert tokens_of(moved.groups) != tokens_of(reply.groups)
        assert worker.bytes_per_push == sum(t.numel() * t.element_size() for t in model.state_dict().values())
    finally:
        worker.close()
    assert not worker._process.is_alive()


def test_a_killed_worker_is_an_error_naming_it_not_a_hang(tiny_model_dir):
    model, tok = load(tiny_model_dir)
    worker = WorkerSampler(model, tok, 64, timeout_s=600)
    try:
        worker.sync_weights(model)
        os.kill(worker.pid, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(SamplerWorkerGone, match=rf"generation worker \(pid {worker.pid}.*died"):
            worker.generate([tok("1+1=").input_ids], SamplingSettings(n=2, max_new_tokens=4))
        assert time.monotonic() - started < 60  # noticed by polling, not by the 600 s deadline
    finally:
        worker.close()


def test_a_hung_worker_times_out_with_the_setting_named(tiny_model_dir):
    model, tok = load(tiny_model_dir)
    worker = WorkerSampler(model, tok, 64, timeout_s=600)
    try:
        worker.sync_weights(model)
        worker.generate([tok("1+1=").input_ids], SamplingSettings(n=2, max_new_tokens=4))  # alive and serving
        worker.timeout_s = 3  # only now: on a loaded machine the healthy call above may take longer than that
        os.kill(worker.pid, signal.SIGSTOP)  # alive, but answers nothing
        with pytest.raises(SamplerWorkerGone, match=r"said nothing for sampler.worker.timeout_s = 3 s .*\(killed\)"):
            worker.generate([tok("1+1=").input_ids], SamplingSettings(n=2, max_new_tokens=4))
    finally:
        worker.close()


# ------------------------------------------------------------------------------------------------ the schedule

@dataclass
class StandInSampler:
    """Serves requests at once, in order, from whatever version was pushed last; `hold_back` names steps whose
    first reply claims an older version (a sampler that fell behind), so the source must drop and resend them."""

    version: int = 0
    hold_back: dict = field(default_factory=dict)  # step -> the stale version its first reply claims
    sent: list = field(default_factory=list)  # (key, version at send time)
    replies: dict = field(default_factory=dict)
    bytes_per_push: int = 123

    def submit(self, key, prompt_ids, settings):
        self.sent.append((key, self.version))
        stale = self.hold_back.pop(key, None)
        groups = [Group(list(ids), [Completion([5, 6], [-0.5, -0.5], "ab", "stop") for _ in range(settings.n)])
                  for ids in prompt_ids]
        self.replies[key] = Reply(groups, self.version if stale is None else stale, 0.01, 0.0)

    def take(self, key):
        return self.replies.pop(key)

    def take_idle(self):
        return 0.0

    def take_transfer_s(self):
        return 0.0

    def sync_weights(self, model):
        self.version += 1


def schedule_run(tmp_path, sums_file, k, steps=6):
    """The pieces of a Run that the episode source reads, around a stand-in sampler (version 0 pushed at setup)."""
    from grpo.data import PromptRenderer, PromptStream, load_rows
    from grpo.objectives.advantages import ADVANTAGES
    from grpo.train.inflight import episode_source
    from rewards.scoring import build_rewards

    cfg = recipe_config({"data.path": str(sums_file), "data.prompt_template": "{question}",
                         "sampler.group_size": 2, "sampler.max_new_tokens": 4, "sampler.backend": "hf_worker",
                         "rewards": []}, steps=steps, prompts_per_step=2, max_staleness=k)

    class Tok:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(ch) % 50 for ch in text]}

    @dataclass
    class Run:
        cfg: object
        stream: object
        renderer: object
        sampler: object
        rewards: list
        advantage_fn: object
        policy: object = None
        start_step: int = 0
        world: object = None

    from grpo.parallel import World

    rows = load_rows(str(sums_file), "train", None, None)
    return Run(cfg, PromptStream(rows, 0, False), PromptRenderer(Tok(), cfg.data), StandInSampler(),
               build_rewards([]), ADVANTAGES["grpo"], world=World.single()), episode_source(k)


def test_steps_take_their_own_requests_sampled_at_most_k_versions_back(tmp_path, sums_file):
    run, source = schedule_run(tmp_path, sums_file, k=2)
    source.start(run)
    assert [key for key, _ in run.sampler.sent] == [1, 2, 3]  # k + 1 steps in flight, all from the setup weights
    seen = []
    for step in range(1, 7):
        exp = source.experience(run, step)
        seen.append((step, exp.figures["async/staleness_max"], [e.group_id for e in exp.episodes][:1]))
        assert {e.policy_version for e in exp.episodes} == {run.sampler.replies.get(step, None) or
                                                           exp.episodes[0].policy_version}
        assert all((step - 1) - e.policy_version <= 2 for e in exp.episodes)
        source.after_update(run, step)  # push version `step`, then request step + k + 1
    assert [key for key, _ in run.sampler.sent] == [1, 2, 3, 4, 5, 6]  # nothing requested past train.steps
    # step t + k + 1 was sent right after the push of version t: staleness k from step k + 1 on
    assert [(key, v) for key, v in run.sampler.sent] == [(1, 0), (2, 0), (3, 0), (4, 1), (5, 2), (6, 3)]
    assert [s for _, s, _ in seen] == [0, 1, 2, 2, 2, 2]


def test_a_reply_older_than_k_versions_never_reaches_the_loss(tmp_path, sums_file):
    run, source = schedule_run(tmp_path, sums_file, k=1)
    run.sampler.hold_back = {4: 0}  # step 4's first reply claims version 0: 3 versions back, k = 1
    source.start(run)
    versions = {}
    for step in range(1, 6):
        exp = source.experience(run, step)
        versions[step] = ({e.policy_version for e in exp.episodes}, exp.figures["async/dropped_stale"])
        source.after_update(run, step)
    assert versions[4] == ({3}, 4)  # the stale reply's 2 groups x 2 episodes dropped, the resend sampled by v3
    assert all(dropped == 0 for step, (_, dropped) in versions.items() if step != 4)
    assert ("again", 4, 1) in [key for key, _ in run.sampler.sent]


def test_rewards_are_scored_off_the_loop_and_a_blocked_one_never_holds_generation(tmp_path, sums_file, monkeypatch):
    import grpo.train.inflight as inflight

    run, source = schedule_run(tmp_path, sums_file, k=1)
    release, threads, real = threading.Event(), [], inflight.scored_groups

    def scoring(groups, *args, **kwargs):
        threads.append(threading.current_thread().name)
        if len(threads) == 2:
            release.wait(60)  # step 2's reward blocks
        return real(groups, *args, **kwargs)

    monkeypatch.setattr(inflight, "scored_groups", scoring)
    source.start(run)  # steps 1 and 2 requested, and scored as their replies come
    source.experience(run, 1)
    end = time.monotonic() + 60
    while len(threads) < 2 and time.monotonic() < end:  # step 2's scoring has begun, and blocks
        time.sleep(0.01)
    source.after_update(run, 1)  # the push and step 3's request go out while step 2's reward is still blocked
    assert [key for key, _ in run.sampler.sent] == [1, 2, 3] and not release.is_set()
    release.set()
    exp = source.experience(run, 2)
    assert len(exp.episodes) == 4 and set(threads) == {"grpo-scorer"}  # never on the loop's thread
    assert exp.figures["time/wait_score_s"] == 0.0


def test_a_checkpoint_saves_the_data_position_of_the_next_step_not_the_stream_s(tmp_path, sums_file):
    run, source = schedule_run(tmp_path, sums_file, k=2)
    source.start(run)
    source.experience(run, 1)
    source.after_update(run, 1)  # steps 2, 3, 4 in flight: the stream is 3 steps past step 1
    assert run.stream.state_dict()["position"] == 8
    assert source.data_state(run)["position"] == 2  # where step 2's prompts start: a resume requests them again


# ------------------------------------------------------------------------------------------------ the rules

@pytest.mark.parametrize("changes, key", [
    ({"train.max_staleness": 1}, "set sampler.backend=vllm_server (a `grpo serve` server) or hf_worker"),
    ({"train.max_staleness": -1, "sampler.backend": "hf_worker"}, "train.max_staleness: must be >= 0"),
    ({"train.max_staleness": 1, "sampler.backend": "hf_worker", "train.dynamic_sampling": True},
     "train.dynamic_sampling"),
    ({"train.max_staleness": 1, "sampler.backend": "hf_worker", "train.old_logprobs": "trainer"},
     "train.old_logprobs"),
    ({"train.max_staleness": 1, "sampler.backend": "hf_worker", "train.sampler_correction": "tis"},
     "train.sampler_correction"),
    ({"sampler.backend": "hf_worker", "model.dtype": "bfloat16"}, "sampler.backend: hf_worker"),
    ({"sampler.backend": "hf_worker", "sampler.worker.timeout_s": 0}, "sampler.worker.timeout_s"),
])
def test_rules_name_what_generating_ahead_cannot_go_with(changes, key):
    cfg = recipe_config({"data.path": "x.jsonl", **changes})
    assert any(key in problem for problem in recipe_rules(cfg)), recipe_rules(cfg)


def test_the_default_recipe_is_synchronous_and_allowed():
    cfg = recipe_config({"data.path": "x.jsonl", "sampler.backend": "hf_worker", "train.max_staleness": 2})
    assert not [p for p in recipe_rules(cfg) if "staleness" in p or "worker" in p]
    assert recipe_config().train.max_staleness == 0


# ------------------------------------------------------------------------------------------------ whole runs

def metrics_of(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def prompts_by_step(run_dir):
    rows = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    out = {}
    for row in rows:
        out.setdefault(row["step"], []).append(row["prompt"])
    return out


def test_train_ahead_logs_staleness_and_resumes_at_the_checkpoint_s_data_position(tmp_path, tiny_model_dir,
                                                                                    sums_file):
    extra = "sampler: {backend: hf_worker, group_size: 4, max_new_tokens: 6}\n"
    logging = "{samples_every: 1, num_samples: 8, progress_bar: false}"
    whole = write_recipe(tmp_path, tiny_model_dir, sums_file, "math", out="whole", file="whole.yaml", steps=4,
                         checkpoint="{every: 2, keep_last: 2}", logging=logging, extra=extra)
    grpo("train", whole, "train.max_staleness=1", check=True, timeout=600)
    m = metrics_of(tmp_path / "whole")
    assert [r["async/staleness_max"] for r in m] == [0, 1, 1, 1]
    assert m[0]["sampler/logprob_gap"] < 1e-4  # the first step is fresh: the gap check reads the worker's weights
    assert all(r["async/dropped_stale"] == 0 and r["sync/bytes"] > 0 for r in m)
    assert all(r["time/wait_generate_s"] <= r["time/step_s"] for r in m)

    # Stopped after step 2 (its checkpoint), then resumed: steps 3 and 4 get the prompts the whole run gave them,
    # though step 3 was in flight (sampled ahead) when the first run stopped.
    part = write_recipe(tmp_path, tiny_model_dir, sums_file, "math", out="part", file="part.yaml", steps=2,
                        checkpoint="{every: 2, keep_last: 2}", logging=logging, extra=extra)
    grpo("train", part, "train.max_staleness=1", check=True, timeout=600)
    resumed = grpo("train", part, "train.max_staleness=1", "train.steps=4", check=True, timeout=600)
    assert "resuming from" in resumed.stdout
    whole_prompts, part_prompts = prompts_by_step(tmp_path / "whole"), prompts_by_step(tmp_path / "part")
    assert [sorted(part_prompts[s]) for s in (1, 2, 3, 4)] == [sorted(whole_prompts[s]) for s in (1, 2, 3, 4)]
    assert [r["async/staleness_max"] for r in metrics_of(tmp_path / "part")] == [0, 1, 0, 1]  # resent fresh


def test_the_worker_at_k0_trains_exactly_as_the_policy_sampling_itself(tmp_path, tiny_model_dir, sums_file):
    """Same seed, same draws, same weights pushed each step: the synchronous loop over the worker is the in-process
    loop, figure for figure (the sampler/trainer gap measured across the two processes included)."""
    runs = {}
    for backend in ("hf", "hf_worker"):
        recipe = write_recipe(tmp_path, tiny_model_dir, sums_file, "math", out=backend, file=f"{backend}.yaml",
                              steps=3, checkpoint="{every: 0, keep_last: 1}",
                              extra=f"sampler: {{backend: {backend}, group_size: 4, max_new_tokens: 6}}\n")
        grpo("train", recipe, check=True, timeout=600)
        runs[backend] = metrics_of(tmp_path / backend)
    for key in ("reward/mean", "completion/length_mean", "loss", "entropy", "grad_norm"):
        assert [r[key] for r in runs["hf"]] == pytest.approx([r[key] for r in runs["hf_worker"]], rel=1e-5), key
    assert all(r["sampler/logprob_gap"] < 1e-5 for r in runs["hf_worker"])
    assert not any(k.startswith("async/") for r in runs["hf_worker"] for k in r)  # k = 0: nothing generated ahead


def test_a_worker_killed_mid_run_stops_the_trainer_with_the_checkpoint_to_resume(tmp_path, tiny_model_dir,
                                                                                  sums_file, background):
    (tmp_path / "held_reward.py").write_text(HOLD_SOURCE + "\n\ndef reward(prompts, completions, **kw):\n    gate_hold()\n"
                                             "    return [0.0 for _ in completions]\n")
    recipe = write_recipe(tmp_path, tiny_model_dir, sums_file, "held_reward:reward", steps=6,
                          reward_timeout_s=REWARD_TIMEOUT_S, checkpoint="{every: 2, keep_last: 2}",
                          extra="sampler: {backend: hf_worker, group_size: 4, max_new_tokens: 6}\n")
    gate = Gate(tmp_path / "gate", hold_from=3)  # held while scoring step 3: steps 1-2 logged, checkpoint 2 written
    trainer = background.start([sys.executable, "-m", "grpo", "train", str(recipe), "train.max_staleness=1"],
                               cwd=ROOT, env={**os.environ, **gate.env(), "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"})
    gate.wait_held(trainer)
    children = open(f"/proc/{trainer.pid}/task/{trainer.pid}/children").read().split()
    workers = [int(pid) for pid in children
               if b"resource_tracker" not in open(f"/proc/{pid}/cmdline", "rb").read()]
    assert workers, "the trainer has no generation worker"
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    gate.release()
    _, err = background.finish(trainer, timeout=300)
    assert trainer.returncode == 2, err[-3000:]
    assert "generation worker" in err and "died" in err
    assert "The same command resumes from" in err and "step-000002" in err


def test_ctrl_c_reaches_the_worker_too_and_the_trainer_still_saves(tmp_path, tiny_model_dir, sums_file, background):
    (tmp_path / "held_reward.py").write_text(HOLD_SOURCE + "\n\ndef reward(prompts, completions, **kw):\n    gate_hold()\n"
                                             "    return [float(len(c) % 2) for c in completions]\n")
    recipe = write_recipe(tmp_path, tiny_model_dir, sums_file, "held_reward:reward", steps=6,
                          reward_timeout_s=REWARD_TIMEOUT_S, checkpoint="{every: 0, keep_last: 2}",
                          extra="sampler: {backend: hf_worker, group_size: 4, max_new_tokens: 6}\n")
    gate = Gate(tmp_path / "gate", hold_from=2)
    trainer = background.start([sys.executable, "-m", "grpo", "train", str(recipe), "train.max_staleness=1"],
                               cwd=ROOT, env={**os.environ, **gate.env(), "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"})
    gate.wait_held(trainer)  # step 2's reward, on the scorer thread
    metrics, end = tmp_path / "run" / "metrics.jsonl", time.monotonic() + 300
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 1):  # step 1 done: the loop waits on step 2
        assert trainer.poll() is None and time.monotonic() < end
        time.sleep(0.1)
    os.killpg(trainer.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: every process of the group gets it
    wait_for_text(trainer.err_path, "SIGINT received: finishing this step", trainer)
    gate.release()
    _, err = background.finish(trainer, timeout=300)
    assert trainer.returncode == 130, err[-3000:]  # step 2 finished (its weights pushed to the worker) and saved
    assert (tmp_path / "run" / "checkpoints" / "step-000002" / "trainer_state.pt").is_file()
    assert "generation worker" not in err


@pytest.mark.e2e
def test_tiny_recipe_learns_with_one_step_of_staleness(tmp_path):
    """The bar: recipes/tiny.yaml with the sampler in its own process, generating one step ahead, learns; its
    episodes are one version old from step 2 on, never more. (make test-e2e: about 2 min on 2 quiet cores.)"""
    out = tmp_path / "run"
    grpo("train", "recipes/tiny.yaml", f"output_dir={out}", "sampler.backend=hf_worker", "train.max_staleness=1",
         "logging.progress_bar=false", check=True, timeout=3600)
    m = metrics_of(out)
    assert [r["step"] for r in m] == list(range(1, 101))
    staleness = [r["async/staleness_mean"] for r in m]
    assert sum(staleness) / len(staleness) > 0.9 and max(r["async/staleness_max"] for r in m) == 1
    assert sum(r["async/dropped_stale"] for r in m) == 0

    def mean(key, part):
        return sum(r[key] for r in part) / len(part)

    first, last = m[:20], m[-20:]
    assert mean("reward/mean", last) > mean("reward/mean", first) + 0.2, (mean("reward/mean", first),
                                                                         mean("reward/mean", last))
