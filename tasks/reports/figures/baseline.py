"""The baseline report's figures: training history, confusion matrix, test images with their
class probabilities, misclassified images."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from tasks.reports.figures import common as figures

# --------------------------------------------------------------------------------------------
# Training history
# --------------------------------------------------------------------------------------------
_HISTORY_KEYS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy")


@figures.locked
def plot_history(history: list[dict], path: figures.PathLike) -> Path:
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
    return figures.save(fig, path)


# --------------------------------------------------------------------------------------------
# Confusion matrix
# --------------------------------------------------------------------------------------------
#: Classes up to which every cell's percentage is written, and every class's tick label.
MAX_CONFUSION_NUMBERS, MAX_CONFUSION_TICKS = 25, 40

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


@figures.locked
def plot_confusion(
    y_true: Any, y_pred: Any, path: figures.PathLike, classes: Sequence[Any] | None = None
) -> Path:
    """Confusion matrix heatmap, each cell the % of its *predicted* class (column sums to 100).

    ``y_true`` and ``y_pred`` are class indices ``0..len(classes)-1``; ``classes`` (default
    ``0..9``: numbers or names) only labels the ticks. Columns of never-predicted classes are
    grey and unlabelled. Each cell's percentage is written in it up to
    :data:`MAX_CONFUSION_NUMBERS` classes; beyond, the colours alone tell.
    """
    classes = list(range(10)) if classes is None else list(classes)
    n = len(classes)
    percent = confusion_percent(y_true, y_pred, n_classes=n)

    cmap = plt.get_cmap("YlGnBu").with_extremes(bad=figures.NAN_COLOUR)
    norm = Normalize(vmin=0, vmax=100)
    fig, ax = plt.subplots(figsize=(8, 8))
    im = ax.imshow(np.ma.masked_invalid(percent), cmap=cmap, norm=norm)
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("Frequency %")
    step = max(1, math.ceil(n / MAX_CONFUSION_TICKS))  # every class up to 40, then every k-th
    ticks = range(0, n, step)
    names = [figures.format_value(classes[t]) for t in ticks]
    size = max(5.0, min(10.0, 240.0 / len(ticks)))
    ax.set_xticks(ticks, names, fontsize=size, rotation=45 if max(map(len, names)) > 3 else 0,
                  ha="right" if max(map(len, names)) > 3 else "center")
    ax.set_yticks(ticks, names, fontsize=size)
    ax.set_xlabel("Prediction")
    ax.set_ylabel("Truth")
    ax.set_title("Confusion matrix (% of each predicted class)")
    fontsize = max(5.0, min(10.0, 90.0 / n))
    for i in range(n if n <= MAX_CONFUSION_NUMBERS else 0):
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
                color=figures.text_colour(cmap, norm, value),
            )
    return figures.save(fig, path)


# --------------------------------------------------------------------------------------------
# Predictions: image next to its class probabilities
# --------------------------------------------------------------------------------------------
_PREDICTION_LEGEND = [
    Patch(color="C1", label="true class"),
    Patch(color="C3", label="predicted class (wrong)"),
    Patch(color="C0", label="other classes"),
]


#: Classes drawn as bars beside an image; with more, the most probable ones and the true one.
MAX_BARS = 12


def shown_classes(probability: np.ndarray, label: int) -> np.ndarray:
    """The classes whose bars are drawn, in class order: all up to :data:`MAX_BARS`, else the
    ``MAX_BARS - 1`` most probable and the true class."""
    n_classes = probability.size
    if n_classes <= MAX_BARS:
        return np.arange(n_classes)
    top = np.argsort(-np.nan_to_num(probability, nan=-1.0), kind="stable")[:MAX_BARS - 1]
    return np.unique(np.append(top, label if 0 <= label < n_classes else top[0]))


def _draw_prediction(
    ax_image: Axes,
    ax_bars: Axes,
    probability: np.ndarray,
    image: np.ndarray,
    label: int,
    show_xlabel: bool = True,
    class_names: Sequence[str] | None = None,
) -> None:
    """Draw one sample: the image on ``ax_image``, its class probabilities on ``ax_bars``.

    The true class's bar is ``C1``; a wrong prediction's bar is ``C3``; the others ``C0``. The bar
    panel is titled ``true 7 / predicted 2`` (red when wrong), with the classes' names where
    the data has them.
    """
    probability = np.asarray(probability, dtype=np.float64).ravel()
    label = int(label)
    predicted = int(np.nanargmax(probability)) if np.isfinite(probability).any() else -1
    wrong = predicted != label

    figures.show_image(ax_image, image, cmap="Greys")

    classes = shown_classes(probability, label)
    colours = ["C0"] * len(classes)
    for row, c in enumerate(classes):
        if wrong and c == predicted:
            colours[row] = "C3"
        if c == label:
            colours[row] = "C1"
    positions = np.arange(len(classes))
    row_of = {int(c): row for row, c in enumerate(classes)}
    ax_bars.barh(positions, np.nan_to_num(probability[classes]), color=colours, height=0.8)
    ax_bars.set_xlim(0.0, 1.0)
    ax_bars.set_ylim(len(classes) - 0.5, -0.5)  # class 0 at the top
    # The class (digit, or name) at the left of each bar, as in the notebook.
    ax_bars.set_yticks(positions, [figures.class_label(class_names, int(c)) for c in classes],
                       fontsize=8)
    ax_bars.tick_params(axis="y", length=0, pad=3)
    ax_bars.tick_params(axis="x", labelsize=8)
    ax_bars.grid(True, axis="x", alpha=0.3)
    if predicted in row_of:
        p = probability[predicted]
        inside = p > 0.8
        ax_bars.text(
            p - 0.02 if inside else p + 0.02,
            row_of[predicted],
            f"{p:.2f}",
            va="center",
            ha="right" if inside else "left",
            fontsize=8,
            color="white" if inside else "black",
        )
    if show_xlabel:
        ax_bars.set_xlabel("probability", fontsize=9)
    shown = figures.class_label(class_names, predicted) if predicted >= 0 else "?"
    ax_bars.set_title(
        f"true {figures.class_label(class_names, label)} / predicted {shown}",
        fontsize=10,
        color="C3" if wrong else "black",
        fontweight="bold" if wrong else "normal",
    )


def _bar_label_space(class_names: Sequence[str] | None) -> float:
    """Room between an image and its bars for the classes' labels (numbers, or names)."""
    if not class_names:
        return 0.25
    longest = max(len(figures.class_label(class_names, i)) for i in range(len(class_names)))
    return min(0.9, 0.25 + 0.05 * longest)


