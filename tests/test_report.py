"""`grpo report` on small synthetic run directories written here: the page holds every panel and the numbers of
the files, a torn last line is skipped with a note, several runs overlay in one legend."""

import json
import re
import sys

import pytest
from typer.testing import CliRunner

pytest.importorskip("matplotlib", reason="grpo report needs the report extra (matplotlib)")
pytestmark = pytest.mark.slow  # matplotlib renders every panel of several runs (40 s in all, quiet)

from grpo.cli import app  # noqa: E402
from grpo.report.cli import make_report  # noqa: E402
from grpo.report.figures import time_parts  # noqa: E402
from grpo.report.html import num  # noqa: E402
from grpo.report.load import load_run  # noqa: E402

PANEL_IDS = ["reward", "length", "policy", "optim", "sampler", "groups", "throughput", "time", "eval", "other"]


def metrics_row(step: int, reward: float) -> dict:
    return {"step": step, "reward/mean": reward, "reward/std": 0.4, "reward/math/mean": reward,
            "reward/math/std": 0.4, "reward/math/errors": 0, "accuracy": reward, "advantage/mean": 0.0,
            "completion/length_mean": 20.0 + step, "completion/length_max": 40, "completion/truncated_fraction": 0.125,
            "entropy": 0.5 / step, "kl": 0.001 * step, "clip_fraction": 0.02, "ratio_mean": 1.0, "loss": -0.1,
            "grad_norm": 0.3, "lr": 1e-4, "sampler/logprob_gap": 4e-7, "groups/zero_variance_fraction": 0.25,
            "groups/dropped": 0, "throughput/generated_tokens_per_s": 90.0, "throughput/tokens_per_s": 60.0,
            "time/generate_s": 3.0, "time/score_s": 0.5, "time/train_s": 1.5, "time/sync_s": 0.25, "time/step_s": 6.0,
            "custom/new_metric": 7.0 + step}


def eval_summary(step: int, avg: float) -> dict:
    overall = {"problems": 16, "samples_per_problem": 2, "metrics": {"avg@2": avg, "pass@1": avg, "pass@2": avg + 0.1,
                                                                      "maj@2": avg - 0.1},
               "ci95": {"avg@2": [avg - 0.15, avg + 0.15]}, "length_mean": 23.5, "truncation_rate": 0.0}
    return {"step": step, "protocol": "2 sample(s) per problem, T=0.6, top_p=0.95, max 48 new tokens, grader math, "
                                      "seed 0",
            "environment": {"python": "3.11", "torch": "2.x"}, "model": {"device": "cpu"},
            "metrics": {"overall": overall, "by": {"test": overall}}}


def write_run(path, rewards, torn=False):
    path.mkdir(parents=True)
    with (path / "metrics.jsonl").open("w") as f:
        for step, reward in enumerate(rewards, 1):
            row = metrics_row(step, reward)
            if step % 3 == 0:
                row.update({"eval/avg@2": reward / 2, "eval/pass@1": reward / 2, "eval/pass@2": reward / 2 + 0.1,
                            "eval/maj@2": reward / 2 - 0.1, "eval/length_mean": 23.5, "eval/truncation_rate": 0.0})
                out = path / "eval" / f"step_{step:06d}"
                out.mkdir(parents=True)
                (out / "summary.json").write_text(json.dumps(eval_summary(step, reward / 2)))
            f.write(json.dumps(row) + "\n")
        if torn:
            f.write('{"step": %d, "reward/mean": 0.9, "time/gen' % (len(rewards) + 1))  # the crash, mid-line
    with (path / "samples.jsonl").open("w") as f:
        for step in (3, len(rewards)):
            for i, reward in enumerate((1.0, 0.0)):
                f.write(json.dumps({"step": step, "prompt": f"Question: {step}+{i}?\nAnswer:",
                                    "completion": f" completion-{step}-{i} <b>", "finish_reason": "stop",
                                    "reward": reward, "rewards": {"math": reward}, "advantage": 0.7071 - i,
                                    "answer": str(step + i)}) + "\n")
    (path / "recipe.resolved.json").write_text(json.dumps({"name": path.name, "model": {"path": "demo:tiny-arith"},
                                                           "train": {"steps": len(rewards)},
                                                           "rewards": [{"name": "math", "weight": 1.0}]}))
    return path


