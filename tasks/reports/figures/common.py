"""What every figure shares: one function per PNG, saved atomically, closed, thread-safe.

The figures themselves live with their report: ``figures_baseline`` (history, confusion
matrix, predictions, misclassified images), ``figures_grid`` (heatmap) and
``figures_random`` (best of N, accuracy per hyperparameter).

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
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure

from tasks.files import atomic_path

#: Resolution of every saved PNG.
DPI = 110
#: At most this many images in :func:`plot_misclassified_grid` (4 rows x 8 columns).
GRID_ROWS, GRID_COLS = 4, 8
MAX_GRID_IMAGES = GRID_ROWS * GRID_COLS

PathLike = str | os.PathLike
F = TypeVar("F", bound=Callable[..., Any])

LOCK = threading.RLock()
NAN_COLOUR = "#c8c8c8"


def locked(func: F) -> F:
    """Run ``func`` while holding the module's pyplot lock, in matplotlib's default style
    (Optuna's figures switch pyplot to ggplot for every figure drawn after them)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with LOCK, plt.style.context("default"):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Saving and small helpers
# --------------------------------------------------------------------------------------------
def save(fig: Figure, path: PathLike) -> Path:
    """Save ``fig`` as a PNG at ``path`` atomically (:func:`tasks.files.atomic_path`), close
    it (also on error), and return the path."""
    target = Path(path)
    try:
        with atomic_path(target) as tmp:
            fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)
    return target


def message_figure(message: str, title: str | None = None) -> Figure:
    """A small figure that only says ``message`` (for empty inputs)."""
    fig, ax = plt.subplots(figsize=(6, 2.2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=14, transform=ax.transAxes)
    if title:
        fig.suptitle(title, fontsize=12)
    return fig


def text_colour(cmap: Colormap, norm: Normalize, value: float) -> str:
    """Black or white, whichever reads better on the colour ``cmap(norm(value))``."""
    r, g, b, _ = cmap(norm(value))
    luminance = 0.299 * r + 0.587 * g + 0.114 * b
    return "black" if luminance > 0.5 else "white"


def format_value(value: Any) -> str:
    """Tick label for a category: numbers as ``f"{v:g}"``, everything else as ``str``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        return str(value)
    return f"{value:g}"


def sorted_unique(values: pd.Series) -> list[Any]:
    """Sorted distinct non-missing values; numbers numerically, mixed types by their text."""
    unique = list(pd.unique(values.dropna()))
    try:
        return sorted(unique)
    except TypeError:
        return sorted(unique, key=str)


def require_columns(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; have {list(df.columns)}")


def as_images(images: Any, shape: Sequence[int] | None = None) -> np.ndarray:
    """Images for ``imshow``, float in ``[0, 1]``: ``(n, h, w)`` grey or ``(n, h, w, 3|4)``
    colour. ``images``: ``(n, h, w[, c])``, or rows of features ``(n, d)`` reshaped to
    ``shape`` (default: a square, as MNIST's 784 = 28 x 28).

    Values in [0, 1] are drawn as they are, values in 0..255 divided by 255, anything else
    (standardized features) stretched to [0, 1] image by image.
    """
    arr = np.asarray(images, dtype=np.float64)
    if arr.ndim == 2:
        if shape is None:
            side = math.isqrt(arr.shape[1])
            if side * side != arr.shape[1]:
                raise ValueError(f"images of shape {arr.shape}: rows of {arr.shape[1]} values "
                                 "are no square image; give the image shape")
            shape = (side, side)
        arr = arr.reshape(len(arr), *shape)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 3 or (arr.ndim == 4 and arr.shape[-1] in (3, 4))):
        raise ValueError(f"images of shape {arr.shape}: expected (n, h, w) or (n, h, w, 3)")
    if arr.size and (np.nanmin(arr) < 0.0 or np.nanmax(arr) > 255.0):
        flat = arr.reshape(len(arr), -1)
        low, high = np.nanmin(flat, axis=1), np.nanmax(flat, axis=1)
        span = np.where(high > low, high - low, 1.0)
        arr = ((flat - low[:, None]) / span[:, None]).reshape(arr.shape)
    elif arr.size and np.nanmax(arr) > 1.0:
        arr = arr / 255.0
    return arr


def show_image(ax, image: np.ndarray, cmap: str = "gray") -> None:
    """Draw one image of :func:`as_images` (grey with ``cmap``, colour as it is), no ticks."""
    if image.ndim == 3:
        ax.imshow(np.clip(image, 0.0, 1.0))
    else:
        ax.imshow(image, cmap=cmap, vmin=0.0, vmax=1.0)
    ax.set_xticks([])
    ax.set_yticks([])


def class_label(names: Sequence[str] | None, index: int, width: int = 14) -> str:
    """A class as the figures show it: its name (cut to ``width``), else its number."""
    if names is None or not 0 <= index < len(names):
        return str(index)
    name = str(names[index])
    return name if len(name) <= width else name[:width - 1] + "…"
