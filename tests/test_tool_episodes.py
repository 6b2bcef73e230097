"""Multi-turn episodes (grpo/sampling/tools.py) over a scripted sampler: turns pause at a tool call, the batch's
calls run together, observations become environment segments (context, never trained on), every limit ends an
episode and is counted, and rewards read the answer after the last tool output."""

import threading
import time

import pytest

from environments.registry import Environment, load_environment
from grpo.sampling.base import SamplingSettings
from grpo.config import EpisodeLimits
from grpo.sampling.tools import ToolSampler
from grpo.train.episodes import Episode, token_batch, tool_figures
from rewards.math import math_reward
from rewards.scoring import reward_columns
from scripted import TOK, Scripted, ScriptedEngine


def prompt(text="Question: What is 37 * 48?\nAnswer:"):
    return TOK(text)["input_ids"]


def tool_user(context: str, i: int) -> str:
    """Row 0 of each group calls the calculator once, then answers with its output; row 1 guesses."""
    if i == 1:
        return " The answer is 1000."
    if "<out>" in context:
        return " The answer is " + context.rsplit("<out>", 1)[1].split("</out>")[0] + "."
    return " <calc>37*48</calc><out>9999</out> The answer is 9999."  # what the model would hallucinate past the stop


@pytest.fixture(autouse=True, params=["in_turns", "streamed"])
def engine(request, monkeypatch):
    """Every test twice: over a sampler that goes turn by turn (transformers) and over one that takes requests
    while it decodes (vLLM's step loop), where each episode runs on its own clock."""
    monkeypatch.setitem(globals(), "SAMPLER", ScriptedEngine if request.param == "streamed" else Scripted)
    return request.param


SAMPLER = Scripted


def run(script, limits=EpisodeLimits(), env=None, n=2, prompts=1, max_new_tokens=64):
    inner = SAMPLER(script)
    sampler = ToolSampler(inner, TOK, env or load_environment("calculator"), limits)
    groups = sampler.generate([prompt()] * prompts, SamplingSettings(n=n, max_new_tokens=max_new_tokens, seed=3),
                              rows=[{"question": "q"}] * prompts)
    return groups, inner, sampler


def test_a_tool_call_pauses_the_turn_and_the_observation_is_context():
    [group], inner, _ = run(tool_user)
    called, guessed = group.completions
    assert called.text == " <calc>37*48</calc><out>1776</out> The answer is 1776."  # the real output, not 9999
    assert called.tools.calls == [{"call": " <calc>37*48</calc>", "output": "<out>1776</out>", "error": False,
                                   "seconds": called.tools.calls[0]["seconds"]}]
    assert called.tools.turns == 2 and called.tools.final_text == " The answer is 1776."
    assert guessed.tools.calls == [] and guessed.tools.turns == 1 and guessed.tools.final_text == guessed.text
    # the first turn drew both rows from one prompt; the second continued the caller alone, n = 1
    assert [(k, s.n, s.include_stop) for k, s in inner.calls] == [(1, 2, True), (1, 1, True)]
    assert "</calc>" in inner.calls[0][1].stop
    # observation tokens are the environment's: in the sequence, out of the loss
    episode = Episode.one_turn(prompt(), called, group_id=0)
    assert [s.trained for s in episode.segments] == [True, False, True]
    assert TOK.decode(episode.segments[1].token_ids) == "<out>1776</out>"
    batch = token_batch([episode, Episode.one_turn(prompt(), guessed, group_id=0)], TOK.pad_token_id)
    assert batch.loss_mask[0].sum() == len(called.token_ids) - len("<out>1776</out>")
    start = len(" <calc>37*48</calc>")
    assert batch.loss_mask[0, start:start + 15].sum() == 0 and batch.old_logprobs[0, start:start + 15].abs().sum() == 0
    assert batch.input_ids[0, :len(called.token_ids)].tolist() == called.token_ids


