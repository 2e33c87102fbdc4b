"""Every run in one Optuna storage, for optuna-dashboard and Optuna's own figures.

A tune (``flows/tune.py``) *is* an Optuna study in that storage. A grid, random search or
best-of-N study is exported to it after its report: one study per run (named like its report
folder), one trial per distinct config, with its parameters, validation accuracy, state,
per-epoch validation accuracy and training time, and the test accuracy and trial key as
attributes. Then::

    optuna-dashboard sqlite:///data/optuna.db

shows the history, parallel coordinates and parameter importance of any of them. Each report
also gets the parameter-importance figure, drawn by Optuna, and a parallel-coordinates figure
drawn here (:func:`parallel_coordinates_figure`: the best 10 % of the trials in colour over
the rest in grey, which stays readable at the 400 trials of a best-of-N study).

Numeric hyperparameters are exported as numeric distributions (:func:`export_distribution`),
not as categorical ones: the dashboard merges the choices of categorical distributions into
its search space without a numeric order (a study's batch sizes came out as 256, 32, 64, 128,
16), while an ``IntDistribution`` or ``FloatDistribution`` is one ordered axis, on a log scale
where the values are spread over powers.

Runs exporting at the same moment (and tunes starting) share the storage's lock
(:func:`tasks.search.optuna_storage.storage_lock`), and an export that still finds the SQLite
file locked is retried whole (it replaces its study, so it can start again).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tasks.search.optuna_bulk import add_trials
from tasks.search.optuna_storage import (
    OBJECTIVE,
    frozen_trial,
    open_storage,
    quiet_optuna,
    retry_when_locked,
    storage_lock,
    storage_url,
)
from tasks.search.space import SEARCH_FIELDS, shown_fields
from tasks.trial.result import TrialResult

#: Fewest finished trials for the importance and parallel-coordinates figures.
MIN_TRIALS_FOR_FIGURES = 4
#: An integer hyperparameter is exported on a log scale when its largest value is at least
#: this many times its smallest (units 16..256, batch sizes 16..256; not units 12, 24).
INT_LOG_RATIO = 4
#: The same for a float hyperparameter (learning rates 1e-5..1e-1; never dropout, which
#: includes 0).
FLOAT_LOG_RATIO = 10
#: The share of the finished trials the parallel-coordinates figure draws in colour.
TOP_SHARE = 0.10


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def export_distribution(values: Sequence[Any]):
    """The Optuna distribution a run exports for one hyperparameter that took ``values``.

    Numbers get a numeric distribution from their smallest to their largest value, so that
    optuna-dashboard and Optuna's figures put them on one axis in numeric order:

    * integers (units, batch size): ``IntDistribution(min, max)``, on a log scale when every
      value is positive and the largest is at least :data:`INT_LOG_RATIO` times the smallest;
    * other numbers (learning rate, dropout): ``FloatDistribution(min, max)``, on a log scale
      when every value is positive and they span at least :data:`FLOAT_LOG_RATIO`;
    * a single value: the one-value range ``low == high`` (linear).

    Anything else (activation names) stays a ``CategoricalDistribution`` of the values, in
    their order, repeats dropped.
    """
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    distinct = list(dict.fromkeys(values))
    if not distinct:
        raise ValueError("no values to export a distribution of")
    if not all(_is_number(v) for v in distinct):
        return CategoricalDistribution(distinct)
    low, high = min(distinct), max(distinct)
    if all(isinstance(v, numbers.Integral) for v in distinct):
        log = low >= 1 and high >= INT_LOG_RATIO * low
        return IntDistribution(int(low), int(high), log=log)
    log = low > 0 and high >= FLOAT_LOG_RATIO * low
    return FloatDistribution(float(low), float(high), log=log)


def export_run(name: str, results: Sequence[TrialResult], values: dict[str, list],
               storage: str | None = None, attrs: dict[str, Any] | None = None):
    """Write a finished run as the Optuna study ``name`` (replaced if it exists): one trial
    per distinct config; ``values``: each searched hyperparameter's values (with those its
    trials took, the range of its :func:`export_distribution`). Returns the study."""
    import optuna

    quiet_optuna()
    url = storage_url(storage)
    distinct = list({r.trial_key: r for r in results}.values())
    taken = {field: [*values[field], *(getattr(r.config, field) for r in distinct)]
             for field in SEARCH_FIELDS if field in values}
    # a quiet field left at its default (one hidden layer) is no parameter of the study
    distributions = {field: export_distribution(taken[field]) for field in shown_fields(taken)}

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
            add_trials(study, [frozen_trial(i, r, distributions) for i, r in enumerate(distinct)])
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


def multi_objective(study) -> bool:
    """Whether the study has several objectives (its first one the validation accuracy)."""
    return len(study.directions) > 1


def first_value(trial) -> float | None:
    """A trial's value, or its first one (the validation accuracy) in a multi-objective
    study."""
    return None if trial.values is None else trial.values[0]


def draw_study_figures(study, folder: Path) -> list[str]:
    """Optuna's parameter-importance figure and our parallel coordinates
    (:func:`parallel_coordinates_figure`) into ``folder``; returns report.md lines (a sentence
    instead of a figure when there is too little to draw). In a multi-objective study both are
    drawn for the first objective, the validation accuracy."""
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
            # PED-ANOVA takes a target as lower-is-better: the accuracy negated
            target = ({"target": lambda t: -t.values[0], "target_name": "val accuracy"}
                      if multi_objective(study) else {})
            ax = ov.plot_param_importances(study, evaluator=PedAnovaImportanceEvaluator(),
                                           params=params, **target)
            ax.set_title("", loc="left")  # Optuna's own, replaced by ours
            ax.set_title("Parameter importance for validation accuracy (PED-ANOVA)")
            ax.figure.set_size_inches(8, 1.2 + 0.6 * len(params))
            figures.save(ax.figure, folder / "param_importance.png")
            lines.append("![parameter importance](param_importance.png)")
        fig = parallel_coordinates_figure(study, params)
        figures.save(fig, folder / "parallel_coordinates.png")
        lines.append("![parallel coordinates](parallel_coordinates.png)")
    return lines


# --------------------------------------------------------------------------------------------
# Parallel coordinates
# --------------------------------------------------------------------------------------------
#: The colour of the trials outside the best :data:`TOP_SHARE` (their opacity falls with
#: their number, so that where many take the same path it is darker).
REST_COLOUR = "#8c8c8c"
#: The colour map of the best trials: plasma without its palest yellow, reversed (darkest:
#: the best).
TOP_CMAP_RANGE = (0.0, 0.8)
#: Accuracies labelled on the objective axis when it is drawn as an error rate.
ACCURACY_MARKS = (0.0, 0.5, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999)
#: A numeric axis with at most this many distinct values labels each of them.
MAX_LABELLED_VALUES = 8


def _shown(value: Any, digits: int = 6) -> str:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(int(value))
    return f"{value:.{digits}g}" if _is_number(value) else str(value)


def parallel_axis(values: Sequence[Any], distributions: Sequence[Any]):
    """One vertical axis of the parallel coordinates, for a parameter that took ``values``
    (one per trial) under ``distributions`` (the trials' distributions of it, repeats
    dropped): each trial's position in [0, 1], the tick labels as (position, text), and
    whether it is on a log scale.

    Numbers are placed by value from the smallest (bottom) to the largest (top), on a log
    scale when their distributions are (a numeric categorical one: when
    :func:`export_distribution` would choose it); other values are spread evenly in their
    distribution's order of choices.
    """
    import numpy as np
    from matplotlib.ticker import LogLocator, MaxNLocator
    from optuna.distributions import CategoricalDistribution

    distinct = list(dict.fromkeys(values))
    if not all(_is_number(v) for v in distinct):
        order = [c for d in distributions if isinstance(d, CategoricalDistribution)
                 for c in d.choices]
        order = [c for c in dict.fromkeys([*order, *distinct]) if c in distinct]
        step = 1 / (len(order) - 1) if len(order) > 1 else 0.0
        where = {c: (i * step if len(order) > 1 else 0.5) for i, c in enumerate(order)}
        return (np.array([where[v] for v in values]), [(where[c], _shown(c)) for c in order],
                False)
    if any(isinstance(d, CategoricalDistribution) for d in distributions) or not distributions:
        log = bool(getattr(export_distribution(distinct), "log", False))
    else:
        log = all(d.log for d in distributions)
    scale = np.log10 if log else np.asarray
    low, high = float(min(distinct)), float(max(distinct))
    span = float(scale(high) - scale(low))

    def at(v):
        return (scale(np.asarray(v, dtype=float)) - scale(low)) / span if span else \
            np.full(np.shape(v), 0.5)

    if len(distinct) <= MAX_LABELLED_VALUES:
        marks = sorted(distinct)
    else:
        locator = LogLocator(numticks=6) if log else MaxNLocator(5)
        marks = [t for t in locator.tick_values(low, high) if low <= t <= high]
        if isinstance(distinct[0], numbers.Integral):
            marks = sorted({int(round(t)) for t in marks})
        # the ends too (the range the trials took), where they do not crowd a round value
        marks += [end for end in (min(distinct), max(distinct))
                  if all(abs(float(at(end)) - float(at(m))) > 0.06 for m in marks)]
        return at(values), [(float(at(m)), _shown(m, 3)) for m in sorted(marks)], log
    return at(values), [(float(at(m)), _shown(m)) for m in marks], log


def objective_axis(values: Sequence[float], maximize: bool):
    """The objective's axis, as :func:`parallel_axis` returns it. An accuracy (maximized, every
    value in [0, 1)) is placed by its error rate on a log scale, ``-log10(1 - accuracy)``: on a
    linear axis the diverged trials (0.1) squeeze the best ones (0.96 to 0.98) into its top
    few pixels; on this one 0.9, 0.99 and 0.999 are equally far apart. Labelled in accuracy.
    Anything else: a linear axis."""
    import numpy as np

    if not (maximize and all(0.0 <= v < 1.0 for v in values)) or len(set(values)) < 2:
        return parallel_axis(list(values), [])
    errors = -np.log10(1.0 - np.asarray(values, dtype=float))
    low, high = errors.min(), errors.max()

    def at(accuracy):
        return (-np.log10(1.0 - np.asarray(accuracy, dtype=float)) - low) / (high - low)

    marks = [a for a in ACCURACY_MARKS if min(values) <= a <= max(values)]
    # the ends too, where they do not crowd a round value
    marks += [end for end in (min(values), max(values))
              if all(abs(float(at(end)) - float(at(a))) > 0.06 for a in marks)]
    return at(values), [(float(at(a)), f"{a:.4g}") for a in sorted(marks)], True


def parallel_coordinates_figure(study, params: Sequence[str], target_name: str = "val accuracy"):
    """The parallel coordinates of the study's finished trials over ``params``, as a Figure.

    The first axis is the objective, then one per parameter (numbers in numeric order, log
    axes for log distributions: :func:`parallel_axis`). The best :data:`TOP_SHARE` of the
    trials (by the study's direction) are drawn in colour, the best on top, over faint grey
    lines for the rest: at 400 trials a line per trial coloured by its value is a tangle, the
    grey ones show where the trials went and the coloured ones what the best have in common.
    """
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.collections import LineCollection
    from matplotlib.colors import ListedColormap, Normalize
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    # a multi-objective study's trials by their first value (the validation accuracy)
    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if first_value(t) is not None and math.isfinite(first_value(t))
              and all(p in t.params for p in params)]
    if not trials:
        from tasks.reports.figures.common import message_figure

        return message_figure(f"No finished trial has all of {', '.join(params)}.",
                              title="Parallel coordinates")
    maximize = study.directions[0] == StudyDirection.MAXIMIZE
    trials.sort(key=first_value, reverse=maximize)  # best first
    n = len(trials)
    top = max(1, math.ceil(TOP_SHARE * n))
    names = [target_name, *params]
    axes = [objective_axis([first_value(t) for t in trials], maximize)]
    axes += [parallel_axis([t.params[p] for t in trials],
                           list(dict.fromkeys(t.distributions[p] for t in trials)))
             for p in params]
    ys = np.column_stack([a[0] for a in axes])
    xs = np.arange(len(axes), dtype=float)
    lines = np.stack([np.column_stack([xs, y]) for y in ys])
    values = np.array([first_value(t) for t in trials])

    with plt.style.context("default"):  # Optuna's figures switch pyplot to ggplot
        fig, ax = plt.subplots(figsize=(2.0 + 2.1 * len(axes), 6.0))
        ax.add_collection(LineCollection(lines[top:], colors=REST_COLOUR,
                                         alpha=min(0.5, max(0.06, 2.5 / math.sqrt(n))),
                                         linewidths=0.8, zorder=1, gid="rest",
                                         label="the rest"))
        cmap = ListedColormap(plt.get_cmap("plasma")(np.linspace(*TOP_CMAP_RANGE, 256))[::-1])
        best_values = values[:top]
        norm = Normalize(best_values.min(), best_values.max())
        if norm.vmin == norm.vmax:
            norm = Normalize(norm.vmin - 1e-9, norm.vmax + 1e-9)
        best = LineCollection(lines[:top][::-1], cmap=cmap, norm=norm, linewidths=1.6,
                              alpha=0.9, zorder=3, gid="best", label="the best")
        best.set_array(best_values[::-1])  # the best drawn last, on top
        ax.add_collection(best)
        for x, (_, ticks, _) in zip(xs, axes, strict=True):
            ax.plot([x, x], [0, 1], color="#333333", linewidth=1.0, zorder=4)
            side = -1 if x == 0 else 1  # the objective's labels left of it, clear of the lines
            for position, text in ticks:
                ax.plot([x - 0.03 * side, x], [position, position], color="#333333",
                        linewidth=1.0, zorder=4)
                ax.text(x + 0.05 * side, position, text, fontsize=8.5, va="center",
                        ha="left" if side > 0 else "right", zorder=5,
                        bbox={"boxstyle": "round,pad=0.15", "facecolor": "white",
                              "edgecolor": "none", "alpha": 0.8})
        labels = [f"{name}\n(log scale)" if log else name
                  for name, (_, _, log) in zip(names, axes, strict=True)]
        if axes[0][2]:
            labels[0] = f"{target_name}\n(log scale of the error)"
        ax.set_xticks(xs, labels)
        ax.tick_params(axis="x", length=0, labelsize=10, pad=8)
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_xlim(-0.45, xs[-1] + 0.5)
        ax.set_ylim(-0.03, 1.03)
        colorbar = fig.colorbar(best, ax=ax, fraction=0.03, pad=0.02)
        colorbar.set_label(f"{target_name}, best {top}")
        threshold = f"{target_name} {'≥' if maximize else '≤'} {values[top - 1]:.4g}"
        ax.set_title(f"Parallel coordinates of {n} finished trials: the best {top} "
                     f"({TOP_SHARE:.0%}, {threshold}) in colour, darkest the best;\n"
                     f"the other {n - top} in grey",
                     fontsize=11, pad=12)
    return fig


def export_and_draw(run, kind: str, results: Sequence[TrialResult], space,
                    storage: str | None = None) -> str:
    """A report step for a grid or random run: export it as the study named like its report
    folder (``run``: a :class:`tasks.reports.folder.RunFolder`), draw its figures into the folder;
    returns the report's markdown section."""
    study = export_run(run.final.name, results, {f: getattr(space, f) for f in space.fields()},
                       storage, attrs={"kind": kind, "report": str(run.final)})
    lines = draw_study_figures(study, run.path)
    return "\n\n".join([
        "## In Optuna's terms",
        f"This run is the study `{run.final.name}` in `{storage_url(storage)}`; explore it "
        f"with `{dashboard_command(storage)}`.", *lines]) + "\n"


def dashboard_command(storage: str | None = None) -> str:
    return f"optuna-dashboard {storage_url(storage)}"
