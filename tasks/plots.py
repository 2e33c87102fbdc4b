"""Matplotlib figures for the MNIST hyperparameter search: one function per PNG.

Every public function takes plain numpy / pandas / list inputs plus an output ``path``, draws one
figure, saves it as a PNG (dpi 110, ``bbox_inches="tight"``) and returns the :class:`Path`.

* Saving is atomic: the PNG is written to a hidden temporary file in the same directory (its name
  ends in ``.png``) and then ``os.replace``-d onto ``path``, so a half-written PNG is never visible.
* Every figure is closed after saving (also on error), so hundreds of calls do not leak memory.
* The non-interactive ``Agg`` backend is selected at import; nothing here opens a window.
* Pyplot keeps global state and is not thread-safe, so every public function holds one module
  lock while it draws and saves (Prefect may run tasks in threads). Plotting is fast; the lock
  only serialises the figures themselves.
"""

from __future__ import annotations

import functools
import math
import os
import secrets
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator, NullLocator

__all__ = [
    "DPI",
    "confusion_percent",
    "plot_accuracy_vs_hyperparameters",
    "plot_best_of_n",
    "plot_confusion",
    "plot_grid_heatmap",
    "plot_history",
    "plot_misclassified_grid",
    "plot_prediction",
    "plot_predictions",
]

#: Resolution of every saved PNG.
DPI = 110
#: At most this many images in :func:`plot_misclassified_grid` (4 rows x 8 columns).
GRID_ROWS, GRID_COLS = 4, 8
MAX_GRID_IMAGES = GRID_ROWS * GRID_COLS

PathLike = str | os.PathLike
F = TypeVar("F", bound=Callable[..., Any])

_LOCK = threading.RLock()
_NAN_COLOUR = "#c8c8c8"


def _locked(func: F) -> F:
    """Run ``func`` while holding the module's pyplot lock."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _LOCK:
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Saving and small helpers
# --------------------------------------------------------------------------------------------
def _save(fig: Figure, path: PathLike) -> Path:
    """Save ``fig`` as a PNG at ``path`` atomically, close it, and return the path.

    The PNG is first written to ``.<name>.tmp-<pid>-<random>.png`` next to ``path`` and then
    moved onto it with :func:`os.replace`. On any error the temporary file is removed, an existing
    file at ``path`` is left untouched, and the figure is still closed.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}.png")
        try:
            fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format="png")
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    finally:
        plt.close(fig)
    return target