REWARDS = [0.1875, 0.25, 0.3125, 0.5, 0.625, 0.8125]


@pytest.fixture(scope="module")
def one_run(tmp_path_factory):
    run = write_run(tmp_path_factory.mktemp("runs") / "seed0", REWARDS)
    png = run.parent / "png"
    page, pngs, notes = make_report([str(run)], png=png)
    return run, page.read_text(), pngs, notes


def panel_html(page: str, panel_id: str) -> str:
    match = re.search(rf'<section class="panel" id="panel-{panel_id}".*?</section>', page, re.S)
    assert match, f"no {panel_id} panel"
    return match.group(0)


def test_report_holds_every_panel_and_the_numbers_of_the_files(one_run):
    run, page, pngs, notes = one_run
    assert page.count('<section class="panel"') == len(PANEL_IDS) >= 8
    for panel_id in PANEL_IDS:
        assert "<svg" in panel_html(page, panel_id)
    # last, min and max of metrics.jsonl in the panel's table
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    reward = panel_html(page, "reward")
    assert f"<td class=num>{num(rows[-1]['reward/mean'])}</td>" in reward and "0.8125" in reward
    assert f"<td class=num>{num(rows[0]['reward/mean'])}</td>" in reward
    assert "<td class=num>26</td>" in panel_html(page, "length")  # completion/length_mean at step 6
    assert "custom/new_metric" in panel_html(page, "other")  # a key no panel names is still shown
    # eval: curve panel, and the table with the interval and the protocol line
    assert "eval/avg@2" in panel_html(page, "eval")
    assert "avg@2: 40.6 [25.6, 55.6]" in page and "grader math, seed 0" in page
    # samples, escaped; recipe; environment not recorded (no environment.json)
    assert "completion-6-1 &lt;b&gt;" in page and 'data-step="3"' in page
    assert "recipe.resolved.json" in page and "demo:tiny-arith" in page
    assert "not recorded" in page and "the eval at step 3 recorded: python 3.11" in page
    # self-contained: no external script, stylesheet or image
    assert not re.search(r'<(script|link|img)[^>]+(src|href)=', page)
    assert sorted(p.stem for p in pngs) == sorted(PANEL_IDS + ["overview"])
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert notes == []


def test_time_budget_other_is_what_the_logged_parts_leave(one_run):
    run = load_run(one_run[0])
    steps, parts = time_parts(run)
    assert steps == [1, 2, 3, 4, 5, 6]
    assert parts["generate"][0] == 3.0 and parts["other"][0] == pytest.approx(6.0 - 5.25)


