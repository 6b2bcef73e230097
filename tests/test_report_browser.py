"""A real headless Chromium opens the report of a real tiny run: its inline script runs without a console error,
the panels are in the rendered DOM, and the screenshot is a page of figures, not a blank one.

CI installs Chromium (.ci/run); elsewhere the test is skipped, saying so, when no browser is on PATH."""

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from conftest import grpo as run_grpo

pytest.importorskip("matplotlib", reason="grpo report needs the report extra (matplotlib)")

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(BROWSER is None, reason="no chromium, chromium-browser or google-chrome on PATH "
                                                         "(CI installs it: apt-get install chromium)")]


def grpo(*args):
    """conftest.grpo, offline, for up to 10 minutes; it must exit 0."""
    return run_grpo(*args, env={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}, timeout=600, check=True)


def chromium(*args, timeout=120):
    """Headless Chromium; its console messages (console.* and uncaught errors) come on stderr as CONSOLE lines."""
    done = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--enable-logging=stderr", "--v=0", "--window-size=1400,3000", *args],
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    run = tmp / "tiny-run"
    grpo("train", "recipes/tiny.yaml", f"output_dir={run}", "train.steps=4", "checkpoint.every=0",
         "logging.samples_every=2", "logging.progress_bar=false", "eval.every=2", "eval.data=data/arith/test.jsonl",
         "eval.limit=8", "eval.k=2", "eval.max_new_tokens=48", "eval.bootstrap=100",
         'eval.prompt_template="Question: {question}\\nAnswer:"')  # YAML double quotes make \n a newline
    grpo("report", str(run), "--out", str(tmp / "report.html"), "--png", str(tmp / "png"))
    return tmp / "report.html"


def test_chromium_renders_the_report_without_console_errors(report):
    done = chromium("--dump-dom", report.as_uri())
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == [], console  # the page logs nothing itself: any console line is an error
    dom = done.stdout
    panels = re.findall(r'<section class="panel" id="panel-([a-z]+)"', dom)
    assert len(panels) >= 8 and {"reward", "length", "policy", "time", "eval"} <= set(panels), panels
    # the sample browser's script ran: it fills in the count of the rows it shows
    assert re.search(r'id="sample-count"[^>]*>\d+ of \d+ samples shown<', dom), "the sample filter script did not run"


def test_the_sample_filters_hide_the_rows_that_do_not_match(report, tmp_path):
    """The page as a user leaves it after choosing step 4 and a total reward of at least 1: a script appended
    after the page's own sets the two filters the way the browser does on input."""
    picks = ("<script>function pick(id, v) { var e = document.getElementById(id); e.value = v;"
             " e.dispatchEvent(new Event('change')); }"
             " pick('f-step', '4'); pick('f-min', '1');</script></body>")
    page = tmp_path / "filtered.html"
    page.write_text(report.read_text().replace("</body>", picks))
    done = chromium("--dump-dom", page.as_uri())
    assert not [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    rows = sample_rows(done.stdout)  # (step, rewards, shown) of each row as the browser left it
    shown = [(step, rewards) for step, rewards, visible in rows if visible]
    expected = [(step, r) for step, r, _ in rows if step == "4" and r["total"] >= 1]
    assert rows and 0 < len(shown) < len(rows) and shown == expected
    assert re.search(rf'id="sample-count"[^>]*>{len(expected)} of {len(rows)} samples shown<', done.stdout)


def sample_rows(dom: str) -> list[tuple[str, dict, bool]]:
    class Rows(HTMLParser):
        found: list = []

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "tr" and "data-rewards" in a:
                self.found.append((a["data-step"], json.loads(a["data-rewards"]),
                                   "display: none" not in (a.get("style") or "")))

    parser = Rows()
    parser.found = []
    parser.feed(dom)
    return parser.found


def test_the_screenshot_shows_the_panels_not_a_blank_page(report, tmp_path):
    from matplotlib.image import imread
    import numpy as np

    shot = tmp_path / "report.png"
    chromium(f"--screenshot={shot}", report.as_uri())
    pixels = imread(shot)[..., :3]  # height x width x RGB in [0, 1]
    assert pixels.shape[:2] == (3000, 1400)
    ink = (pixels < 0.9).any(axis=2)  # anything not white
    assert ink.mean() > 0.03, f"only {ink.mean():.1%} of the screenshot is not white"
    # the run's colour (#0072B2) is drawn: the curves, not only text
    blue = np.abs(pixels - np.array([0x00, 0x72, 0xB2]) / 255).max(axis=2) < 0.08
    assert blue.sum() > 2000, f"{blue.sum()} pixels of the run's colour"
    colours = np.unique((pixels[::4, ::4] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 50


def test_a_tool_run_shows_its_episodes_turn_by_turn_in_the_browser(tmp_path):
    """The tool demo for two steps: the report's sample browser shows each episode's turns, the tool's output
    marked as masked from the loss, and the Tool use panel; the page's script runs without a console error."""
    run = tmp_path / "tools-run"
    grpo("train", "recipes/tiny-tools.yaml", f"output_dir={run}", "train.steps=2", "checkpoint.every=0",
         "logging.samples_every=1", "logging.num_samples=8", "logging.progress_bar=false")
    grpo("report", str(run), "--out", str(tmp_path / "report.html"))
    done = chromium("--dump-dom", (tmp_path / "report.html").as_uri())
    assert not [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    dom = done.stdout
    assert 'id="panel-tools"' in dom
    outputs = re.findall(r'<span class="tool" title="tool output: read by the model, masked from the loss">'
                         r'&lt;out&gt;(-?\d+)&lt;/out&gt;</span>', dom)
    assert outputs, "no tool output shown as a masked span in the sample browser"
    assert re.search(r"\d+ tool call\(s\)", dom)
    assert re.search(r'id="sample-count"[^>]*>\d+ of \d+ samples shown<', dom)