def _check_predictions(
    probabilities: Any, images: Any, labels: Any, image_shape: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim == 1:
        probs = probs[None, :]
    imgs = figures.as_images(images, image_shape)
    labs = np.asarray(labels).ravel().astype(int)
    if not (len(probs) == len(imgs) == len(labs)):
        raise ValueError(
            f"{len(probs)} probability rows, {len(imgs)} images and {len(labs)} labels: "
            "must be the same number"
        )
    return probs, imgs, labs


@figures.locked
def plot_predictions(
    probabilities: Any, images: Any, labels: Any, path: figures.PathLike, title: str,
    class_names: Sequence[str] | None = None, image_shape: Sequence[int] | None = None,
) -> Path:
    """Several samples, each as image + bar chart of the class probabilities.

    ``probabilities`` (n, classes), ``images`` (n, h, w[, c]) or rows of features in the data's
    ``image_shape``, ``labels`` (n,). Up to 5 samples are stacked in one column; more are
    laid out in two columns of pairs.
    """
    probs, imgs, labs = _check_predictions(probabilities, images, labels, image_shape)
    n = len(probs)
    if n == 0:
        return figures.save(figures.message_figure("No images", title), path)
    pairs_per_row = 1 if n <= 5 else 2
    n_rows = math.ceil(n / pairs_per_row)
    fig = plt.figure(figsize=(6.2 * pairs_per_row, 1.9 * n_rows + 0.9))
    grid = fig.add_gridspec(
        n_rows,
        2 * pairs_per_row,
        width_ratios=[1, 1.9] * pairs_per_row,
        wspace=_bar_label_space(class_names),
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
        _draw_prediction(ax_image, ax_bars, probs[k], imgs[k], labs[k],
                         show_xlabel=last_in_column, class_names=class_names)
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
    return figures.save(fig, path)


@figures.locked
def plot_prediction(probability: Any, image: Any, label: int, path: figures.PathLike,
                    class_names: Sequence[str] | None = None,
                    image_shape: Sequence[int] | None = None) -> Path:
    """One sample (e.g. a misclassified one): the image next to its class probabilities."""
    probs, imgs, labs = _check_predictions(
        np.asarray(probability, dtype=np.float64).ravel()[None, :],
        np.asarray(image)[None, ...],
        [label],
        image_shape,
    )
    fig, (ax_image, ax_bars) = plt.subplots(
        1, 2, figsize=(6.2, 3.2),
        gridspec_kw={"width_ratios": [1, 1.9], "wspace": _bar_label_space(class_names)}
    )
    _draw_prediction(ax_image, ax_bars, probs[0], imgs[0], labs[0], class_names=class_names)
    fig.subplots_adjust(top=0.88, bottom=0.27)
    fig.legend(
        handles=_PREDICTION_LEGEND,
        loc="lower center",
        ncol=3,
        fontsize=8,
        frameon=False,
        bbox_to_anchor=(0.5, 0.0),
    )
    return figures.save(fig, path)


# --------------------------------------------------------------------------------------------
# Misclassified images
# --------------------------------------------------------------------------------------------
@figures.locked
def plot_misclassified_grid(
    images: Any, true_labels: Any, predicted_labels: Any, path: figures.PathLike,
    class_names: Sequence[str] | None = None, image_shape: Sequence[int] | None = None,
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
        return figures.save(figures.message_figure("No misclassified images", title), path)
    imgs = figures.as_images(arr, image_shape)
    shown = min(k, figures.MAX_GRID_IMAGES)
    fig, axes = plt.subplots(figures.GRID_ROWS, figures.GRID_COLS, figsize=(12, 7))
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i >= shown:
            continue
        figures.show_image(ax, imgs[i])
        names = [figures.class_label(class_names, int(c), 11) for c in (true[i], pred[i])]
        ax.set_title("→".join(names), fontsize=11 if class_names is None else 8)
    if k > shown:
        title += f" — first {shown} of {k}"
    fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    return figures.save(fig, path)
