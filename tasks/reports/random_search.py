"""The random-search report: sorted trials table, best-of-N table and "Max accuracy estimate"
plot, accuracy per hyperparameter, Parquet, artifacts."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from prefect import task

from tasks.data.splits import DataHandle
from tasks.export.exporter import ModelExport
from tasks.files import atomic_write_parquet, atomic_write_text
from tasks.reports.ensemble import ensemble_section, export_run_model
from tasks.reports.figures import budget as budget_plots
from tasks.reports.figures import random_search as plots
from tasks.reports.folder import (
    RunFolder,
    best_trial,
    best_trial_line,
    default_reports_dir,
    markdown_table,
    publish_artifacts,
    publish_model,
    publish_table,
    results_table,
    trials_frame,
)
from tasks.reports.optuna_export import export_and_draw
from tasks.reports.pareto import write_tradeoffs
from tasks.search.best_of_n import NOTEBOOK_BEST_OF_N, StudyPlan, best_of_n_table
from tasks.search.budget import DEFAULT_ORDERS, completed_pool, expected_best_by_budget
from tasks.search.space import DEFAULT_RANDOM_SPACE, SearchSpace
from tasks.search.spending import BudgetSummary
from tasks.trial.result import TrialResult, count_results


def write_random_report(
    results: Sequence[TrialResult],
    space: SearchSpace,
    plan: StudyPlan | None = None,
    draws: Sequence[tuple[int, int, list[str]]] | None = None,
    reports_dir: str | os.PathLike | None = None,
    requested: int | None = None,
    storage: str | None = None,
    spent: BudgetSummary | None = None,
    dataset: str = "MNIST",
    data: DataHandle | None = None,
    refit: bool = False,
    ensemble: int | None = None,
) -> Path:
    """Write the random-search run folder; returns its final path. ``draws`` are the study's
    draws as ``(N, repeat, trial keys)``; ``requested`` is the number of trainings the search
    asked for before caching and de-duplication; ``storage``: the Optuna storage the run is
    exported to; ``spent``: the account of a budgeted search; ``data``: the run's data, for
    the best trial's ``model/`` folder; ``refit``: that model is the best trial's config
    retrained on train + validation; ``ensemble``: that model is an ensemble of that many
    greedy picks among the trials.

    ``trials.parquet`` is written first; the best-of-N table and every figure after it, each
    as a named step (a failure there keeps the results, see :class:`RunFolder`)."""
    frame = trials_frame(results).drop_duplicates("trial_key").reset_index(drop=True)
    counts = count_results(results)
    table = results_table(frame, sort_by="val_accuracy")
    best = best_trial(frame)
    with RunFolder(reports_dir or default_reports_dir(), "random") as run:
        out = run.path
        run.write_results(frame)
        table_text = run.write_trials_table(frame)
        with run.step("accuracy per hyperparameter figure"):
            plots.plot_accuracy_vs_hyperparameters(frame, out / "hyperparameters.png",
                                                   space.fields(), value="val_accuracy")
        study_text = ""
        best_of_n = None
        if plan is not None and draws:
            with run.step("best-of-N table"):
                best_of_n = best_of_n_table(plan, {(n, r): keys for n, r, keys in draws},
                                            trials_frame(results))
        if best_of_n is not None and not best_of_n.empty:
            with run.step("best-of-N file"):
                atomic_write_parquet(best_of_n, out / "best_of_n.parquet")
                shown = best_of_n.assign(samples=best_of_n["samples"].map(
                    lambda v: f"{v:.3g}" if v >= 1e6 else f"{v:.0f}"))  # C(400, 200): 1e119
                study_text = markdown_table(shown, floatfmt=".4f")
                atomic_write_text(out / "best_of_n.txt", study_text + "\n")
            with run.step("best-of-N figure"):
                plots.plot_best_of_n(best_of_n, out / "best_of_n.png",
                                     reference=notebook_reference(space, dataset))
        with run.step("Optuna study and figures"):
            optuna_text = export_and_draw(run, "study" if plan else "random", results, space,
                                          storage)
        budget_text = ""
        with run.step("best accuracy per budget"):
            budget_text = write_best_by_budget(frame, out)
        pareto_text = ""
        with run.step("accuracy against size"):
            pareto_text = write_tradeoffs(frame, out)
        model = export_run_model(run, results, best, data, "study" if plan else "random search",
                                 refit, ensemble)
        with run.step("report.md"):
            summary = random_summary(frame, best, counts, space, plan, best_of_n, requested,
                                     spent, model)
            atomic_write_text(out / "report.md",
                              random_markdown(summary, table_text, study_text, plan,
                                              budget_text + pareto_text) + "\n"
                              + optuna_text + ensemble_section(model))
    publish_artifacts("random-trials", table, summary, run.final,
                      f"Random search over {space.describe()}")
    publish_model("random", model, run.final)
    if best_of_n is not None and not best_of_n.empty:
        publish_table("best-of-n", best_of_n, "Best accuracy found among N random trials")
    return run.final


def write_best_by_budget(frame: pd.DataFrame, out: Path) -> str:
    """``best_by_budget.parquet``, ``.txt`` and ``.png`` from the completed trials with a
    training time (at least 2 of them); returns the report's Markdown section, or "" when the
    pool is too small."""
    pool = completed_pool(frame)
    if len(pool) < 2:
        return ""
    by_budget = expected_best_by_budget(pool["val_accuracy"], pool["test_accuracy"],
                                        pool["train_seconds"])
    atomic_write_parquet(by_budget, out / "best_by_budget.parquet")
    text = markdown_table(by_budget, floatfmt=".4f")
    atomic_write_text(out / "best_by_budget.txt", text + "\n")
    budget_plots.plot_best_by_budget(by_budget, out / "best_by_budget.png")
    return f"""
