"""The tune report: the whole study (every run of it so far), best trial, Optuna's history,
slice, importance and parallel-coordinates figures, Parquet, artifacts."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from prefect import task

from tasks.files import atomic_write_text
from tasks.reports.folder import (
    RunFolder,
    best_trial,
    best_trial_line,
    default_reports_dir,
    publish_artifacts,
    results_table,
    trials_frame,
)
from tasks.search.tune_space import TuneSpace
from tasks.trial.result import TrialResult, count_results


def study_results(study) -> list[TrialResult]:
    """Every finished (complete, pruned or failed) trial of the study, in trial order, as the
    TrialResult each one stored."""
    results = []
    for trial in study.get_trials(deepcopy=False):
        stored = trial.user_attrs.get("result")
        if stored is not None:  # NaN was stored as None (strict JSON for the dashboard)
            history = [{k: math.nan if v is None else v for k, v in row.items()}
                       for row in stored.get("history", [])]
            results.append(TrialResult.model_validate({**stored, "history": history}))
    return results


def epochs_trained(results: Sequence[TrialResult]) -> int:
    """Epochs this run actually trained (pruned trials count the epochs they did)."""
    return sum(len(r.history) for r in results if not r.cached and r.status != "failed")


def write_tune_report(study_name: str, storage: str | None, results: Sequence[TrialResult],
                      space: TuneSpace, sampler: str, pruner: str,
                      reports_dir: str | os.PathLike | None = None) -> Path:
    """Write the tune's report folder; returns its final path. ``results``: this run's."""
    import optuna
    from optuna.visualization import matplotlib as ov

    from tasks.reports.figures import common as figures
    from tasks.reports.optuna_export import dashboard_command, draw_study_figures
    from tasks.search.optuna_storage import quiet_optuna, storage_url

    quiet_optuna()
    url = storage_url(storage)
    study = optuna.load_study(study_name=study_name, storage=url)
    everything = study_results(study)
    frame = trials_frame(everything)
    counts = count_results(results)
    complete = frame[frame["status"] == "completed"]
    best = best_trial(frame)
    with RunFolder(reports_dir or default_reports_dir(), "tune") as run:
        out = run.path
        run.write_results(frame)
        table_text = run.write_trials_table(frame)
        figure_lines = []
        if len(complete) >= 2:
            with run.step("optimization history figure"), figures.LOCK:
                ax = ov.plot_optimization_history(study, target_name="val accuracy")
                ax.set_title(f"Tune '{study_name}': validation accuracy per trial, best so far")
                figures.save(ax.figure, out / "history.png")
                figure_lines.append("![optimization history](history.png)")
            with run.step("slice figure"), figures.LOCK:
                axes = ov.plot_slice(study, target_name="val accuracy")
                fig = axes.ravel()[0].figure if hasattr(axes, "ravel") else axes.figure
                fig.set_size_inches(4 * len(space.dimensions()), 4)
                figures.save(fig, out / "slice.png")
                figure_lines.append("![accuracy per hyperparameter](slice.png)")
        with run.step("importance and parallel-coordinates figures"):
            figure_lines += draw_study_figures(study, out)
        with run.step("report.md"):
            lines = [
                f"## Tune '{study_name}'", "",
                f"Space: {space.describe()}; {space.epochs} epochs. Sampler: {sampler}; "
                f"pruner: {pruner}. Storage: `{url}`.", "",
                f"- this run: {counts.trained} trained, {counts.cached} from the cache, "
                f"{counts.pruned} pruned, {counts.failed} failed; "
                f"{epochs_trained(results)} epochs trained",
                f"- the study: {len(complete)} complete, "
                f"{int((frame['status'] == 'pruned').sum())} pruned, "
                f"{int((frame['status'] == 'failed').sum())} failed trials",
            ]
            if best is not None:
                lines.append(best_trial_line(best))
            lines.append(f"- explore it: `{dashboard_command(storage)}`")
            summary = "\n".join(lines) + "\n"
            figures_text = "\n\n".join(figure_lines)
            atomic_write_text(out / "report.md", f"""# Tune report

{summary}
## The search

{figures_text}

## Trials, best validation accuracy first

Pruned trials show the validation accuracy of their last epoch.

{table_text}

Files: `trials.parquet` (one row per trial of the study), `trials.txt`.
""")
    publish_artifacts("tune-trials", results_table(frame, sort_by="val_accuracy"), summary,
                      run.final,
                      f"Tune '{study_name}' over {space.describe()}")
    return run.final


@task(name="tune-report")
def write_tune_report_task(study_name: str, storage: str | None, results: list[TrialResult],
                           space: TuneSpace, sampler: str, pruner: str,
                           reports_dir: str | None = None) -> str:
    """Write the tune's report folder."""
    return str(write_tune_report(study_name, storage, results, space, sampler, pruner,
                                 reports_dir))
