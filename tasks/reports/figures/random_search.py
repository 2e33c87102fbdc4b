"""The random-search report's figures: the best-of-N "Max accuracy estimate" and the
accuracy per hyperparameter."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import NullLocator

from tasks.reports.figures import common as figures

# --------------------------------------------------------------------------------------------
# Best-of-N estimate
# --------------------------------------------------------------------------------------------
_BEST_OF_N_COLUMNS = (
    "n",
    "val_selected_test_mean",
    "val_selected_test_std",
    "max_test_mean",
    "max_test_std",
)


@figures.locked
def plot_best_of_n(df: pd.DataFrame, path: figures.PathLike,
                   reference: dict[int, tuple[float, float]] | None = None,
                   reference_label: str = "the notebook's printout (max test accuracy)") -> Path:
    """Accuracy of "the best of N random trials" vs N, mean ± std over repetitions.

    Two series: the test accuracy of the trial picked by validation accuracy (honest), and the
    maximum test accuracy (the notebook's number, picked on the test set, optimistic). The second
    series is shifted right by 4% so the error bars do not overlap; x is logarithmic.
    ``reference`` (``{N: (mean, std)}``, e.g. the notebook's own printout) is drawn as a third
    series, shifted left by 4%.
    """
    figures.require_columns(df, _BEST_OF_N_COLUMNS, "plot_best_of_n")
    data = df.sort_values("n")
    n = data["n"].to_numpy(dtype=np.float64)
    if (n <= 0).any():
        raise ValueError("plot_best_of_n: every n must be > 0 (log-scale x axis)")

    def col(name: str) -> np.ndarray:
        return data[name].to_numpy(dtype=np.float64)

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ax.errorbar(
        n,
        col("val_selected_test_mean"),
        yerr=np.nan_to_num(col("val_selected_test_std")),
        linestyle="none",
        marker="o",
        capsize=3,
        label="test accuracy of the best-by-validation trial",
    )
    ax.errorbar(
        n * 1.04,
        col("max_test_mean"),
        yerr=np.nan_to_num(col("max_test_std")),
        linestyle="none",
        marker="o",
        capsize=3,
        label="max test accuracy (the notebook's number, selected on test)",
    )
    if reference:
        ref_n = np.array(sorted(reference), dtype=np.float64)
        ax.errorbar(
            ref_n / 1.04,
            np.array([reference[int(k)][0] for k in ref_n], dtype=np.float64),
            yerr=np.array([reference[int(k)][1] for k in ref_n], dtype=np.float64),
            linestyle="none",
            marker="s",
            color="black",
            capsize=3,
            label=reference_label,
        )
        n = np.concatenate([n, ref_n])
    ax.set_xscale("log")
    ticks = np.unique(n)
    ax.set_xticks(ticks, [figures.format_value(v) for v in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    if len(ticks):
        ax.set_xlim(ticks.min() / 1.25, ticks.max() * 1.3)
    ax.set_title("Max accuracy estimate")
    ax.set_xlabel("N (random trials)")
    ax.set_ylabel("Accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    return figures.save(fig, path)


# --------------------------------------------------------------------------------------------
# Accuracy per hyperparameter
# --------------------------------------------------------------------------------------------
@figures.locked
def plot_accuracy_vs_hyperparameters(
    df: pd.DataFrame, path: figures.PathLike, params: list[str], value: str = "val_accuracy"
) -> Path:
    """One panel per hyperparameter: every trial's ``value`` per distinct parameter value.

    Parameter values are categories (sorted; numbers written with ``:g``); trials are jittered
    horizontally (deterministically) and the per-category mean is drawn in black. Trials with a
    NaN ``value`` are skipped. Panels wrap at 3 per row and share the y axis.
    """
    params = list(params)
    if not params:
        raise ValueError("plot_accuracy_vs_hyperparameters: params is empty")
    figures.require_columns(df, [*params, value], "plot_accuracy_vs_hyperparameters")
    title = f"What mattered: {value} per hyperparameter"
    data = df.copy()
    data[value] = pd.to_numeric(data[value], errors="coerce")
    data = data[np.isfinite(data[value].to_numpy(dtype=np.float64))]
    if data.empty:
        return figures.save(figures.message_figure("No completed trials", title), path)

    n_cols = min(len(params), 3)
    n_rows = math.ceil(len(params) / n_cols)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(4.2 * n_cols, 3.6 * n_rows + 0.6), sharey=True, squeeze=False
    )
    rng = np.random.default_rng(0)
    for k, ax in enumerate(axes.ravel()):
        if k >= len(params):
            ax.axis("off")
            continue
        param = params[k]
        subset = data[data[param].notna()]
        categories = figures.sorted_unique(subset[param])
        position = {c: i for i, c in enumerate(categories)}
        x = subset[param].map(position).to_numpy(dtype=np.float64)
        y = subset[value].to_numpy(dtype=np.float64)
        jitter = rng.uniform(-0.15, 0.15, size=len(x))
        ax.scatter(x + jitter, y, s=18, alpha=0.6, color="C0", label="trial", zorder=2)
        means = [float(subset.loc[subset[param] == c, value].mean()) for c in categories]
        ax.plot(
            range(len(categories)),
            means,
            color="black",
            marker="D",
            markersize=5,
            linewidth=1.5,
            label="mean",
            zorder=3,
        )
        labels = [figures.format_value(c) for c in categories]
        ax.set_xticks(range(len(categories)), labels)
        if len(categories) > 6 or sum(len(t) + 2 for t in labels) > 32:
            plt.setp(ax.get_xticklabels(), rotation=30, ha="right", rotation_mode="anchor")
        ax.set_xlim(-0.6, max(len(categories) - 1, 0) + 0.6)
        ax.set_xlabel(param)
        ax.set_title(param)
        ax.grid(True, axis="y", alpha=0.3)
        if k % n_cols == 0:
            ax.set_ylabel(value)
        ax.tick_params(axis="y", labelleft=True)
    axes[0, 0].legend(loc="lower right", fontsize=8)
    fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    return figures.save(fig, path)