def test_rewards_read_the_answer_after_the_last_tool_output():
    [group], _, _ = run(tool_user)
    cols = reward_columns([{}] * 2, ["1776", "1776"], [c.token_ids for c in group.completions],
                          [c.finish_reason for c in group.completions], 64, tools=[c.tools for c in group.completions])
    assert cols["tool_calls"][0][0]["output"] == "<out>1776</out>" and cols["tool_calls"][1] == []
    texts = [c.text for c in group.completions]
    assert math_reward(["p"] * 2, texts, **cols) == [1.0, 0.0]
    # the tool's output alone is not an answer: a transcript that stops after it scores 0
    assert math_reward(["p"], [" <calc>37*48</calc><out>1776</out>"], answer=["1776"], final_text=[""]) == [0.0]
    assert "tool_calls" not in reward_columns([{}], ["1"], [[1]], ["stop"], 8, tools=[None])


def always_calls(context: str, i: int) -> str:
    return " <calc>1+1</calc>"


@pytest.mark.parametrize("limits, limit, calls, turns", [
    (EpisodeLimits(max_turns=3, max_tool_calls=10), "turns", 2, 3),
    (EpisodeLimits(max_turns=10, max_tool_calls=2), "tool_calls", 2, 3),
    (EpisodeLimits(max_turns=10, max_tool_calls=10, max_total_tokens=50), "total_tokens", 2, 2),
])
def test_each_limit_ends_an_episode_and_is_counted(limits, limit, calls, turns):
    [group], _, _ = run(always_calls, limits, n=1)
    [c] = group.completions
    assert c.tools.limit == limit and len(c.tools.calls) == calls and c.tools.turns == turns
    assert c.finish_reason == "length" and len(c.token_ids) <= limits.max_total_tokens
    episode = Episode.one_turn(prompt(), c, group_id=0)
    figures = tool_figures([episode])
    assert figures[f"tools/limit/{limit}"] == 1 and figures["tools/calls_mean"] == calls


def test_a_long_observation_is_cut_to_its_budget():
    env = Environment("long", lambda row, text: "<out>" + "y" * 500, ("</calc>",), {})
    [group], _, _ = run(tool_user, EpisodeLimits(max_observation_tokens=7), env=env, n=1)
    [c] = group.completions
    assert c.tools.observation_tokens == 7 and c.text.startswith(" <calc>37*48</calc><out>yy The answer is yy")


def test_tool_seconds_end_the_episode_and_a_hung_tool_is_abandoned():
    release = threading.Event()

    def hangs(row, text):
        release.wait(30)
        return "late"

    env = Environment("hangs", hangs, ("</calc>",), {})
    started = time.perf_counter()
    [group], _, _ = run(always_calls, EpisodeLimits(max_tool_seconds=0.3), env=env, n=2)
    release.set()
    assert time.perf_counter() - started < 5
    assert [c.tools.limit for c in group.completions] == ["tool_seconds"] * 2
    assert all(c.tools.calls[-1]["error"] for c in group.completions)


def test_the_batch_calls_run_at_once_and_a_raising_environment_is_an_error_observation():
    together = threading.Barrier(6)  # passes only when all six calls are running at the same time
    lock, count = threading.Lock(), []

    def meets_the_others(row, text):
        together.wait(timeout=60)
        with lock:
            count.append(1)
            if len(count) == 1:
                raise RuntimeError("boom")
        return "ok"

    env = Environment("together", meets_the_others, ("</calc>",), {})
    groups, _, sampler = run(tool_user, EpisodeLimits(workers=8, max_tool_seconds=120), env=env, n=1, prompts=6)
    outputs = sorted(g.completions[0].tools.calls[0]["output"] for g in groups)
    assert outputs[0] == "environment error: RuntimeError: boom" and outputs[1:] == ["ok"] * 5
    assert sum(g.completions[0].tools.calls[0]["error"] for g in groups) == 1
    assert sampler.tool_wall_s > 0


def test_an_environment_that_finds_no_call_ends_the_episode_as_the_model_left_it():
    env = Environment("none", lambda row, text: None, ("</calc>",), {})
    [group], _, _ = run(always_calls, env=env, n=1)
    [c] = group.completions
    assert c.tools.turns == 1 and c.tools.calls == [] and c.tools.limit is None and c.text == " <calc>1+1</calc>"


