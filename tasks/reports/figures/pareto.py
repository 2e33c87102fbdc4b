"""Accuracy against size: every completed trial's validation accuracy against its cost (trainable
parameters, log scale), the Pareto front marked and labelled, the smallest network within
half a point of the best highlighted (see :mod:`tasks.search.pareto`)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from matplotlib.transforms import Bbox

from tasks.reports.figures import common as figures
from tasks.search.pareto import (
    DEFAULT_TOLERANCE,
    cost_names,
    most_accurate,
    smallest_within,
    trial_label,
    usable_trials,
)

#: At most this many front points get a text label (the best and the highlighted first).
MAX_LABELS = 12
#: The y axis shows at most this much accuracy below the best (and no less than the lowest
#: trial): a search's failures (0.1 is chance on MNIST) would squash the interesting part.
Y_WINDOW = 0.12
#: Label positions tried around a point, in points: (dx, dy, ha, va). First: up and to the
#: left, where a front has no trials (any trial there would dominate the point).
_PLACES = (
    (-6, 5, "right", "bottom"),
    (-9, 0, "right", "center"),
    (6, -6, "left", "top"),
    (-6, -6, "right", "top"),
    (6, 5, "left", "bottom"),
    (9, 0, "left", "center"),
    (0, -9, "center", "top"),
    (0, 9, "center", "bottom"),
    (-6, 16, "right", "bottom"),
    (6, -18, "left", "top"),
    (0, -20, "center", "top"),
)


def _short_count(value: float, _position: float | None = None) -> str:
    """Tick labels: 8k, 100k, 1.2M."""
    if value >= 1e6:
        return f"{value / 1e6:g}M"
    if value >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def y_limits(acc: np.ndarray, window: float = Y_WINDOW) -> tuple[float, float]:
    """The y range: from the lowest accuracy, or ``window`` below the best (rounded down to
    0.01) where the lowest is further down, to a little above the best."""
    best, low = float(acc.max()), float(acc.min())
    if best - low > window:
        low = math.floor((best - window) * 100) / 100
    pad = max(0.04 * (best - low), 0.002)
    # more room above the best: its label goes there
    return low - (pad if low == float(acc.min()) else 0.0), best + 2 * pad


def _place_labels(fig, ax, points: list[tuple[float, float, str, bool]], avoid: list,
                  markers: list[tuple[float, float, float]]) -> list:
    """Text labels for ``points`` ((x, y, text, bold), the most important first), each at the
    first of :data:`_PLACES` where it stays inside the axes and overlaps neither a label placed
    before, nor an artist of ``avoid`` (the legend, a note), nor a marker of ``markers`` ((x,
    y, radius in pixels), in data coordinates) other than its own point's; a point without
    such a place is left unlabelled. At most :data:`MAX_LABELS` labels; returns them."""
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    boxes: list = [artist.get_window_extent(renderer) for artist in avoid]
    dots = [(ax.transData.transform((x, y)), r) for x, y, r in markers]
    dots = [Bbox.from_extents(cx - r, cy - r, cx + r, cy + r) for (cx, cy), r in dots]
    placed: list = []
    ymin, ymax = ax.get_ylim()
    for x, y, text, bold in points:
        if len(placed) >= MAX_LABELS:
            break
        if not ymin <= y <= ymax:
            continue
        own = ax.transData.transform((x, y))
        others = [d for d in dots if not d.contains(*own)]
        for dx, dy, ha, va in _PLACES:
            label = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points",
                                ha=ha, va=va, fontsize=7.5, color="C3" if bold else "#1f3a68",
                                fontweight="bold" if bold else "normal",
                                arrowprops=dict(arrowstyle="-", color="#1f3a68", alpha=0.5,
                                                linewidth=0.6, shrinkA=0, shrinkB=3),
                                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none",
                                          alpha=0.75))
            box = label.get_window_extent(renderer).expanded(1.04, 1.1)
            inside = (box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y0 >= frame.y0
                      and box.y1 <= frame.y1)
            if inside and not any(box.overlaps(other) for other in (*boxes, *others)):
                placed.append(label)
                boxes.append(box)
                break
            label.remove()
    return placed


def label_order(x: np.ndarray, first: list[int]) -> list[int]:
    """The order in which front points get their labels: ``first`` (the highlighted and the
    best), then the cheapest, then each time the point farthest (in log cost) from every
    point before it, so that the labels spread along the whole front."""
    order = list(dict.fromkeys(first))
    if len(x) and 0 not in order:
        order.append(0)
    logx = np.log(np.asarray(x, dtype=np.float64))
    rest = [i for i in range(len(x)) if i not in order]
    while rest:
        done = logx[order]
        far = max(rest, key=lambda i: (np.abs(done - logx[i]).min(), -i))
        order.append(far)
        rest.remove(far)
    return order


@figures.locked
def plot_pareto(frame: pd.DataFrame, front: pd.DataFrame, path: figures.PathLike,
                accuracy: str = "val_accuracy", cost: str = "param_count",
                highlight: pd.Series | None = None,
                tolerance: float = DEFAULT_TOLERANCE) -> Path:
    """Accuracy against cost: every completed trial of ``frame`` as a faint dot, ``front``
    (:func:`tasks.search.pareto.pareto_front` of the same frame) as marked points joined by a
    step line, each front point labelled with its config (:func:`trial_label`; with many
    points, at most :data:`MAX_LABELS` that do not overlap), x logarithmic.

    ``highlight``: the trial drawn with a distinct marker, in the legend as "smallest within
    ``tolerance`` of the best" (default: :func:`smallest_within` of ``frame``); a dashed line
    marks the best accuracy minus ``tolerance``. The y axis starts at most :data:`Y_WINDOW`
    below the best; how many trials lie below it is written on the figure. Fewer than 2
    completed trials: a figure that says so.
    """
    names = cost_names(cost)
    measure = "validation accuracy" if accuracy == "val_accuracy" else accuracy
    title = f"Accuracy against {names.topic}"
    done = usable_trials(frame, accuracy, cost)
    if len(done) < 2:
        return figures.save(figures.message_figure(
            f"{len(done)} completed trial{'s' if len(done) != 1 else ''}: no front to draw",
            title), path)
    x = done[cost].to_numpy()
    y = done[accuracy].to_numpy()
    if (x <= 0).any():
        raise ValueError(f"plot_pareto: every {cost} must be > 0 (log-scale x axis)")
    if highlight is None:
        highlight = smallest_within(frame, tolerance, accuracy, cost)
    best = most_accurate(frame, accuracy, cost)

    fig, ax = plt.subplots(figsize=(8.5, 5.4), dpi=figures.DPI)
    ax.scatter(x, y, s=14, color="#8c8c8c", alpha=0.35, linewidths=0, zorder=1,
               label=f"completed trials ({len(done)})")
    fx = front[cost].to_numpy(dtype=np.float64)
    fy = front[accuracy].to_numpy(dtype=np.float64)
    ax.step(fx, fy, where="post", color="C0", linewidth=1.4, alpha=0.8, zorder=2)
    ax.plot(fx, fy, linestyle="none", marker="o", markersize=6, color="C0",
            markeredgecolor="white", markeredgewidth=0.8, zorder=3,
            label=f"Pareto front ({len(front)} trials): no {names.smaller} trial is as "
                  "accurate")
    best_acc = float(y.max())
    ax.axhline(best_acc - tolerance, color="C3", linestyle="--", linewidth=0.9, alpha=0.7,
               zorder=1, label=f"best - {tolerance:g}")
    if best is not None:
        ax.plot([best[cost]], [best[accuracy]], linestyle="none", marker="*", markersize=13,
                color="C1", markeredgecolor="black", markeredgewidth=0.6, zorder=4,
                label=f"best {measure}")
    if highlight is not None:
        ax.plot([highlight[cost]], [highlight[accuracy]], linestyle="none", marker="D",
                markersize=9, markerfacecolor="none", markeredgecolor="C3",
                markeredgewidth=2, zorder=5,
                label=f"{names.smallest.split()[0].lower()} within {tolerance:g} of the best")

    ax.set_xscale("log")
    low, high = y_limits(y)
    ax.set_ylim(low, high)
    span = np.log10(x.max() / x.min()) if x.max() > x.min() else 1.0
    ax.set_xlim(x.min() / 10 ** (0.06 * span + 0.05), x.max() * 10 ** (0.06 * span + 0.05))
    if cost == "param_count":
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(_short_count))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(f"{names.axis} (log scale)")
    ax.set_ylabel(measure[0].upper() + measure[1:])
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", axis="x", alpha=0.1)

    avoid: list = []
    below = int((y < low).sum())
    if below:
        on_front = int((fy < low).sum())
        note = f"{below} of {len(done)} trials below {low:.2f} not shown"
        if on_front:
            note += f" ({on_front} of them on the front)"
        avoid.append(ax.text(0.99, 0.015, note, transform=ax.transAxes, ha="right",
                             va="bottom", fontsize=8, color="#555555"))
    avoid.append(ax.legend(loc="lower right", bbox_to_anchor=(1.0, 0.06 if below else 0.0),
                           fontsize=8, framealpha=0.9))

    # the best first, then the highlighted trial (in bold), then spread along the front; a
    # front point is named by its (cost, accuracy)
    points = list(zip(fx.tolist(), fy.tolist(), strict=True))
    marked = [(float(row[cost]), float(row[accuracy])) if row is not None else None
              for row in (best, highlight)]
    first = [points.index(p) for p in marked if p in points]
    pixels = fig.dpi / 72.0  # marker sizes are in points
    markers = [(a, b, 4 * pixels) for a, b in zip(fx, fy, strict=True)]
    for row, size in ((best, 7), (highlight, 6)):
        if row is not None:
            markers.append((row[cost], row[accuracy], size * pixels))
    _place_labels(fig, ax, [(fx[i], fy[i], trial_label(front.iloc[i]), points[i] == marked[1])
                            for i in label_order(fx, first)], avoid, markers)
    return figures.save(fig, path)
