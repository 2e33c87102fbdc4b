"""The tune report: the whole study (every run of it so far), best trial, Optuna's history,
slice, importance and parallel-coordinates figures, Parquet, artifacts. A multi-objective
study's figures are drawn for its first objective (the validation accuracy), and it gets
Optuna's Pareto-front figure too (``pareto_front_optuna.png``)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import task

from tasks.data.splits import DataHandle
from tasks.files import atomic_write_parquet, atomic_write_text
from tasks.reports.ensemble import ensemble_section, export_run_model
from tasks.reports.figures import budget as budget_plots
from tasks.reports.folder import (
    RunFolder,
    best_trial,
    best_trial_line,
    default_reports_dir,
    markdown_table,
    publish_artifacts,
    publish_model,
    results_table,
    trials_frame,
)
from tasks.reports.pareto import write_tradeoffs
from tasks.search.budget import (
    DEFAULT_ORDERS,
    completed_pool,
    expected_best_by_budget,
    trajectory,
)
from tasks.search.optuna_storage import IMPORTED_ATTR
from tasks.search.spending import BudgetSummary
from tasks.search.tune_space import TuneSpace
from tasks.trial.result import TrialResult, count_results


def study_results(study, imported: bool | None = None) -> list[TrialResult]:
    """Every finished (complete, pruned or failed) trial of the study, in trial order, as the
    TrialResult each one stored; ``imported``: only those a warm start added (True), only
    the study's own (False)."""
    results = []
    for trial in study.get_trials(deepcopy=False):
        if imported is not None and bool(trial.user_attrs.get(IMPORTED_ATTR)) != imported:
            continue
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
                      reports_dir: str | os.PathLike | None = None,
                      spent: BudgetSummary | None = None, imported: int = 0,
                      data: DataHandle | None = None, refit: bool = False,
                      ensemble: int | None = None) -> Path:
    """Write the tune's report folder; returns its final path. ``results``: this run's;
    ``spent``: a budgeted run's account; ``imported``: trials its warm start added now;
    ``data``: the run's data, for the study's best trial's ``model/`` folder; ``refit``: that
    model is the best trial's config retrained on train + validation; ``ensemble``: that model
    is an ensemble of that many greedy picks among the study's trials."""
    import optuna
    from optuna.visualization import matplotlib as ov

    from tasks.reports.figures import common as figures
    from tasks.reports.optuna_export import (
        dashboard_command,
        draw_study_figures,
        multi_objective,
    )
    from tasks.search.optuna_storage import quiet_optuna, storage_url

    quiet_optuna()
    url = storage_url(storage)
    study = optuna.load_study(study_name=study_name, storage=url)
    everything = study_results(study)
    imported_total = sum(bool(t.user_attrs.get(IMPORTED_ATTR)) for t in study.trials)
    frame = trials_frame(everything)
    counts = count_results(results)
    complete = frame[frame["status"] == "completed"]
    best = best_trial(frame)
    multi = multi_objective(study)
    # a multi-objective study's figures are drawn for its first value, the validation accuracy
    target = {"target": lambda t: t.values[0]} if multi else {}
    with RunFolder(reports_dir or default_reports_dir(), "tune") as run:
        out = run.path
        run.write_results(frame)
        table_text = run.write_trials_table(frame)
        figure_lines = []
        if len(complete) >= 2:
            with run.step("optimization history figure"), figures.LOCK:
                ax = ov.plot_optimization_history(study, target_name="val accuracy", **target)
                # with a target, Optuna draws no best-so-far line (it cannot tell the direction)
                ax.set_title(f"Tune '{study_name}': validation accuracy per trial"
                             + ("" if multi else ", best so far"))
                figures.save(ax.figure, out / "history.png")
                figure_lines.append("![optimization history](history.png)")
            with run.step("slice figure"), figures.LOCK:
                axes = ov.plot_slice(study, target_name="val accuracy", **target)
                fig = axes.ravel()[0].figure if hasattr(axes, "ravel") else axes.figure
                fig.set_size_inches(4 * len(space.dimensions()), 4)
                figures.save(fig, out / "slice.png")
                figure_lines.append("![accuracy per hyperparameter](slice.png)")
        with run.step("importance and parallel-coordinates figures"):
            figure_lines += draw_study_figures(study, out)
        front_text = ""
        if multi:
            with run.step("Pareto-front figure"):
                front_text = write_pareto_front_figure(study, study_name, out)
        budget_text = ""
        with run.step("best accuracy per budget"):
            budget_text = write_tune_budget(trials_frame(study_results(study, imported=False)),
                                            trials_frame(study_results(study, imported=True)),
                                            study_name, out)
        pareto_text = ""
        with run.step("accuracy against size"):
            pareto_text = write_tradeoffs(frame, out)
        model = export_run_model(run, everything, best, data, "tune", refit, ensemble)
        with run.step("report.md"):
            lines = [
                f"## Tune '{study_name}'", "",
                f"Space: {space.describe()}; {space.epochs} epochs. Sampler: {sampler}; "
                f"pruner: {pruner}. Storage: `{url}`."
                + (f" Objectives: {objectives_text(study)} (a multi-objective study)."
                   if multi else ""), "",
                f"- this run: {counts.trained} trained, {counts.cached} from the cache, "
                f"{counts.pruned} pruned, {counts.failed} failed; "
                f"{epochs_trained(results)} epochs trained",
                f"- the study: {len(complete)} complete, "
                f"{int((frame['status'] == 'pruned').sum())} pruned, "
                f"{int((frame['status'] == 'failed').sum())} failed trials"
                + (f", {imported_total} of them imported from the cache by warm starts "
                   f"({imported} by this run), never trained by the tune"
                   if imported_total else ""),
            ]
            if spent is not None:
                lines.insert(4, f"- {spent.line()}")
            if best is not None:
                lines.append(best_trial_line(best, model=model.line() if model else ""))
            lines.append(f"- explore it: `{dashboard_command(storage)}`")
            summary = "\n".join(lines) + "\n"
            figures_text = "\n\n".join(figure_lines)
            atomic_write_text(out / "report.md", f"""# Tune report

{summary}
## The search

{figures_text}
{front_text}
{budget_text}{pareto_text}
## Trials, best validation accuracy first

Pruned trials show the validation accuracy of their last epoch.

{table_text}

Files: `trials.parquet` (one row per trial of the study), `trials.txt`.
""" + ensemble_section(model))
    publish_artifacts("tune-trials", results_table(frame, sort_by="val_accuracy"), summary,
                      run.final,
                      f"Tune '{study_name}' over {space.describe()}")
    publish_model("tune", model, run.final)
    return run.final


