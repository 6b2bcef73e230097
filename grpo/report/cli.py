"""`grpo report RUN_DIR [RUN_DIR ...]`. Registered by grpo.cli as `app.command("report")(report_command)`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from grpo import io
from grpo.errors import UserError


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise UserError("grpo report needs matplotlib: pip install 'grpo[report]'") from exc


def make_report(run_dirs: list[str], out: str | Path | None = None, png: str | Path | None = None,
                smoothing: float = 0.8) -> tuple[Path, list[Path], list[str]]:
    """Write the page (and PNGs); returns (page path, PNG paths, notes to tell the user)."""
    if not 0 <= smoothing < 1:
        raise UserError(f"--smoothing: {smoothing} is not in [0, 1) (0: none, 0.9: heavy)")
    require_matplotlib()
    from grpo.report.figures import overview_figure, to_png
    from grpo.report.html import build
    from grpo.report.load import load_runs

    runs = load_runs(run_dirs)
    report = build(runs, smoothing)
    page = Path(out) if out else (runs[0].path / "report.html" if len(runs) == 1 else Path("report.html"))
    page.parent.mkdir(parents=True, exist_ok=True)
    io.write_text(page, report.html)  # a browser reloading the page never sees half of it
    pngs: list[Path] = []
    if png:
        png_dir = Path(png)
        png_dir.mkdir(parents=True, exist_ok=True)
        overview = overview_figure(runs, smoothing)
        figures = {**({"overview": overview} if overview is not None else {}), **report.figures}
        for name, fig in figures.items():
            to_png(fig, png_dir / f"{name}.png")
            pngs.append(png_dir / f"{name}.png")
    notes = [f"{run.name}: {note}" for run in runs for note in run.notes]
    return page, pngs, notes


def report_command(
    run_dirs: List[str] = typer.Argument(..., metavar="RUN_DIR",
                                         help="one or more run directories (output_dir of grpo train)"),
    out: Optional[str] = typer.Option(None, "--out", help="HTML file to write (default: RUN_DIR/report.html for one "
                                                          "run, ./report.html for several)"),
    png: Optional[str] = typer.Option(None, "--png", help="also write each panel as DIR/<panel>.png, and the key "
                                                          "curves in one image as DIR/overview.png"),
    smoothing: float = typer.Option(0.8, "--smoothing", help="EMA weight of the bold curves, in [0, 1)"),
):
    """Draw a run's curves, time budget, eval results and samples into one self-contained HTML page."""
    try:
        page, pngs, notes = make_report(run_dirs, out, png, smoothing)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2)
    for note in notes:
        typer.echo(f"note: {note}", err=True)
    typer.echo(f"wrote {page}" + (f" and {len(pngs)} PNGs in {pngs[0].parent}" if pngs else ""))
