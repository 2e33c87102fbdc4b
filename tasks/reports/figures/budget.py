"""The random-search report's "best accuracy per minute of training" figure: the expected best
accuracy found within a budget of training time (see :mod:`tasks.search.budget`)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from tasks.reports.figures import common as figures

_BUDGET_COLUMNS = (
    "budget_minutes",
    "best_val_test_mean",
    "best_val_test_p10",
    "best_val_test_p90",
    "max_test_mean",
    "max_test_p10",
    "max_test_p90",
)
_SERIES = (
    ("best_val_test", "test accuracy of the best-by-validation trial"),
    ("max_test", "max test accuracy (the notebook's number, selected on test)"),
)


@figures.locked
def plot_best_by_budget(table: pd.DataFrame | None, path: figures.PathLike,
                        notebook: dict[float, tuple[float, float]] | None = None,
                        trajectories: dict[str, pd.DataFrame] | None = None,
                        pool: str = "", measures: tuple[str, ...] = ("best_val_test",
                                                                     "max_test")) -> Path:
    """Expected best accuracy vs the training minutes spent: for each measure, the mean over
    random orders of the pool as a line and its 10th-90th percentile band, shaded.

    x is the budget in minutes of measured training time on the machine that trained the
    trials (logarithmic); budgets where no order finished a trial (NaN) are not drawn.
    ``notebook`` (``{minutes: (mean, std)}``), when given, is drawn as a reference series of
    black squares with error bars. ``trajectories``: real searches on the same axes, each a
    :func:`tasks.search.budget.trajectory` (``{label: table}``), drawn as a step line of its
    best-by-validation trial's test accuracy. ``table`` may be None when only trajectories
    are drawn; ``pool`` names the pool in the legend; ``measures``: the pool's series drawn.
    With trajectories or a named pool, the legend goes below the axes.
    """
    title = "Best accuracy per minute of training"
    paths = {label: path_ for label, path_ in (trajectories or {}).items()
             if np.isfinite(path_["best_val_test"].to_numpy(dtype=np.float64)).any()}
    if table is not None:
        figures.require_columns(table, _BUDGET_COLUMNS, "plot_best_by_budget")
        data = table.sort_values("budget_minutes")
        x = data["budget_minutes"].to_numpy(dtype=np.float64)
        if (x <= 0).any():
            raise ValueError("plot_best_by_budget: every budget must be > 0 (log-scale x axis)")
        if not np.isfinite(data["best_val_test_mean"].to_numpy(dtype=np.float64)).any():
            table = None
    if table is None and not paths:
        return figures.save(figures.message_figure("No budget finished a trial", title), path)

    below = bool(paths or pool)
    entries = (len(measures) * 2 if table is not None else 0) + len(paths)
    fig, ax = plt.subplots(figsize=(8.5, 4.8 + (0.22 * entries + 0.6 if below else 0)))
    series = [(k, name, label) for k, (name, label) in enumerate(_SERIES) if name in measures]
    for k, name, label in (series if table is not None else ()):
        label = f"{pool}: {label}" if pool else label
        colour = f"C{k}"
        mean, low, high = (data[f"{name}_{stat}"].to_numpy(dtype=np.float64)
                           for stat in ("mean", "p10", "p90"))
        ok = np.isfinite(mean)
        ax.fill_between(x[ok], low[ok], high[ok], color=colour, alpha=0.2, linewidth=0,
                        label=f"{label}: 10th-90th percentile")
        ax.plot(x[ok], mean[ok], color=colour, marker="o", markersize=3, label=f"{label}: mean")
    for k, (label, path_) in enumerate(paths.items()):
        best = path_["best_val_test"].to_numpy(dtype=np.float64)
        minutes = path_["minutes"].to_numpy(dtype=np.float64)
        ok = np.isfinite(best) & (minutes > 0)
        ax.step(minutes[ok], best[ok], where="post", color=f"C{k + 2}", linewidth=2,
                label=f"{label}: test accuracy of its best-by-validation trial so far")
    if notebook:
        minutes = np.array(sorted(notebook), dtype=np.float64)
        ax.errorbar(minutes, [notebook[m][0] for m in sorted(notebook)],
                    yerr=[notebook[m][1] for m in sorted(notebook)], linestyle="none",
                    marker="s", color="black", capsize=3, label="the notebook's printout")
    ax.set_xscale("log")
    ax.set_title(title)
    ax.set_xlabel("Training budget (minutes of measured training time on the machine that "
                  "trained the trials)", fontsize=9)
    ax.set_ylabel("Accuracy")
    ax.grid(True, which="both", alpha=0.3)
    if below:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8, frameon=False)
    else:
        ax.legend(loc="lower right", fontsize=8)
    return figures.save(fig, path)
