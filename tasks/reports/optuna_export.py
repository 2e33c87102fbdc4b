"""Every run in one Optuna storage, for optuna-dashboard and Optuna's own figures.

A tune (``flows/tune.py``) *is* an Optuna study in that storage. A grid, random search or
best-of-N study is exported to it after its report: one study per run (named like its report
folder), one trial per distinct config, with its parameters, validation accuracy, state,
per-epoch validation accuracy and training time, and the test accuracy and trial key as
attributes. Then::

    optuna-dashboard sqlite:///data/optuna.db

shows the history, parallel coordinates and parameter importance of any of them. Each report
also gets the parameter-importance and parallel-coordinates figures, drawn by Optuna.

Runs exporting at the same moment (and tunes starting) share the storage's lock
(:func:`tasks.search.optuna_storage.storage_lock`), and an export that still finds the SQLite
file locked is retried whole (it replaces its study, so it can start again).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tasks.search.optuna_storage import (
    OBJECTIVE,
    frozen_trial,
    open_storage,
    quiet_optuna,
    retry_when_locked,
    storage_lock,
    storage_url,
)
from tasks.search.space import SEARCH_FIELDS
from tasks.trial.result import TrialResult

#: Fewest finished trials for the importance and parallel-coordinates figures.
MIN_TRIALS_FOR_FIGURES = 4


def export_run(name: str, results: Sequence[TrialResult], values: dict[str, list],
               storage: str | None = None, attrs: dict[str, Any] | None = None):
    """Write a finished run as the Optuna study ``name`` (replaced if it exists): one trial
    per distinct config; ``values``: each searched hyperparameter's values (its categorical
    distribution). Returns the study."""
    import optuna
    from optuna.distributions import CategoricalDistribution

    quiet_optuna()
    url = storage_url(storage)
    distributions = {field: CategoricalDistribution(values[field]) for field in SEARCH_FIELDS
                     if field in values}
    distinct = list({r.trial_key: r for r in results}.values())

    def replace():
        # under the storage's lock: a new storage is created once, and runs exporting at the
        # same moment replace their studies one after the other
        with storage_lock(url):
            opened = open_storage(url)
            try:
                optuna.delete_study(study_name=name, storage=opened)
            except KeyError:
                pass
            study = optuna.create_study(study_name=name, storage=opened, direction="maximize")
            study.set_metric_names([OBJECTIVE])
            study.add_trials([frozen_trial(i, r, distributions) for i, r in enumerate(distinct)])
            for key, value in (attrs or {}).items():
                study.set_user_attr(key, value)
            return study

    return retry_when_locked(replace)  # a tune's write may still hold the file a moment


def varying(study) -> list[str]:
    """Parameters that take more than one value among the study's finished trials."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    names = {name for t in trials for name in t.params}
    return sorted(n for n in names if len({t.params.get(n) for t in trials}) > 1)


def draw_study_figures(study, folder: Path) -> list[str]:
    """Optuna's parameter-importance and parallel-coordinates figures into ``folder``; returns
    report.md lines (a sentence instead of a figure when there is too little to draw)."""
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ov

    from tasks.reports.figures import common as figures

    quiet_optuna()
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    params = varying(study)
    if len(complete) < MIN_TRIALS_FOR_FIGURES or not params:
        return [f"(Parameter importance and parallel coordinates need at least "
                f"{MIN_TRIALS_FOR_FIGURES} finished trials and a parameter that varies: "
                f"{len(complete)} finished, {len(params)} varying.)"]
    lines = []
    with figures.LOCK:
        if len(params) >= 2:
            ax = ov.plot_param_importances(study, evaluator=PedAnovaImportanceEvaluator(),
                                           params=params)
            ax.set_title("", loc="left")  # Optuna's own, replaced by ours
            ax.set_title("Parameter importance for validation accuracy (PED-ANOVA)")
            ax.figure.set_size_inches(8, 1.2 + 0.6 * len(params))
            figures.save(ax.figure, folder / "param_importance.png")
            lines.append("![parameter importance](param_importance.png)")
        ax = ov.plot_parallel_coordinate(study, params=params, target_name="val accuracy")
        ax.set_title("Parallel coordinates: every finished trial, coloured by validation "
                     "accuracy", y=1.03)
        ax.figure.set_size_inches(4 + 2.2 * len(params), 6.5)
        figures.save(ax.figure, folder / "parallel_coordinates.png")
        lines.append("![parallel coordinates](parallel_coordinates.png)")
    return lines


def export_and_draw(run, kind: str, results: Sequence[TrialResult], space,
                    storage: str | None = None) -> str:
    """A report step for a grid or random run: export it as the study named like its report
    folder (``run``: a :class:`tasks.reports.folder.RunFolder`), draw its figures into the folder;
    returns the report's markdown section."""
    study = export_run(run.final.name, results, {f: getattr(space, f) for f in SEARCH_FIELDS},
                       storage, attrs={"kind": kind, "report": str(run.final)})
    lines = draw_study_figures(study, run.path)
    return "\n\n".join([
        "## In Optuna's terms",
        f"This run is the study `{run.final.name}` in `{storage_url(storage)}`; explore it "
        f"with `{dashboard_command(storage)}`.", *lines]) + "\n"


def dashboard_command(storage: str | None = None) -> str:
    return f"optuna-dashboard {storage_url(storage)}"
