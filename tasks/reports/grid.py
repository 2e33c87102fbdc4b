"""The grid-search report: results table, heatmap, best cell, Parquet, artifacts."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from prefect import task

from tasks.data.splits import DataHandle
from tasks.export.exporter import ModelExport
from tasks.files import atomic_write_text
from tasks.reports.ensemble import ensemble_section, export_run_model
from tasks.reports.figures import grid as plots
from tasks.reports.folder import (
    RunFolder,
    best_trial,
    best_trial_line,
    default_reports_dir,
    grid_lines,
    markdown_table,
    publish_artifacts,
    publish_model,
    results_table,
    trials_frame,
)
from tasks.reports.optuna_export import export_and_draw
from tasks.reports.pareto import write_tradeoffs
from tasks.search.space import SearchSpace
from tasks.trial.result import TrialResult, count_results


def heatmap_axes(space: SearchSpace) -> tuple[str, str]:
    """The two hyperparameters with the most values (dropout x units for the default)."""
    varied = sorted(space.fields(), key=lambda name: -len(getattr(space, name)))
    return varied[0], varied[1]


def write_grid_report(
    results: Sequence[TrialResult],
    space: SearchSpace,
    reports_dir: str | os.PathLike | None = None,
    wall_seconds: float | None = None,
    storage: str | None = None,
    data: DataHandle | None = None,
    refit: bool = False,
    ensemble: int | None = None,
) -> Path:
    """Write the grid run folder; returns its final path. ``storage``: the Optuna storage the
    run is exported to; ``data``: the run's data, for the best cell's ``model/`` folder;
    ``refit``: that model is the best cell's config retrained on train + validation;
    ``ensemble``: that model is an ensemble of that many greedy picks among the cells."""
    frame = trials_frame(results)
    counts = count_results(results)
    table = results_table(frame)
    best = best_trial(frame)
    row_axis, col_axis = heatmap_axes(space)
    with RunFolder(reports_dir or default_reports_dir(), "grid") as run:
        out = run.path
        run.write_results(frame)
        with run.step("results table"):
            table_text = markdown_table(table)
            atomic_write_text(out / "results.txt",
                              grid_lines(frame) + "\n\n" + table_text + "\n")
        figures = []
        for value in ("test_accuracy", "val_accuracy"):
            name = f"heatmap_{value}.png"
            with run.step(f"heatmap {name}"):
                plots.plot_grid_heatmap(
                    frame, out / name, row=row_axis, col=col_axis, value=value,
                    title=f"{value.replace('_', ' ')}: {row_axis} x {col_axis}")
            figures.append(name)
        with run.step("Optuna study and figures"):
            optuna_text = export_and_draw(run, "grid", results, space, storage)
        pareto_text = ""
        with run.step("accuracy against size"):
            pareto_text = write_tradeoffs(frame, out)
        model = export_run_model(run, results, best, data, "grid", refit, ensemble)
        with run.step("report.md"):
            summary = grid_summary(frame, best, counts, space, wall_seconds, model)
            atomic_write_text(out / "report.md",
                              grid_markdown(summary, frame, table_text, figures) + pareto_text
                              + "\n" + optuna_text + ensemble_section(model))
    publish_artifacts("grid-results", table, summary, run.final,
                      f"Grid search: {space.describe()}")
    publish_model("grid", model, run.final)
    return run.final


def grid_summary(frame: pd.DataFrame, best: pd.Series | None, counts: dict[str, int],
                 space: SearchSpace, wall_seconds: float | None,
                 model: ModelExport | None = None) -> str:
    done = frame[frame["status"] == "completed"]
    lines = [
        "## Grid search",
        "",
        f"Grid: {space.describe()}; {space.epochs} epochs, seed {space.seed}.",
        "",
        f"- {counts.trials} cells: {counts.trained} trained now, {counts.cached} from "
        f"the cache, {counts.failed} failed",
    ]
    if wall_seconds is not None:
        lines.append(f"- wall time {wall_seconds:.1f} s")
    if not done.empty:
        lines.append(f"- mean test accuracy {done['test_accuracy'].mean():.4f} "
                     f"(min {done['test_accuracy'].min():.4f}, "
                     f"max {done['test_accuracy'].max():.4f})")
    if best is not None:
        lines.append(best_trial_line(best, "cell", model.line() if model else ""))
    failed = frame[frame["status"] == "failed"]
    for row in failed.itertuples():
        lines.append(f"- FAILED: units={row.units} dropout={row.dropout:g}: {row.error}")
    return "\n".join(lines) + "\n"


def grid_markdown(summary: str, frame: pd.DataFrame, table_text: str,
                  figures: list[str]) -> str:
    images = "\n\n".join(f"![{name}]({name})" for name in figures)
    return f"""# Grid search report

{summary}
## Results, one line per cell (the exercise's printout)

```
{grid_lines(frame)}
```

## Results table

{table_text}

## Heatmaps

{images}

Files: `trials.parquet` (one row per cell, all hyperparameters and metrics), `results.txt`.
"""


@task(name="grid-report")
def write_grid_report_task(results: list[TrialResult], space: SearchSpace,
                           reports_dir: str | None = None,
                           wall_seconds: float | None = None,
                           storage: str | None = None,
                           data: DataHandle | None = None, refit: bool = False,
                           ensemble: int | None = None) -> str:
    """Write the grid report folder (trials.parquet, tables, heatmaps, the best cell's
    model/ (with ``refit``: its refit on train + validation; with ``ensemble``: an ensemble
    of the cells), report.md)."""
    return str(write_grid_report(results, space, reports_dir, wall_seconds, storage, data,
                                 refit, ensemble))