def test_the_environment_gets_the_row_and_the_transcript():
    got = []
    env = Environment("spy", lambda row, text: got.append((row, text)) or "<out>1</out>", ("</calc>",), {})
    run(tool_user, env=env, n=1)
    assert got == [({"question": "q"}, " <calc>37*48</calc>")]


def test_eval_with_a_tool_grades_the_final_answer_and_records_the_protocol(tmp_path):
    import json

    from grpo.config import EvalConfig
    from grpo.eval.run import run_eval

    data = tmp_path / "products.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is 37 * 48? #{i}", "answer": "1776"}) + "\n"
                            for i in range(3)))
    cfg = EvalConfig(data=str(data), prompt_template="Question: {question}\nAnswer:", k=2, temperature=1.0,
                     max_new_tokens=64, bootstrap=0)
    limits = EpisodeLimits(max_turns=3, max_tool_calls=2, max_total_tokens=96)
    sampler = ToolSampler(Scripted(tool_user), TOK, load_environment("calculator"), limits)
    summary = run_eval(cfg, tokenizer=TOK, sampler=sampler, output_dir=tmp_path / "out", progress=False,
                       console=False)
    assert summary["metrics"]["overall"]["metrics"]["avg@2"] == 0.5  # row 0 calls and is right, row 1 guesses
    assert summary["tools"]["environment"] == "calculator" and summary["tools"]["limits"]["max_turns"] == 3
    assert summary["tools"]["calls_mean"] == 0.5 and summary["tools"]["errors"] == 0
    assert "tool calculator (at most 3 turns, 2 calls, 96 tokens)" in summary["protocol"]
    samples = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    first = samples[0]["samples"][0]
    assert first["extracted"] == "1776" and first["tool_calls"][0]["output"] == "<out>1776</out>"
    assert "| tool | calculator" in (tmp_path / "out" / "summary.md").read_text()


def test_in_lockstep_a_rank_with_no_episode_left_decodes_a_stand_in_while_another_continues():
    other_rank_rounds = iter([True, False])  # the other rank still has an episode after this rank's first turn

    def any_rank(mine: bool) -> bool:
        return mine or next(other_rank_rounds)

    inner = Scripted(lambda context, i: " The answer is 5.")  # this rank never calls the tool
    sampler = ToolSampler(inner, TOK, load_environment("calculator"), EpisodeLimits(max_total_tokens=80),
                          any_rank=any_rank)
    [group] = sampler.generate([prompt()], SamplingSettings(n=2, max_new_tokens=64, seed=0))
    assert [c.text for c in group.completions] == [" The answer is 5."] * 2  # the stand-in's draw is discarded
    assert [(k, s.n, s.max_new_tokens) for k, s in inner.calls] == [(1, 2, 64), (1, 1, 64)]  # one budget for all


def test_a_slow_tool_holds_up_its_own_episode_only(engine):
    """Row 0 calls a tool that answers only once another episode has finished its second turn. Streamed, the other
    episode's call is answered and it goes on while row 0's call waits; turn by turn, every episode waits for the
    slowest call of the turn, so that tool would wait forever (here: until its 3 s budget ends the episode)."""
    second_turn_done = threading.Event()

    def script(context, i):
        if "<out>" in context:
            if "fast" in context:
                second_turn_done.set()
            return " The answer is 1."
        return " <calc>slow</calc>" if i == 0 else " <calc>fast</calc>"

    def tool(row, text):
        if "slow" in text:
            return "<out>slow</out>" if second_turn_done.wait(3) else None
        return "<out>fast</out>"

    env = Environment("waits", tool, ("</calc>",), {})
    [group], inner, _ = run(script, EpisodeLimits(max_tool_seconds=10), env=env, n=2)
    slow, fast = group.completions
    assert fast.text == " <calc>fast</calc><out>fast</out> The answer is 1."
    if engine == "streamed":
        assert slow.text == " <calc>slow</calc><out>slow</out> The answer is 1."
        # the fast episode went back to the engine before the slow one did
        adds = [key for event, key in inner.log if event == "add"]
        assert adds == [("group", 0), ("episode", 1), ("episode", 0)]
    else:
        assert slow.text == " <calc>slow</calc>" and slow.tools.calls == []  # its tool gave up: no reply
