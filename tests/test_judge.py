"""Issue 31: the `judge` reward (an LLM judge against a written constitution) and the reward contract's sub-scores.

The contract (rewards/output.py): a reward may return named parts, counts and its own failures; they reach the
scorer, a plugin's worker pipe, the metrics and the guard. The judge: its constitution and settings checked with
the file and key named; its prompt rendered and its reply read with bounded cost; its HTTP client against a scripted
OpenAI-compatible server (tests/judge_server.py: retries, statuses, keys, concurrency, garbage, a dead endpoint);
a local transformers judge on the tiny demo model (plumbing, not judgement); tiny training runs that log
per-principle means, score a garbage judge 0 with the failures counted, and stop on a dead judge by the usual
guard. The real `vllm serve` is tests/test_judge_vllm.py (make vllm-test)."""

from __future__ import annotations

import json
import re
import socket
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import ROOT, grpo
from judge_server import JudgeServer, chat, completion, judge_run_recipe
from rewards.errors import UserError
from rewards.judge import make_judge
from rewards.judge.constitution import read_constitution
from rewards.judge.prompt import REPLY_CHARS, clipped, read_score
from rewards.judge.settings import settings_problems
from rewards.output import checked, concatenated
from rewards.scoring import build_rewards, close_rewards, named, score


def constitution_file(folder: Path, text: str | None = None) -> Path:
    path = folder / "constitution.yaml"
    path.write_text(text if text is not None else textwrap.dedent("""
        name: test
        principles:
          - {name: helpful, instruction: 'Is it helpful?', scale: [1, 10], weight: 3}
          - {name: brief, instruction: 'Is it short?', scale: [0, 4], weight: 1}
    """))
    return path


def judge_args(folder: Path, server: JudgeServer | None = None, **extra) -> dict:
    args = {"constitution": str(constitution_file(folder)), "backend": "openai", "model": "judge-model",
            "base_url": server.base_url if server else "http://127.0.0.1:9/v1", "backoff_s": 0.0}
    return {**args, **extra}


def by_principle(helpful: str, brief: str):
    """A server reply that answers each principle's prompt with its own text."""
    def reply(body, headers):
        prompt = body["messages"][0]["content"] if "messages" in body else body["prompt"]
        return 200, chat(helpful if "Principle: helpful" in prompt else brief), {}
    return reply


# ------------------------------------------------------------------------------------------ the reward contract

def test_a_reward_can_report_parts_counts_and_failures_beside_its_values():
    def rich(prompts, completions, **kw):
        n = len(completions)
        return {"rewards": [0.5] * n, "parts": {"style": [1.0] * (n - 1) + [None]}, "counts": {"calls": 2 * n},
                "failed": 1, "failure": "principle 'style': no score"}

    reward = named("rich", rich)
    scores = score([reward], ["p"] * 3, ["a", "b", "c"], {})
    assert scores.total == [0.5, 0.5, 0.5]
    assert scores.parts == {"rich": {"style": [1.0, 1.0, None]}}
    assert scores.counts == {"rich": {"calls": 6.0}}
    assert scores.errors == {"rich": 1}  # counted like a raise, so the guard sees it
    assert reward.failures.count == 1 and "no score" in reward.failures.last


@pytest.mark.parametrize("bad, said", [
    ({"rewards": [1.0, 1.0], "extra": 1}, "unknown key 'extra'"),
    ({"parts": {}}, "without 'rewards'"),
    ({"rewards": [1.0, 1.0], "parts": {"x": [1.0]}}, "in part 'x'"),
    ({"rewards": [1.0, 1.0], "counts": {"mean": 3}}, "the trainer logs itself"),
    ({"rewards": [1.0, 1.0], "counts": {"calls": float("nan")}}, "non-finite count"),
    ({"rewards": [1.0, 1.0], "failed": 3}, "0 to 2"),
    ({"rewards": [1.0, 1.0], "parts": {"a b": [1, 1]}}, "is not"),
    ({"rewards": [1.0, 1.0], "counts": {"calls": "7"}}, "not a number"),
])
def test_a_malformed_mapping_is_refused_with_what_is_wrong(bad, said):
    with pytest.raises(ValueError) as err:
        checked(bad, 2)
    assert said in str(err.value) or (said == "is not" and "name" in str(err.value))