def objectives_text(study) -> str:
    """``val_accuracy (maximize), params (minimize)``."""
    names = study.metric_names or [f"objective {i}" for i in range(len(study.directions))]
    return ", ".join(f"{name} ({direction.name.lower()})"
                     for name, direction in zip(names, study.directions, strict=True))


def write_pareto_front_figure(study, study_name: str, out: Path) -> str:
    """Optuna's own Pareto-front figure of a multi-objective study (every complete trial, the
    front in colour), as ``pareto_front_optuna.png``; returns the report's lines ("" when no
    trial is complete)."""
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ov

    from tasks.reports.figures import common as figures
    from tasks.search.tune.objectives import OBJECTIVES

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return ""
    names = study.metric_names or []
    labels = [OBJECTIVES[n].label if n in OBJECTIVES else n for n in names]
    with figures.LOCK:
        ax = ov.plot_pareto_front(study, target_names=labels or None)
        if len(names) == 2 and names[1] == "params":
            ax.set_yscale("log")
        ax.set_title(f"Tune '{study_name}': Optuna's Pareto front "
                     f"({len(study.best_trials)} trials)")
        figures.save(ax.figure, out / "pareto_front_optuna.png")
    return f"""
The study's Pareto front as Optuna keeps it ({objectives_text(study)}; \
`study.best_trials`, {len(study.best_trials)} trials; optuna-dashboard draws the same):

![Optuna's Pareto front](pareto_front_optuna.png)
"""


def write_tune_budget(own: pd.DataFrame, imported: pd.DataFrame, study_name: str,
                      out: Path) -> str:
    """The tune's real best-so-far on the cost axis, from its ``own`` trials in trial order
    (``trajectory.parquet`` / ``.txt``) and, when the study ``imported`` a pool of at least 2
    completed trials, that pool's expected best per budget (``best_by_budget.parquet`` /
    ``.txt``), drawn together in ``best_by_budget.png``; returns the report's section ("" when
    nothing can be drawn)."""
    path = trajectory(own)
    pool = completed_pool(imported) if len(imported) else imported
    if not np.isfinite(path["best_val_test"].to_numpy(dtype=np.float64)).any():
        return ""
    atomic_write_parquet(path, out / "trajectory.parquet")
    atomic_write_text(out / "trajectory.txt", markdown_table(path, floatfmt=".4f") + "\n")
    by_budget, pool_text = None, ""
    if len(pool) >= 2:
        by_budget = expected_best_by_budget(pool["val_accuracy"], pool["test_accuracy"],
                                            pool["train_seconds"])
        atomic_write_parquet(by_budget, out / "best_by_budget.parquet")
        atomic_write_text(out / "best_by_budget.txt",
                          markdown_table(by_budget, floatfmt=".4f") + "\n")
        pool_text = (f" Beside it, what random orders of the {len(pool)} trials the warm start "
                     "imported (grid cells, random and study draws, other tunes: not a "
                     "uniform sample of the space) would have found for the same minutes "
                     f"(mean and 10th-90th percentile over {DEFAULT_ORDERS} orders; "
                     "`best_by_budget.parquet`).")
    budget_plots.plot_best_by_budget(
        by_budget, out / "best_by_budget.png",
        trajectories={f"tune '{study_name}'": path},
        pool=f"random orders of the {len(pool)} imported trials" if by_budget is not None
        else "")
    spent = path["minutes"].iloc[-1]
    return f"""
## Best accuracy per minute of training

The tune's own trials in the order they ran, on the axis of the random searches' per-budget
curve: the test accuracy of the best-by-validation trial so far against the training minutes
spent ({spent:.2f} in all; a trial from the cache counts its measured time, a pruned one the
epochs it trained; `trajectory.parquet`).{pool_text}

![Best accuracy per minute of training](best_by_budget.png)
"""


@task(name="tune-report")
def write_tune_report_task(study_name: str, storage: str | None, results: list[TrialResult],
                           space: TuneSpace, sampler: str, pruner: str,
                           reports_dir: str | None = None,
                           spent: BudgetSummary | None = None, imported: int = 0,
                           data: DataHandle | None = None, refit: bool = False,
                           ensemble: int | None = None) -> str:
    """Write the tune's report folder (with the study's best trial's model/; ``refit``: its
    refit on train + validation; ``ensemble``: an ensemble of the study's trials)."""
    return str(write_tune_report(study_name, storage, results, space, sampler, pruner,
                                 reports_dir, spent, imported, data, refit, ensemble))