def _message_figure(message: str, title: str | None = None) -> Figure:
    """A small figure that only says ``message`` (for empty inputs)."""
    fig, ax = plt.subplots(figsize=(6, 2.2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=14, transform=ax.transAxes)
    if title:
        fig.suptitle(title, fontsize=12)
    return fig


def _text_colour(cmap: Colormap, norm: Normalize, value: float) -> str:
    """Black or white, whichever reads better on the colour ``cmap(norm(value))``."""
    r, g, b, _ = cmap(norm(value))
    luminance = 0.299 * r + 0.587 * g + 0.114 * b
    return "black" if luminance > 0.5 else "white"


def _format_value(value: Any) -> str:
    """Tick label for a category: numbers as ``f"{v:g}"``, everything else as ``str``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        return str(value)
    return f"{value:g}"


def _sorted_unique(values: pd.Series) -> list[Any]:
    """Sorted distinct non-missing values; numbers numerically, mixed types by their text."""
    unique = list(pd.unique(values.dropna()))
    try:
        return sorted(unique)
    except TypeError:
        return sorted(unique, key=str)


def _require_columns(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; have {list(df.columns)}")


def _as_images(images: Any) -> np.ndarray:
    """``(n, 28, 28)`` or ``(n, 784)`` (any square size) -> float ``(n, h, w)`` in ``[0, 1]``.

    Pixel values above 1 are taken to be 0..255 and divided by 255.
    """
    arr = np.asarray(images, dtype=np.float64)
    if arr.ndim == 2:
        side = math.isqrt(arr.shape[1])
        if side * side != arr.shape[1]:
            raise ValueError(f"images of shape {arr.shape}: expected (n, 28, 28) or (n, 784)")
        arr = arr.reshape(len(arr), side, side)
    if arr.ndim != 3:
        raise ValueError(f"images of shape {arr.shape}: expected (n, 28, 28) or (n, 784)")
    if arr.size and np.nanmax(arr) > 1.0:
        arr = arr / 255.0
    return arr


# --------------------------------------------------------------------------------------------
# 1. Training history
# --------------------------------------------------------------------------------------------
_HISTORY_KEYS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy")


@_locked
def plot_history(history: list[dict], path: PathLike) -> Path:
    """Accuracy and loss per epoch, train vs validation, in two side-by-side panels.

    ``history`` rows have keys ``epoch`` (1-based int), ``train_loss``, ``train_accuracy``,
    ``val_loss`` and ``val_accuracy``. Rows are sorted by epoch; non-finite values leave gaps.
    """
    if not history:
        raise ValueError("plot_history: history is empty")
    for i, row in enumerate(history):
        missing = [k for k in _HISTORY_KEYS if k not in row]
        if missing:
            raise ValueError(f"plot_history: history row {i} lacks key(s) {missing}")
    rows = sorted(history, key=lambda r: int(r["epoch"]))
    epochs = np.array([int(r["epoch"]) for r in rows])

    def column(key: str) -> np.ndarray:
        values = np.array([float(r[key]) for r in rows], dtype=np.float64)
        values[~np.isfinite(values)] = np.nan
        return values

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric, title in ((ax_acc, "accuracy", "Accuracy"), (ax_loss, "loss", "Loss")):
        ax.plot(epochs, column(f"train_{metric}"), marker="o", label="train")
        ax.plot(epochs, column(f"val_{metric}"), marker="s", label="validation")
        ax.set_title(title)
        ax.set_xlabel("Epoch")
        ax.set_ylabel(title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right" if metric == "accuracy" else "upper right")
    fig.suptitle("Training history (train metrics recomputed without dropout)")
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# 2. Confusion matrix
# --------------------------------------------------------------------------------------------
def confusion_percent(y_true: Any, y_pred: Any, n_classes: int = 10) -> np.ndarray:
    """Confusion matrix in percent of each *predicted* class (the notebook's normalisation).

    ``C = np.histogram2d(y_true, y_pred, bins)[0]`` with one bin per class, so ``C[i, j]`` counts
    samples of true class ``i`` predicted as ``j``; each column is then divided by its sum and
    multiplied by 100. Columns of classes that were never predicted are all NaN.

    >>> confusion_percent([0, 0, 1], [0, 1, 1], n_classes=2)
    array([[100.,  50.],
           [  0.,  50.]])
    """
    if n_classes < 1:
        raise ValueError(f"n_classes={n_classes}: must be >= 1")
    t = np.asarray(y_true).ravel()
    p = np.asarray(y_pred).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} labels but y_pred has {p.size}")
    for name, labels in (("y_true", t), ("y_pred", p)):
        if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
            raise ValueError(f"{name}: labels must be in 0..{n_classes - 1}")
    edges = np.arange(n_classes + 1) - 0.5
    counts = np.histogram2d(t, p, bins=[edges, edges])[0]
    column_sums = counts.sum(axis=0, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        percent = np.where(column_sums > 0, counts / column_sums * 100.0, np.nan)
    return percent


@_locked
def plot_confusion(
    y_true: Any, y_pred: Any, path: PathLike, classes: Sequence[Any] | None = None
) -> Path:
    """Confusion matrix heatmap, each cell the % of its *predicted* class (column sums to 100).

    ``y_true`` and ``y_pred`` are class indices ``0..len(classes)-1``; ``classes`` (default
    ``0..9``) only labels the ticks. Columns of never-predicted classes are grey and unlabelled.
    """
    classes = list(range(10)) if classes is None else list(classes)
    n = len(classes)
    percent = confusion_percent(y_true, y_pred, n_classes=n)

    cmap = plt.get_cmap("YlGnBu").with_extremes(bad=_NAN_COLOUR)
    norm = Normalize(vmin=0, vmax=100)
    fig, ax = plt.subplots(figsize=(8, 8))
    im = ax.imshow(np.ma.masked_invalid(percent), cmap=cmap, norm=norm)
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("Frequency %")
    ax.set_xticks(range(n), [_format_value(c) for c in classes])
    ax.set_yticks(range(n), [_format_value(c) for c in classes])
    ax.set_xlabel("Prediction")
    ax.set_ylabel("Truth")
    ax.set_title("Confusion matrix (% of each predicted class)")
    fontsize = max(5.0, min(10.0, 90.0 / n))
    for i in range(n):
        for j in range(n):
            value = percent[i, j]
            if np.isnan(value):
                continue
            # The notebook writes the diagonal in white and the rest in black; pick by the cell's
            # actual colour so a weak diagonal (pale cell) or a strong confusion stays readable.
            ax.text(
                j,
                i,
                f"{value:0.1f}",
                ha="center",
                va="center",
                fontsize=fontsize,
                color=_text_colour(cmap, norm, value),
            )
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# 3. / 4. Predictions: image next to its class probabilities
# --------------------------------------------------------------------------------------------
_PREDICTION_LEGEND = [
    Patch(color="C1", label="true class"),
    Patch(color="C3", label="predicted class (wrong)"),
    Patch(color="C0", label="other classes"),
]


def _draw_prediction(
    ax_image: Axes,
    ax_bars: Axes,
    probability: np.ndarray,
    image: np.ndarray,
    label: int,
    show_xlabel: bool = True,
) -> None:
    """Draw one sample: the image on ``ax_image``, its class probabilities on ``ax_bars``.

    The true class's bar is ``C1``; a wrong prediction's bar is ``C3``; the others ``C0``. The bar
    panel is titled ``true 7 / predicted 2`` (red when wrong).
    """
    probability = np.asarray(probability, dtype=np.float64).ravel()
    n_classes = probability.size
    label = int(label)
    predicted = int(np.nanargmax(probability)) if np.isfinite(probability).any() else -1
    wrong = predicted != label

    ax_image.imshow(image, cmap="Greys", vmin=0.0, vmax=1.0)
    ax_image.set_xticks([])
    ax_image.set_yticks([])

    colours = ["C0"] * n_classes
    if wrong and 0 <= predicted < n_classes:
        colours[predicted] = "C3"
    if 0 <= label < n_classes:
        colours[label] = "C1"
    positions = np.arange(n_classes)
    ax_bars.barh(positions, np.nan_to_num(probability), color=colours, height=0.8)
    ax_bars.set_xlim(0.0, 1.0)
    ax_bars.set_ylim(n_classes - 0.5, -0.5)  # class 0 at the top
    # The class digit at the left of each bar, as in the notebook.
    ax_bars.set_yticks(positions, [str(c) for c in positions], fontsize=8)
    ax_bars.tick_params(axis="y", length=0, pad=3)
    ax_bars.tick_params(axis="x", labelsize=8)
    ax_bars.grid(True, axis="x", alpha=0.3)
    if 0 <= predicted < n_classes:
        p = probability[predicted]
        inside = p > 0.8
        ax_bars.text(
            p - 0.02 if inside else p + 0.02,
            predicted,
            f"{p:.2f}",
            va="center",
            ha="right" if inside else "left",
            fontsize=8,
            color="white" if inside else "black",
        )
    if show_xlabel:
        ax_bars.set_xlabel("probability", fontsize=9)
    shown = str(predicted) if predicted >= 0 else "?"
    ax_bars.set_title(
        f"true {label} / predicted {shown}",
        fontsize=10,
        color="C3" if wrong else "black",
        fontweight="bold" if wrong else "normal",
    )


def _check_predictions(
    probabilities: Any, images: Any, labels: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim == 1:
        probs = probs[None, :]
    imgs = _as_images(images)
    labs = np.asarray(labels).ravel().astype(int)
    if not (len(probs) == len(imgs) == len(labs)):
        raise ValueError(
            f"{len(probs)} probability rows, {len(imgs)} images and {len(labs)} labels: "
            "must be the same number"
        )
    return probs, imgs, labs


@_locked
def plot_predictions(
    probabilities: Any, images: Any, labels: Any, path: PathLike, title: str
) -> Path:
    """Several samples, each as image + bar chart of the class probabilities.

    ``probabilities`` (n, 10), ``images`` (n, 28, 28) or (n, 784) in [0, 1], ``labels`` (n,).
    Up to 5 samples are stacked in one column; more are laid out in two columns of pairs.
    """
    probs, imgs, labs = _check_predictions(probabilities, images, labels)
    n = len(probs)
    if n == 0:
        return _save(_message_figure("No images", title), path)
    pairs_per_row = 1 if n <= 5 else 2
    n_rows = math.ceil(n / pairs_per_row)
    fig = plt.figure(figsize=(6.2 * pairs_per_row, 1.9 * n_rows + 0.9))
    grid = fig.add_gridspec(
        n_rows,
        2 * pairs_per_row,
        width_ratios=[1, 1.9] * pairs_per_row,
        wspace=0.25,
        hspace=0.55,
    )
    for k in range(n_rows * pairs_per_row):
        r, c = divmod(k, pairs_per_row)
        ax_image = fig.add_subplot(grid[r, 2 * c])
        ax_bars = fig.add_subplot(grid[r, 2 * c + 1])
        if k >= n:
            ax_image.axis("off")
            ax_bars.axis("off")
            continue
        last_in_column = k + pairs_per_row >= n
        _draw_prediction(ax_image, ax_bars, probs[k], imgs[k], labs[k], show_xlabel=last_in_column)
    fig.suptitle(title, fontsize=13)
    fig.legend(
        handles=_PREDICTION_LEGEND,
        loc="lower center",
        ncol=3,
        fontsize=9,
        frameon=False,
        bbox_to_anchor=(0.5, 0.0),
    )
    height = fig.get_figheight()
    fig.subplots_adjust(top=1 - 0.8 / height, bottom=0.8 / height)
    return _save(fig, path)


@_locked
def plot_prediction(probability: Any, image: Any, label: int, path: PathLike) -> Path:
    """One sample (e.g. a misclassified one): the image next to its class probabilities."""
    probs, imgs, labs = _check_predictions(
        np.asarray(probability, dtype=np.float64).ravel()[None, :],
        np.asarray(image)[None, ...],
        [label],
    )
    fig, (ax_image, ax_bars) = plt.subplots(
        1, 2, figsize=(6.2, 3.2), gridspec_kw={"width_ratios": [1, 1.9], "wspace": 0.25}
    )
    _draw_prediction(ax_image, ax_bars, probs[0], imgs[0], labs[0])
    fig.subplots_adjust(top=0.88, bottom=0.27)
    fig.legend(
        handles=_PREDICTION_LEGEND,
        loc="lower center",
        ncol=3,
        fontsize=8,
        frameon=False,
        bbox_to_anchor=(0.5, 0.0),
    )
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# 5. Misclassified images
# --------------------------------------------------------------------------------------------
@_locked
def plot_misclassified_grid(
    images: Any, true_labels: Any, predicted_labels: Any, path: PathLike
) -> Path:
    """The first (up to) 32 misclassified images in a 4 x 8 grid, each titled ``true→predicted``.

    With no images at all, the figure just says "No misclassified images".
    """
    title = "Misclassified test images (true→predicted)"
    true = np.asarray(true_labels).ravel()
    pred = np.asarray(predicted_labels).ravel()
    arr = np.asarray(images)
    k = 0 if arr.size == 0 else len(arr)
    if not (k == len(true) == len(pred)):
        raise ValueError(
            f"{k} images, {len(true)} true labels and {len(pred)} predicted labels: "
            "must be the same number"
        )
    if k == 0:
        return _save(_message_figure("No misclassified images", title), path)
    imgs = _as_images(arr)
    shown = min(k, MAX_GRID_IMAGES)
    fig, axes = plt.subplots(GRID_ROWS, GRID_COLS, figsize=(12, 7))
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i >= shown:
            continue
        ax.imshow(imgs[i], cmap="gray", vmin=0.0, vmax=1.0)
        ax.set_title(f"{int(true[i])}→{int(pred[i])}", fontsize=11)
    if k > shown:
        title += f" — first {shown} of {k}"
    fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# 6. Grid-search heatmap
# --------------------------------------------------------------------------------------------
@_locked
def plot_grid_heatmap(
    df: pd.DataFrame,
    path: PathLike,
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
    _require_columns(df, [row, col, value], "plot_grid_heatmap")
    if df.empty:
        return _save(_message_figure("No trials", title or f"{value} by {row} and {col}"), path)
    row_values = _sorted_unique(df[row])
    col_values = _sorted_unique(df[col])
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
    cmap = plt.get_cmap("viridis").with_extremes(bad=_NAN_COLOUR)
    norm = Normalize(vmin=vmin, vmax=vmax)

    n_rows, n_cols = matrix.shape
    fig, ax = plt.subplots(figsize=(max(5.5, 0.95 * n_cols + 2.8), max(3.8, 0.6 * n_rows + 2.0)))
    im = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, norm=norm, aspect="auto")
    cbar = fig.colorbar(im, ax=ax)
    cbar.set_label(value)
    ax.set_xticks(range(n_cols), [_format_value(v) for v in col_values])
    ax.set_yticks(range(n_rows), [_format_value(v) for v in row_values])
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
                text, colour = f"{v:.3f}", _text_colour(cmap, norm, v)
            else:
                text, colour = ("failed", "#b00000") if ran[i, j] else ("not run", "#555555")
            ax.text(j, i, text, ha="center", va="center", fontsize=fontsize, color=colour)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# 7. Best-of-N estimate
# --------------------------------------------------------------------------------------------
_BEST_OF_N_COLUMNS = (
    "n",
    "val_selected_test_mean",
    "val_selected_test_std",
    "max_test_mean",
    "max_test_std",
)


@_locked
def plot_best_of_n(df: pd.DataFrame, path: PathLike) -> Path:
    """Accuracy of "the best of N random trials" vs N, mean ± std over repetitions.

    Two series: the test accuracy of the trial picked by validation accuracy (honest), and the
    maximum test accuracy (the notebook's number, picked on the test set, optimistic). The second
    series is shifted right by 4% so the error bars do not overlap; x is logarithmic.
    """
    _require_columns(df, _BEST_OF_N_COLUMNS, "plot_best_of_n")
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
    ax.set_xscale("log")
    ticks = np.unique(n)
    ax.set_xticks(ticks, [_format_value(v) for v in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    if len(ticks):
        ax.set_xlim(ticks.min() / 1.25, ticks.max() * 1.3)
    ax.set_title("Max accuracy estimate")
    ax.set_xlabel("N (random trials)")
    ax.set_ylabel("Accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# 8. Accuracy per hyperparameter
# --------------------------------------------------------------------------------------------
@_locked
def plot_accuracy_vs_hyperparameters(
    df: pd.DataFrame, path: PathLike, params: list[str], value: str = "val_accuracy"
) -> Path:
    """One panel per hyperparameter: every trial's ``value`` per distinct parameter value.

    Parameter values are categories (sorted; numbers written with ``:g``); trials are jittered
    horizontally (deterministically) and the per-category mean is drawn in black. Trials with a
    NaN ``value`` are skipped. Panels wrap at 3 per row and share the y axis.
    """
    params = list(params)
    if not params:
        raise ValueError("plot_accuracy_vs_hyperparameters: params is empty")
    _require_columns(df, [*params, value], "plot_accuracy_vs_hyperparameters")
    title = f"What mattered: {value} per hyperparameter"
    data = df.copy()
    data[value] = pd.to_numeric(data[value], errors="coerce")
    data = data[np.isfinite(data[value].to_numpy(dtype=np.float64))]
    if data.empty:
        return _save(_message_figure("No completed trials", title), path)

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
        categories = _sorted_unique(subset[param])
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
        labels = [_format_value(c) for c in categories]
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
    return _save(fig, path)