def test_a_malformed_mapping_scores_zero_and_counts_like_a_raise():
    reward = named("broken", lambda prompts, completions, **kw: {"rewards": [1.0] * len(completions), "oops": 1})
    scores = score([reward], ["p"] * 2, ["a", "b"], {})
    assert scores.total == [0.0, 0.0] and scores.errors == {"broken": 2}
    assert "unknown key 'oops'" in reward.failures.last


def test_one_at_a_time_retries_keep_each_part_beside_its_completion():
    def fussy(prompts, completions, **kw):
        if len(completions) > 1:
            raise RuntimeError("batch too big")
        if completions[0] == "bad":
            raise RuntimeError("bad one")
        return {"rewards": [float(len(completions[0]))], "parts": {"len": [float(len(completions[0]))]},
                "counts": {"calls": 1}}

    scores = score([named("fussy", fussy)], ["p"] * 3, ["aa", "bad", "aaaa"], {})
    assert scores.total == [2.0, 0.0, 4.0]
    assert scores.parts["fussy"]["len"] == [2.0, None, 4.0]  # the failed one has no part, not a shifted one
    assert scores.counts["fussy"]["calls"] == 2.0 and scores.errors["fussy"] == 1


def test_plain_round_trips_and_concatenation():
    rich = checked({"rewards": [1.0], "parts": {"a": [0.5]}, "counts": {"c": 1}}, 1)
    assert checked(rich.plain(), 1) == rich
    assert checked([1.0, None], 2).plain() == [1.0, None]  # the list form stays a list on the pipe
    merged = concatenated([rich, checked([2.0], 1)])
    assert merged.values == [1.0, 2.0] and merged.parts == {"a": [0.5, None]} and merged.counts == {"c": 1.0}


PLUGIN = '''
def judged(prompts, completions, **kwargs):
    n = len(completions)
    return {"rewards": [0.25] * n, "parts": {"tone": [0.5] * n}, "counts": {"calls": n}, "failed": 0}
'''


