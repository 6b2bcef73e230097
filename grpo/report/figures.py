"""Draw the panels with matplotlib's object API (Figure, no pyplot): no global state, no GUI backend, and the
same Figure gives the SVG inlined in the page and the PNG written by --png.

Each run has one colour across every panel; a thin faint line is the raw value per step, a thick one its EMA.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

from matplotlib.figure import Figure

from grpo import io as atomic
from grpo.report.evals import eval_points
from grpo.report.load import RunData
from grpo.report.panels import ON_THE_STEP, TIME_PARTS, TIME_TOTAL, Panel, is_log

# Colour-blind-safe (Okabe-Ito); runs beyond eight reuse them.
RUN_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
TIME_COLORS = {"generate": "#0072B2", "score": "#E69F00", "train": "#D55E00", "sync": "#CC79A7",
               "other": "#BBBBBB"}
COLS = 4
CELL_W, CELL_H = 3.4, 2.5  # inches per metric axes

RC = {"font.size": 8, "axes.titlesize": 9, "axes.spines.top": False, "axes.spines.right": False,
      "axes.grid": True, "grid.alpha": 0.3, "svg.fonttype": "none", "svg.hashsalt": "grpo-report"}


def ema(values: list[float], weight: float) -> list[float]:
    """Debiased exponential moving average (as TensorBoard's smoothing): the first points are not pulled to 0.
    NaNs stay NaN and do not poison later points."""
    out, acc, norm = [], 0.0, 0.0
    for v in values:
        if v is None or math.isnan(v):
            out.append(float("nan"))
            continue
        acc = weight * acc + (1 - weight) * v
        norm = weight * norm + (1 - weight)
        out.append(acc / norm)
    return out


def color(index: int) -> str:
    return RUN_COLORS[index % len(RUN_COLORS)]


def _grid(n: int, width_cells: int = COLS, cell_w: float = CELL_W) -> tuple[Figure, list]:
    import matplotlib

    cols = max(1, min(width_cells, n))
    rows = math.ceil(n / cols)
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(cell_w * cols, CELL_H * rows + 0.5), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _run_legend(fig: Figure, runs: list[RunData], note: str, cols: int) -> None:
    """Runs (and the note, when the figure is wide enough for it) above the axes; the page says the note too."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=color(i), lw=2, label=run.name) for i, run in enumerate(runs)]
    if note and cols > 1:
        handles.append(Line2D([], [], color="none", label=note))
    fig.legend(handles=handles, loc="outside upper left", ncols=max(1, min(len(handles), 3 * cols)), frameon=False)


def _axes_style(ax, key: str) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_title(key)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole: no tick at 3.5


def metrics_figure(panel: Panel, keys: list[str], runs: list[RunData], smoothing: float) -> Figure:
    import matplotlib

    with matplotlib.rc_context(RC):
        fig, axes = _grid(len(keys))
        for ax, key in zip(axes, keys):
            _draw_metric(ax, key, runs, smoothing, is_log(panel, key))
        _run_legend(fig, runs, f"faint: raw, bold: EMA {smoothing:g}", len(axes))
    return fig


def _draw_metric(ax, key: str, runs: list[RunData], smoothing: float, log: bool = False) -> None:
    positive = True
    for i, run in enumerate(runs):
        steps, values = run.series(key)
        if not steps:
            continue
        positive &= all(v > 0 for v in values if not math.isnan(v))
        if len(steps) == 1:
            ax.plot(steps, values, "o", color=color(i), ms=4)
            continue
        ax.plot(steps, values, color=color(i), lw=0.8, alpha=0.35)
        ax.plot(steps, ema(values, smoothing), color=color(i), lw=1.8)
    if log and positive:
        ax.set_yscale("log")
    _axes_style(ax, key)


# The one image of a run to put in a README or an issue (--png writes it as overview.png).
OVERVIEW_KEYS = ("reward/mean", "accuracy", "completion/length_mean", "completion/truncated_fraction", "entropy",
                 "groups/zero_variance_fraction")


def overview_figure(runs: list[RunData], smoothing: float) -> Figure | None:
    import matplotlib

    keys = [k for k in OVERVIEW_KEYS if any(run.series(k)[0] for run in runs)]
    if all(run.series("accuracy") == run.series("reward/mean") for run in runs):
        keys = [k for k in keys if k != "accuracy"]  # one correctness reward alone: accuracy is the reward again
    has_time = bool(time_parts(runs[0])[0])
    if not keys:
        return None
    with matplotlib.rc_context(RC):
        fig, axes = _grid(len(keys) + has_time, width_cells=3)
        for ax, key in zip(axes, keys):
            _draw_metric(ax, key, runs, smoothing)
        if has_time:
            _draw_time(axes[-1], runs[0])
        _run_legend(fig, runs, f"faint: raw, bold: EMA {smoothing:g}", 3)
    return fig


def eval_figure(keys: list[str], runs: list[RunData]) -> Figure:
    import matplotlib

    with matplotlib.rc_context(RC):
        fig, axes = _grid(len(keys))
        points = [eval_points(run) for run in runs]
        for ax, key in zip(axes, keys):
            for i, by_key in enumerate(points):
                pts = by_key.get(key, [])
                if not pts:
                    continue
                steps = [p[0] for p in pts]
                values = [p[1] for p in pts]
                ax.plot(steps, values, "o-", color=color(i), lw=1.5, ms=3)
                with_ci = [p for p in pts if p[2] is not None]
                if with_ci:
                    ax.errorbar([p[0] for p in with_ci], [p[1] for p in with_ci], fmt="none", ecolor=color(i),
                                capsize=3, lw=1,
                                yerr=[[max(0.0, p[1] - p[2][0]) for p in with_ci],
                                      [max(0.0, p[2][1] - p[1]) for p in with_ci]])
            _axes_style(ax, key)
        _run_legend(fig, runs, "bars: 95% bootstrap interval", len(axes))
    return fig


def time_parts(run: RunData) -> tuple[list[int], dict[str, list[float]]]:
    """Steps and seconds per part; other = step total - the logged parts (never below 0), when the total is
    logged. Steps lacking a part count it as 0 (an older trainer may not log sync). A step that generated ahead
    (train.max_staleness) stacks what it waited for generation, not the generation that overlapped training."""
    steps, parts = [], {p.split("/")[1].removesuffix("_s"): [] for p in TIME_PARTS}
    parts["other"] = []
    for row in run.metrics:
        if not any(k in row for k in (*TIME_PARTS, TIME_TOTAL)):
            continue
        steps.append(row["step"])
        logged = [row.get(ON_THE_STEP.get(k, k), row.get(k, 0.0)) for k in TIME_PARTS]
        logged = [0.0 if math.isnan(v) else v for v in logged]
        for key, v in zip(TIME_PARTS, logged):
            parts[key.split("/")[1].removesuffix("_s")].append(v)
        total = row.get(TIME_TOTAL)
        parts["other"].append(max(0.0, total - sum(logged)) if total is not None and not math.isnan(total) else 0.0)
    return steps, parts


def time_figure(runs: list[RunData]) -> Figure:
    """One stacked area per run (stacks of several runs cannot overlay readably); the legend gives each part's
    share of the run's total time."""
    import matplotlib

    with matplotlib.rc_context(RC):
        fig, axes = _grid(len(runs), width_cells=2, cell_w=2 * CELL_W)
        for ax, run in zip(axes, runs):
            _draw_time(ax, run)
    return fig


def _draw_time(ax, run: RunData) -> None:
    steps, parts = time_parts(run)
    total = sum(sum(v) for v in parts.values()) or 1.0
    labels = [f"{name} {sum(v) / total:.0%}" for name, v in parts.items()]
    if steps:
        ax.stackplot(steps, *parts.values(), labels=labels, colors=[TIME_COLORS[n] for n in parts], alpha=0.85)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)  # beside, not over, the area
    _axes_style(ax, f"{run.name}: seconds per step")
    ax.set_ylabel("s")


def to_svg(fig: Figure, prefix: str) -> str:
    """Inline SVG. Ids get the panel's prefix: several SVGs in one page must not share clip-path or marker ids."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context(RC):  # svg.fonttype is read at save time: text stays text, searchable and small
        fig.savefig(buf, format="svg", metadata={"Date": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]  # drop the XML prolog and doctype: not allowed inside HTML
    svg = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}-\1"', svg)
    return re.sub(r'(url\(#|href="#)([^")]+)', rf"\g<1>{prefix}-\2", svg)


def to_png(fig: Figure, path: Path, dpi: int = 110) -> None:
    import matplotlib

    buf = io.BytesIO()
    with matplotlib.rc_context(RC):
        fig.savefig(buf, format="png", dpi=dpi)
    atomic.write_bytes(path, buf.getvalue())