def test_torn_last_line_is_skipped_with_a_note(tmp_path):
    run_dir = write_run(tmp_path / "crashed", REWARDS, torn=True)
    run = load_run(run_dir)
    assert [r["step"] for r in run.metrics] == [1, 2, 3, 4, 5, 6]
    assert run.notes == ["metrics.jsonl: last line skipped: torn (the run crashed or is still writing it)"]
    result = CliRunner().invoke(app, ["report", str(run_dir), "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    assert "note: crashed: metrics.jsonl: last line skipped" in result.output
    assert "last line skipped" in (tmp_path / "r.html").read_text()


def test_two_runs_overlay_in_one_panels_legend(tmp_path):
    a = write_run(tmp_path / "seed0", REWARDS)
    b = write_run(tmp_path / "seed1", [0.5] * 4)
    page, _, _ = make_report([str(a), str(b)], out=tmp_path / "both.html")
    reward = panel_html(page.read_text(), "reward")
    legend = re.findall(r"<text[^>]*>([^<]+)</text>", reward)
    assert "seed0" in legend and "seed1" in legend
    assert "stroke: #0072b2" in reward and "stroke: #d55e00" in reward  # each run's own colour in the same axes
    assert "<td>seed1</td><td class=num>4</td><td class=num>0.5</td>" in reward


def test_two_runs_of_the_same_name_get_told_apart(tmp_path):
    a = write_run(tmp_path / "recipe-a" / "run", REWARDS)
    b = write_run(tmp_path / "recipe-b" / "run", REWARDS)
    page, _, _ = make_report([str(a), str(b)], out=tmp_path / "r.html", png=None)
    text = page.read_text()
    assert "recipe-a/run" in text and "recipe-b/run" in text


def test_not_a_run_directory_and_missing_matplotlib_are_user_errors(tmp_path, monkeypatch):
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "not a grpo run directory" in result.output
    write_run(tmp_path / "r", REWARDS)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    result = CliRunner().invoke(app, ["report", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "error: grpo report needs matplotlib: pip install 'grpo[report]'" in result.output


def test_environment_json_is_shown_when_the_trainer_wrote_one(tmp_path):
    run_dir = write_run(tmp_path / "r", REWARDS[:2])
    (run_dir / "environment.json").write_text(json.dumps({"torch": "2.13.0", "device": "cuda:0", "world_size": 2}))
    page, _, _ = make_report([str(run_dir)])
    text = page.read_text()
    assert page == run_dir / "report.html"
    assert "<th>torch</th><td>2.13.0</td>" in text and "<th>world_size</th><td>2</td>" in text


def test_a_run_still_going_and_a_standalone_eval_in_the_run_dir(tmp_path):
    from grpo.report.evals import table

    run_dir = write_run(tmp_path / "r", REWARDS)
    recipe = json.loads((run_dir / "recipe.resolved.json").read_text())
    recipe["train"]["steps"] = 100
    (run_dir / "recipe.resolved.json").write_text(json.dumps(recipe))
    standalone = run_dir / "final-eval"
    standalone.mkdir()
    (standalone / "summary.json").write_text(json.dumps({**eval_summary(None, 0.75), "step": None}))
    run = load_run(run_dir)
    assert "6 of 100 steps logged: still running, or stopped early" in run.notes
    head, rows = table([run])
    assert [r[1] for r in rows] == ["step 3", "step 6", "final-eval"]
    assert rows[-1][4] == "avg@2: 75.0 [60.0, 90.0]" and rows[-1][-1].startswith("2 sample(s) per problem")


def test_a_tool_using_run_gets_the_tools_panel_and_episodes_turn_by_turn(tmp_path):
    run = write_run(tmp_path / "tools", REWARDS[:3])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    with (run / "metrics.jsonl").open("w") as f:
        for row in rows:
            row.update({"tools/calls_mean": 0.25 * row["step"], "tools/error_fraction": 0.0, "tools/turns_mean": 1.5,
                        "tools/limit/turns": 0, "tools/wall_s": 0.01})
            f.write(json.dumps(row) + "\n")
    with (run / "samples.jsonl").open("a") as f:
        f.write(json.dumps({"step": 3, "prompt": "What is 37 * 48?", "completion": " <calc>37*48</calc><out>1776</out> 1776.",
                            "reward": 1.0, "rewards": {"math": 1.0}, "advantage": 0.5, "finish_reason": "stop",
                            "tool_calls": [{"call": " <calc>37*48</calc>", "output": "<out>1776</out>", "error": False}],
                            "turns": [{"role": "model", "text": " <calc>37*48</calc>"},
                                      {"role": "tool", "text": "<out>1776</out>"},
                                      {"role": "model", "text": " The answer is 1776."}]}) + "\n")
    page, _, _ = make_report([str(run)])
    page = page.read_text()
    assert "tools/calls_mean" in panel_html(page, "tools")
    assert '<span class="tool" title="tool output: read by the model, masked from the loss">&lt;out&gt;1776&lt;/out&gt;' \
           '</span>' in page
    assert '<span class="turn"> The answer is 1776.</span>' in page and "1 tool call(s)" in page


def test_fired_alarms_are_listed_above_the_panels_and_their_signals_get_a_panel(tmp_path):
    fired = write_run(tmp_path / "hacked", REWARDS)
    quiet = write_run(tmp_path / "honest", REWARDS)
    for run, flag_steps in ((fired, {2, 3, 5}), (quiet, set())):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        with (run / "metrics.jsonl").open("w") as f:
            for row in rows:
                row["hacking/length_reward_corr"] = 0.7
                if row["step"] in flag_steps:
                    row["alarms/length"] = 1.0
                f.write(json.dumps(row) + "\n")
    page, _, _ = make_report([str(fired), str(quiet)], out=tmp_path / "both.html")
    page = page.read_text()
    table = re.search(r'<section id="alarms">.*?</section>', page, re.S).group(0)
    assert "<b>length</b>" in table and "reward explained by length" in table and "2-3, 5" in table
    assert "No alarm fired in honest" in table
    assert page.index('id="alarms"') < page.index('class="panel"')
    assert "hacking/length_reward_corr" in panel_html(page, "hacking")
