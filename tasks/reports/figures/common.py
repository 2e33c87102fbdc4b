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


def as_images(images: Any) -> np.ndarray:
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
