"""The grid report's figure: a heatmap of one metric over two hyperparameters."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import Normalize

from tasks.reports.figures import common as figures


# --------------------------------------------------------------------------------------------
# Grid-search heatmap
# --------------------------------------------------------------------------------------------
@figures.locked
def plot_grid_heatmap(
    df: pd.DataFrame,
    path: figures.PathLike,
    row: str = "dropout",
    col: str = "units",
    value: str = "test_accuracy",
    title: str | None = None,
) -> Path:
    """Heatmap of ``value`` over a two-parameter grid (rows ``row``, columns ``col``).

    Several trials in one cell are averaged (NaNs ignored). A cell whose trials all have a NaN
    ``value`` (failed) is grey and says "failed"; a combination with no trial at all is grey and
    says "not run".
    """
    figures.require_columns(df, [row, col, value], "plot_grid_heatmap")
    if df.empty:
        message = figures.message_figure("No trials", title or f"{value} by {row} and {col}")
        return figures.save(message, path)
    row_values = figures.sorted_unique(df[row])
    col_values = figures.sorted_unique(df[col])
    data = df[[row, col, value]].copy()
    data[value] = pd.to_numeric(data[value], errors="coerce")
    grouped = data.groupby([row, col], dropna=True)[value]
    means = grouped.mean().unstack(col).reindex(index=row_values, columns=col_values)
    counts = grouped.size().unstack(col).reindex(index=row_values, columns=col_values)
    matrix = means.to_numpy(dtype=np.float64)
    ran = counts.fillna(0).to_numpy(dtype=np.float64) > 0

    finite = matrix[np.isfinite(matrix)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmin == vmax:
        vmin, vmax = vmin - 0.5e-3, vmax + 0.5e-3
    cmap = plt.get_cmap("viridis").with_extremes(bad=figures.NAN_COLOUR)
    norm = Normalize(vmin=vmin, vmax=vmax)

    n_rows, n_cols = matrix.shape
    fig, ax = plt.subplots(figsize=(max(5.5, 0.95 * n_cols + 2.8), max(3.8, 0.6 * n_rows + 2.0)))
    im = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, norm=norm, aspect="auto")
    cbar = fig.colorbar(im, ax=ax)
    cbar.set_label(value)
    ax.set_xticks(range(n_cols), [figures.format_value(v) for v in col_values])
    ax.set_yticks(range(n_rows), [figures.format_value(v) for v in row_values])
    if n_cols > 8:
        plt.setp(ax.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_xlabel(col)
    ax.set_ylabel(row)
    ax.set_title(title or f"{value} by {row} and {col}")
    fontsize = max(6.0, min(10.0, 80.0 / max(n_cols, 1)))
    for i in range(n_rows):
        for j in range(n_cols):
            v = matrix[i, j]
            if np.isfinite(v):
                text, colour = f"{v:.3f}", figures.text_colour(cmap, norm, v)
            else:
                text, colour = ("failed", "#b00000") if ran[i, j] else ("not run", "#555555")
            ax.text(j, i, text, ha="center", va="center", fontsize=fontsize, color=colour)
    return figures.save(fig, path)