def test_a_plugins_parts_and_counts_cross_its_workers_pipe(tmp_path, monkeypatch):
    monkeypatch.delenv("GRPO_REWARDS_IN_PROCESS", raising=False)
    (tmp_path / "judged_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = SimpleNamespace(name="judged_plugin:judged", weight=1.0, args={}, timeout_s=60.0, max_abs=1e6)
    rewards = build_rewards([spec])
    try:
        scores = score(rewards, ["p"] * 2, ["a", "b"], {})
    finally:
        close_rewards(rewards)
    assert type(rewards[0].fn).__name__ == "PluginReward"  # it ran in its worker
    assert scores.total == [0.25, 0.25]
    assert scores.parts == {"judged_plugin:judged": {"tone": [0.5, 0.5]}}
    assert scores.counts == {"judged_plugin:judged": {"calls": 2.0}}


# ------------------------------------------------------------------------------- the constitution and settings

@pytest.mark.parametrize("text, said", [
    ("principles: []", "non-empty 'principles'"),
    ("principles:\n  - {name: a, instruction: x, scale: [5, 1]}", "principles[0].scale"),
    ("principles:\n  - {name: a, instruction: x}\n  - {name: a, instruction: y}", "named twice"),
    ("principles:\n  - {name: a, instruction: x, colour: red}", "principles[0].colour: unknown key"),
    ("principles:\n  - {name: 'a b', instruction: x}", "principles[0].name"),
    ("principles:\n  - {name: a, instruction: ''}", "principles[0].instruction: required"),
    ("principles:\n  - {name: a, instruction: x, weight: 0}", "weights sum to 0"),
    ("principles: [oops", "not readable as YAML"),
])
def test_constitution_problems_name_the_file_and_the_key(tmp_path, text, said):
    path = constitution_file(tmp_path, text)
    constitution, problems = read_constitution(str(path))
    assert constitution is None
    assert any(said in p and str(path) in p for p in problems), problems


def test_a_missing_constitution_is_named_with_where_relative_paths_start(tmp_path):
    _, problems = read_constitution("nowhere/c.yaml", "rewards[judge].args.constitution")
    assert "rewards[judge].args.constitution: nowhere/c.yaml is not a file" in problems[0]
    assert "relative paths start at" in problems[0]


def test_the_aggregate_is_the_weighted_mean_of_the_normalised_scores(tmp_path):
    constitution, _ = read_constitution(str(constitution_file(tmp_path)))
    helpful, brief = constitution.principles
    assert helpful.normalized(10) == 1.0 and helpful.normalized(1) == 0.0 and brief.normalized(2) == 0.5
    assert constitution.aggregate([1.0, 0.5]) == pytest.approx((3 * 1.0 + 1 * 0.5) / 4)


@pytest.mark.parametrize("extra, said", [
    ({"api_key": "sk-123"}, "never written in a recipe"),
    ({"temprature": 0.5}, "did you mean 'temperature'"),
    ({"template": "Judge {completion} by {criterion}", "template_version": "v2"}, "unknown field {criterion}"),
    ({"template": "Judge {prompt}", "template_version": "v2"}, "has no {completion}"),
    ({"template": "My own words: {completion}"}, "name its version"),
    ({"base_url": "127.0.0.1:8000"}, "base_url"),
    ({"backend": "anthropic"}, "backend"),
    ({"score_pattern": "Score: \\d+"}, "one capturing group"),
    ({"concurrency": 0}, "concurrency: must be an integer >= 1"),
    ({"api_key_env": "MY KEY"}, "api_key_env"),
])
def test_settings_problems_name_the_key_and_the_fix(tmp_path, extra, said):
    problems = settings_problems(judge_args(tmp_path, **extra))
    assert any(said in p for p in problems), problems
    assert not any("sk-123" in p for p in problems)  # a key written by mistake is never echoed


def test_a_key_variable_that_is_not_set_is_an_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.delenv("GRPO_TEST_JUDGE_KEY", raising=False)
    with pytest.raises(UserError, match="GRPO_TEST_JUDGE_KEY is not set"):
        make_judge(judge_args(tmp_path, api_key_env="GRPO_TEST_JUDGE_KEY"), "cpu", None)


def test_validate_refuses_a_key_in_the_recipe_naming_the_key(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(textwrap.dedent(f"""
        model: {{path: demo:tiny-arith}}
        data: {{path: {ROOT / 'data/arith/train.jsonl'}, prompt_template: "{{question}}"}}
        rewards:
          - name: judge
            args: {{constitution: {constitution_file(tmp_path)}, base_url: "http://127.0.0.1:8000/v1",
                    model: m, api_key: sk-secret-1}}
    """))
    done = grpo("validate", recipe)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "args.api_key" in done.stderr and "api_key_env" in done.stderr and "sk-secret-1" not in done.stderr


def test_validate_warns_of_a_judge_that_does_not_answer_or_does_not_serve_the_model(tmp_path):
    from grpo.validate import validate_recipe

    with JudgeServer(by_principle("Score: 1", "Score: 1"), models=("other-model",)) as server:
        recipe = judge_run_recipe(tmp_path, f"""
            - name: judge
              args: {{constitution: {constitution_file(tmp_path)}, base_url: "{server.base_url}", model: judge-model}}
        """, steps=1)
        notes: list[str] = []
        validate_recipe(recipe, warnings=notes)
    said = " | ".join(notes)
    assert "'judge-model' is not served at" in said and "'other-model'" in said
    assert "timeout_s: 30 s for a batch of judgements" in said  # the default limit is short for a judge
    recipe.write_text(recipe.read_text().replace(server.base_url, f"http://127.0.0.1:{closed_port()}/v1"))
    notes = []
    validate_recipe(recipe, warnings=notes)
    assert any("nothing answers at" in n and "args.base_url" in n for n in notes), notes


# ------------------------------------------------------------------------------------------ the prompt and reply

PATTERN = re.compile(r"Score:\s*\**\s*(-?\d+(?:\.\d+)?)")


@pytest.mark.parametrize("reply, value", [
    ("Good answer. Score: 7", 7.0),
    ("A score of 1 would be harsh... Score: 3\nScore: 9", 9.0),  # the last one is the verdict
    ("**Score:** 8", 8.0),
    ("Score: 11", None),  # off the scale
    ("I cannot judge this.", None),
    ("", None),
])
def test_the_replys_last_score_is_read_on_the_principles_scale(reply, value):
    got, why = read_score(reply, PATTERN, 1, 10)
    assert got == value
    assert bool(why) == (value is None)


def test_a_huge_reply_is_read_from_its_end_only():
    reply = "Score: 2 " * 1_000_000 + "Score: 5"  # 9 MB: the pattern scans at most REPLY_CHARS of it
    assert read_score(reply, PATTERN, 1, 10) == (5.0, "")
    assert read_score("Score: 5" + "x" * REPLY_CHARS, PATTERN, 1, 10)[0] is None


def test_a_long_completion_reaches_the_judge_as_its_head_and_tail():
    text = "A" * 5000 + "B" * 5000
    cut = clipped(text, 1000)
    assert cut.startswith("A" * 500) and cut.endswith("B" * 500) and "9000 characters cut" in cut


# --------------------------------------------------------------------------------- the endpoint, scripted server

def test_a_served_judge_scores_each_principle_and_caches_its_judgements(tmp_path):
    with JudgeServer(by_principle("Fine. Score: 10", "Long. Score: 1")) as server:
        judge = make_judge(judge_args(tmp_path, server), "cpu", None)
        out = checked(judge(["q1", "q1", "q2"], ["a", "a", "b"]), 3)
        # helpful 10 on [1, 10] -> 1.0 (weight 3); brief 1 on [0, 4] -> 0.25 (weight 1)
        assert out.values == [pytest.approx((3 * 1.0 + 0.25) / 4)] * 3
        assert out.parts == {"helpful": [1.0] * 3, "brief": [0.25] * 3}
        assert out.counts["calls"] == 4 and out.counts["cached"] == 2  # the repeated completion is judged once
        assert out.failed == 0 and out.counts["failed_judgements"] == 0
        path, body, _ = server.requests[0]
        assert path == "/v1/chat/completions" and body["model"] == "judge-model" and body["temperature"] == 0.0
        again = checked(judge(["q1"], ["a"]), 1)
        assert again.counts["calls"] == 0 and again.counts["cached"] == 2 and again.values == out.values[:1]
        assert len(server.requests) == 4


def test_a_new_template_version_is_a_new_judge_to_the_cache(tmp_path):
    with JudgeServer(by_principle("Score: 10", "Score: 4")) as server:
        a = make_judge(judge_args(tmp_path, server), "cpu", None)
        b = make_judge(judge_args(tmp_path, server, template="{completion}? Principle: helpful",
                                  template_version="mine-v1"), "cpu", None)
        assert a.key("q", "c", 0) != b.key("q", "c", 0)
        assert a.key("q", "c", 0) != a.key("q", "c", 1) != a.key("q", "d", 0)


def test_api_completions_posts_the_plain_prompt(tmp_path):
    with JudgeServer(lambda body, headers: (200, completion(" Score: 4"), {})) as server:
        judge = make_judge(judge_args(tmp_path, server, api="completions"), "cpu", None)
        out = checked(judge(["q"], ["a"]), 1)
        path, body, _ = server.requests[0]
        assert path == "/v1/completions" and "[Answer]\na" in body["prompt"] and "messages" not in body
        assert out.parts["brief"] == [1.0] and out.parts["helpful"] == [pytest.approx(3 / 9)]


@pytest.mark.parametrize("reply", [
    lambda b, h: (200, chat("I'd rather not say."), {}),  # no score
    lambda b, h: (200, chat("Score: 99"), {}),  # off the scale
    lambda b, h: (200, b"<html>gateway</html>", {}),  # not JSON
    lambda b, h: (200, json.dumps({"choices": []}).encode(), {}),  # no choice
    lambda b, h: (200, json.dumps({"choices": [{"message": {"content": None}}]}).encode(), {}),
    lambda b, h: (200, b"x" * (2 << 20), {}),  # over the size cap: not read
    lambda b, h: (200, b"[" * 200_000, {}),  # nested past Python's recursion limit
])
def test_a_judge_returning_garbage_scores_zero_and_is_counted(tmp_path, reply):
    with JudgeServer(reply) as server:
        judge = make_judge(judge_args(tmp_path, server), "cpu", None)
        out = checked(judge(["q", "q"], ["a", "b"]), 2)
    assert out.values == [0.0, 0.0] and out.parts == {"helpful": [0.0, 0.0], "brief": [0.0, 0.0]}
    assert out.failed == 2 and out.counts["failed_judgements"] == 4
    assert out.counts["helpful/failures"] == 2 and out.counts["brief/failures"] == 2
    assert out.failure.startswith("principle '")


def test_a_busy_server_is_retried_with_backoff_and_counted(tmp_path):
    seen = []

    def reply(body, headers):
        seen.append(1)
        if len(seen) <= 2:
            return 503, b'{"error": "overloaded"}', {"Retry-After": "0"}
        return 200, chat("Score: 4"), {}

    with JudgeServer(reply) as server:
        judge = make_judge(judge_args(tmp_path, server, concurrency=1), "cpu", None)
        out = checked(judge(["q"], ["a"]), 1)
    assert out.failed == 0 and out.counts["retries"] == 2 and out.counts["calls"] == 4  # 2 judgements + 2 retries


def test_a_refused_key_is_not_retried_and_the_key_is_never_said(tmp_path, monkeypatch):
    monkeypatch.setenv("GRPO_TEST_JUDGE_KEY", "sk-very-secret")
    with JudgeServer(lambda body, headers: (401, b'{"error": "bad key"}', {})) as server:
        judge = make_judge(judge_args(tmp_path, server, api_key_env="GRPO_TEST_JUDGE_KEY"), "cpu", None)
        out = checked(judge(["q"], ["a"]), 1)
        assert server.requests[0][2]["authorization"] == "Bearer sk-very-secret"
    assert out.counts["calls"] == 2 and out.counts["retries"] == 0  # one request per principle, none again
    assert "HTTP 401" in out.failure and "api_key_env" in out.failure and "sk-very-secret" not in out.failure


def test_requests_in_flight_stay_within_the_concurrency_limit(tmp_path):
    with JudgeServer(by_principle("Score: 5", "Score: 2"), delay_s=0.05) as server:
        judge = make_judge(judge_args(tmp_path, server, concurrency=3), "cpu", None)
        out = checked(judge(["q"] * 8, [f"answer {i}" for i in range(8)]), 8)
    assert out.counts["calls"] == 16 and out.failed == 0
    assert 1 <= server.most_in_flight <= 3


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_judge_fails_the_batch_without_retrying_every_judgement(tmp_path):
    base_url = f"http://127.0.0.1:{closed_port()}/v1"
    judge = make_judge({**judge_args(tmp_path), "base_url": base_url, "retries": 2, "concurrency": 2}, "cpu", None)
    out = checked(judge(["q"] * 10, [f"a{i}" for i in range(10)]), 10)
    assert out.values == [0.0] * 10 and out.failed == 10 and out.counts["failed_judgements"] == 20
    assert "no answer from" in out.failure
    assert out.counts["calls"] <= 2 * 3  # the two first in flight tried 3 times each; the rest were not sent


# ------------------------------------------------------------------------------ a local judge (the tiny model)

TINY_JUDGE = {"backend": "transformers", "model": "demo:tiny-arith", "api": "completions",
              "template": "Question: {principle}? {completion}\nAnswer:", "template_version": "tiny-v1",
              "score_pattern": r"answer is (\d+)", "max_tokens": 24}


@pytest.mark.slow
def test_a_local_judge_scores_with_the_tiny_model_and_counts_its_garbage(tmp_path):
    import torch

    constitution = constitution_file(tmp_path, "principles:\n  - {name: sums, instruction: sum, scale: [0, 20]}\n"
                                               "  - {name: huge, instruction: big, scale: [1000, 2000]}\n")
    judge = make_judge({**TINY_JUDGE, "constitution": str(constitution)}, "cpu", torch.float32)
    completions = [" 8 + 1 = 9. The answer is 9.", " 2 + 2 = 4. The answer is 4.", " 8 + 1 = 9. The answer is 9."]
    out = checked(judge(["Q"] * 3, completions), 3)
    assert out.counts["calls"] == 4 and out.counts["cached"] == 2  # 2 distinct completions x 2 principles
    # The tiny model answers "The answer is N" with a small N: on [0, 20] that reads as a score; on [1000, 2000] it
    # never fits, and each such judgement scores 0 and is counted, never raised.
    assert out.counts["sums/failures"] == 0 and all(0.0 <= v <= 1.0 for v in out.parts["sums"])
    assert out.parts["huge"] == [0.0] * 3 and out.counts["huge/failures"] == 3 and out.failed == 3
    assert "outside the scale [1000, 2000]" in out.failure
    assert out.values == [pytest.approx(v / 2) for v in out.parts["sums"]]


# ------------------------------------------------------------------------------------------ tiny training runs

def metric_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_the_tiny_judge_recipe_logs_per_principle_means(tmp_path):
    """Issue 31's bar: a tiny run with the judge reward against a local judge logs per-principle means."""
    out = tmp_path / "run"
    done = grpo("train", ROOT / "recipes/tiny-judge.yaml", "train.steps=2", f"output_dir={out}",
                "logging.progress_bar=false", "logging.samples_every=1", timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = metric_rows(out)
    assert len(rows) == 2
    for row in rows:
        for principle in ("correct", "brief"):
            assert 0.0 <= row[f"reward/judge/{principle}/mean"] <= 1.0
            assert f"reward/judge/{principle}/failures" in row
        assert row["reward/judge/calls"] > 0 and row["reward/judge/seconds"] > 0
        assert row["reward/judge/errors"] <= 64
    sample = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
    assert set(sample["reward_parts"]["judge"]) == {"correct", "brief"}
    assert "calls a step" in done.stdout  # the closing summary's line for the judge


def judge_recipe(tmp_path: Path, base_url: str, steps: int, guard: str) -> Path:
    return judge_run_recipe(tmp_path, f"""
        - name: judge
          timeout_s: 120
          {guard}
          args: {{constitution: {constitution_file(tmp_path)}, base_url: "{base_url}", model: judge-model,
                  backoff_s: 0.0, retries: 1}}
    """, steps)


@pytest.mark.slow
def test_a_garbage_judge_trains_on_zeros_with_every_failure_counted(tmp_path):
    with JudgeServer(lambda body, headers: (200, chat("The answer is lovely."), {})) as server:
        recipe = judge_recipe(tmp_path, server.base_url, steps=2, guard="max_error_fraction: 1.0")
        done = grpo("train", recipe, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = metric_rows(tmp_path / "run")
    assert [r["reward/judge/mean"] for r in rows] == [0.0, 0.0]
    assert [r["reward/judge/errors"] for r in rows] == [8, 8]  # every completion: a judgement of it failed
    assert [r["reward/judge/failed_judgements"] for r in rows] == [16, 16]  # 8 completions x 2 principles
    assert "reward 'judge' failed on" in done.stderr and "no score matching" in done.stderr


@pytest.mark.slow
def test_a_dead_judge_stops_the_run_by_the_reward_guard(tmp_path):
    recipe = judge_recipe(tmp_path, f"http://127.0.0.1:{closed_port()}/v1", steps=6, guard="max_error_steps: 2")
    done = grpo("train", recipe, timeout=900)
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert "reward 'judge' failed on 8 of 8 completions at step 2" in done.stderr
    assert "no answer from" in done.stderr
    assert len(metric_rows(tmp_path / "run")) == 1  # step 1 logged; step 2's guard stopped it before logging


@pytest.mark.slow
def test_on_two_ranks_each_judges_its_share_and_the_step_logs_the_sums(tmp_path):
    """Under torchrun every rank builds its own judge and scores its own completions; rank 0 logs the global step:
    the calls of both ranks (every request the server saw), the failures of both, the parts over all completions."""
    import subprocess
    import sys

    def reply(body, headers):
        prompt = body["messages"][0]["content"]
        return 200, chat("Score: 10" if "Principle: helpful" in prompt else "no verdict"), {}

    with JudgeServer(reply) as server:
        recipe = judge_run_recipe(tmp_path, f"""
            - name: judge
              timeout_s: 120
              max_error_fraction: 1.0
              args: {{constitution: {constitution_file(tmp_path)}, base_url: "{server.base_url}", model: judge-model,
                      backoff_s: 0.0}}
        """, steps=2)
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                               "-m", "grpo", "train", str(recipe)], capture_output=True, text=True, timeout=900,
                              cwd=ROOT)
        served = len(server.requests)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    rows = metric_rows(tmp_path / "run")
    assert sum(r["reward/judge/calls"] for r in rows) == served > 0
    for r in rows:  # 2 prompts x 4 completions a step over both ranks; "brief" never gets a verdict
        assert r["reward/judge/errors"] == 8 and r["reward/judge/brief/failures"] == 8
        assert r["reward/judge/helpful/mean"] == 1.0 and r["reward/judge/brief/mean"] == 0.0
        assert r["reward/judge/mean"] == pytest.approx(0.75)