## Best accuracy per minute of training

The expected best accuracy found for a budget of training minutes on the machine that trained
these trials: the pool's {len(pool)} completed trials are spent in a random order, one after
another while their measured training time fits in the budget; the table gives the mean, the
standard deviation and the 10th / 90th percentiles over {DEFAULT_ORDERS} random orders of the
best-by-validation trial's test accuracy (`best_val_test_*`) and of the max test accuracy
(`max_test_*`), and the trials finished on average (`trials_mean`).

![Best accuracy per minute of training](best_by_budget.png)

{text}
"""


def notebook_reference(space: SearchSpace,
                       dataset: str = "MNIST") -> dict[int, tuple[float, float]] | None:
    """The notebook's printed best-of-N, where the study searched the notebook's space (its
    values and epochs; any training seed) on the notebook's data, MNIST."""
    ignore = {"seed"}
    if dataset == "MNIST" and \
            space.model_dump(exclude=ignore) == DEFAULT_RANDOM_SPACE.model_dump(exclude=ignore):
        return NOTEBOOK_BEST_OF_N
    return None


def random_summary(frame: pd.DataFrame, best: pd.Series | None, counts: dict[str, int],
                   space: SearchSpace, plan: StudyPlan | None, best_of_n: pd.DataFrame | None,
                   requested: int | None, spent: BudgetSummary | None = None,
                   model: ModelExport | None = None) -> str:
    lines = ["## Random search", "",
             f"Space: {space.describe()} ({space.size} configurations); {space.epochs} epochs.",
             ""]
    if spent is not None:
        lines.append(f"- {spent.line()}")
    if requested is not None:
        lines.append(f"- trainings asked for: {requested}; distinct configurations: "
                     f"{counts.trials}")
    lines.append(f"- {counts.trained} trained now, {counts.cached} from the cache, "
                 f"{counts.failed} failed")
    if best is not None:
        lines.append(best_trial_line(best, model=model.line() if model else ""))
        done = frame[frame["status"] == "completed"]
        lines.append(f"- max test accuracy over all trials (the exercise's number, selected on "
                     f"the test set): {done['test_accuracy'].max():.4f}")
    if plan is not None and best_of_n is not None and not best_of_n.empty:
        lines.append(f"- best-of-N study: protocol `{plan.protocol}`, N in "
                     f"{plan.n_values}" + (f", {plan.repeats} repeats"
                                           if plan.protocol == "repeats" else ""))
    return "\n".join(lines) + "\n"


def random_markdown(summary: str, table_text: str, study_text: str,
                    plan: StudyPlan | None, budget_text: str = "") -> str:
    study = ""
    if study_text:
        how = (
            "one pool of random trials; for each N, the exact mean and standard deviation over "
            "all size-N subsets of the pool (a random-experiment efficiency curve)"
            if plan and plan.protocol == "pool"
            else "independent draws of N trials per repeat, as in the exercise"
        )
        study = f"""## Best of N ("Max accuracy estimate")

How the best accuracy found grows with the number N of random trials, estimated from {how}.
`val_selected_test_*` is the test accuracy of the trial with the best **validation**
accuracy (honest selection); `max_test_*` is the exercise's number, the maximum **test**
accuracy, which selects on the test set and is optimistic.

{study_text}

![Max accuracy estimate](best_of_n.png)
"""
    return f"""# Random search report

{summary}
{study}{budget_text}
## What mattered

![accuracy per hyperparameter](hyperparameters.png)

## Trials, best validation accuracy first

{table_text}

Files: `trials.parquet` (one row per trial), `best_of_n.parquet` (if a study ran),
`trials.txt`.
"""


@task(name="random-report")
def write_random_report_task(results: list[TrialResult], space: SearchSpace,
                             plan: StudyPlan | None = None,
                             draws: list[tuple[int, int, list[str]]] | None = None,
                             reports_dir: str | None = None,
                             requested: int | None = None,
                             storage: str | None = None,
                             spent: BudgetSummary | None = None,
                             dataset: str = "MNIST",
                             data: DataHandle | None = None,
                             refit: bool = False, ensemble: int | None = None) -> str:
    """Write the random-search report folder (``dataset``: the data's name: the notebook's
    own best-of-N points are drawn beside the study's on MNIST only; ``data``: the run's
    data, for the best trial's model/; ``refit``: that model refitted on train +
    validation; ``ensemble``: an ensemble of that many picks instead)."""
    return str(write_random_report(results, space, plan, draws, reports_dir, requested,
                                   storage, spent, dataset, data, refit, ensemble))
