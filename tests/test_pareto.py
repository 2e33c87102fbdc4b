"""Accuracy against size: the Pareto front and "the smallest network within 0.005 of the best"
against brute force on synthetic trials (ties, failed and pruned rows, NaNs), the figure's
marked points, and the report section's files (synthetic results, no training)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from conftest import spy_figures
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Annotation

from tasks.config import trial_key
from tasks.reports.figures import pareto as figures_pareto
from tasks.reports.pareto import write_pareto
from tasks.search.pareto import (
    format_cost,
    most_accurate,
    pareto_front,
    smallest_within,
    trial_label,
    usable_trials,
)
from tasks.search.space import DEFAULT_RANDOM_SPACE, sample_configs

FINGERPRINT = "p" * 20


# --------------------------------------------------------------------------------------------
# Synthetic trials
# --------------------------------------------------------------------------------------------
def param_count(units: int) -> int:
    """Dense(784 -> units) + Dense(units -> 10), with biases."""
    return 784 * units + units + units * 10 + 10


def plausible_accuracy(config, rng: np.random.Generator) -> float:
    """A made-up but MNIST-like validation accuracy after 10 epochs: grows with units, drops
    with a learning rate far from 1e-3 (a step of 0.1 can kill the network: chance level),
    with heavy dropout on a small layer, a little with sigmoid."""
    acc = 0.985 - 0.1 * (8 / config.units) ** 0.8
    steps = math.log10(config.learning_rate * math.sqrt(32 / config.batch_size))
    if steps < -3:
        acc -= 0.025 * (-3 - steps) ** 2
    elif config.learning_rate >= 0.1:
        if rng.random() < (0.6 if config.activation in ("relu", "elu") else 0.25):
            return float(rng.uniform(0.09, 0.2))
        acc -= rng.uniform(0.03, 0.2)
    elif config.learning_rate >= 0.01:
        acc -= 0.012
    acc -= 0.25 * config.dropout ** 2 * (8 / config.units) ** 0.5
    acc -= {"sigmoid": 0.01, "tanh": 0.004}.get(config.activation, 0.0)
    return float(np.clip(acc + rng.normal(0, 0.0015), 0.08, 0.995))


def synthetic_search(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """A random search of ``n`` configs of the exercise's space, as a trials frame: accuracies
    counted on 2000 validation images, a test accuracy near it, one failed trial."""
    rng = np.random.default_rng(seed)
    rows = []
    for k, config in enumerate(sample_configs(DEFAULT_RANDOM_SPACE, n, seed)):
        failed = k == 7
        val = round(plausible_accuracy(config, rng) * 2000) / 2000
        test = float(np.clip(val + rng.normal(-0.002, 0.003), 0.0, 1.0))
        rows.append({
            "trial_key": trial_key(config, FINGERPRINT), **config.model_dump(),
            "val_accuracy": None if failed else val,
            "test_accuracy": None if failed else test,
            "train_seconds": None if failed else 20 + config.units / 8,
            "param_count": None if failed else param_count(config.units),
            "status": "failed" if failed else "completed",
        })
    return pd.DataFrame(rows)


def continuous_search(n: int = 300, seed: int = 1) -> pd.DataFrame:
    """A model-based search's trials: units on a log range, so many distinct sizes and a
    front of many points."""
    rng = np.random.default_rng(seed)
    units = np.unique(np.round(np.exp(rng.uniform(np.log(8), np.log(1024), n))).astype(int))
    rows = []
    for k, u in enumerate(units):
        lr = float(10 ** rng.uniform(-4, -2))
        val = float(np.clip(0.985 - 0.09 * (8 / u) ** 0.6 - 0.01 * abs(math.log10(lr) + 3)
                            + rng.normal(0, 0.003), 0, 1))
        rows.append(dict(trial_key=f"t{k:04d}", units=int(u), dropout=float(rng.uniform(0, 0.5)),
                         activation="relu", learning_rate=lr, batch_size=64,
                         val_accuracy=val, test_accuracy=val - 0.001,
                         param_count=param_count(int(u)), status="completed"))
    return pd.DataFrame(rows)


def random_frame(seed: int, n: int = 60) -> pd.DataFrame:
    """Trials with many ties: few distinct costs, accuracies on a coarse grid; some failed,
    pruned (with a tempting accuracy), missing values and a repeated trial key."""
    rng = np.random.default_rng(seed)
    level = rng.integers(0, 6, size=n)
    frame = pd.DataFrame({
        "trial_key": [f"k{i:03d}" for i in rng.permutation(n)],
        "status": rng.choice(["completed"] * 8 + ["failed", "pruned"], size=n),
        "param_count": np.array([100, 200, 300, 500, 800, 1300], dtype=float)[level],
        # larger is better on the whole, on a grid of 0.01: many ties, a front of several
        "val_accuracy": (80 + 3 * level + rng.integers(-4, 3, size=n)) / 100,
        "latency_ms": rng.choice([1.0, 1.5, 2.0, 4.0], size=n),
    })
    frame.loc[frame["status"] == "pruned", "val_accuracy"] = 0.999
    frame.loc[rng.random(n) < 0.05, "val_accuracy"] = np.nan
    frame.loc[rng.random(n) < 0.05, "param_count"] = np.nan
    frame.loc[frame["status"] == "failed", ["val_accuracy", "param_count"]] = np.nan
    # the same trial twice (cached and trained in one run): counts once
    return pd.concat([frame, frame.iloc[[0, 3]]], ignore_index=True)


# --------------------------------------------------------------------------------------------
# Brute force
# --------------------------------------------------------------------------------------------
def usable(frame: pd.DataFrame, accuracy: str, cost: str) -> list[tuple[str, float, float]]:
    seen, rows = set(), []
    for row in frame.itertuples(index=False):
        key = row.trial_key
        if row.status != "completed" or key in seen:
            continue
        seen.add(key)
        acc, c = getattr(row, accuracy), getattr(row, cost)
        if not (np.isnan(acc) or np.isnan(c)):
            rows.append((key, float(acc), float(c)))
    return rows


def brute_front(frame, accuracy="val_accuracy", cost="param_count") -> list[str]:
    """O(n^2): no other trial costs <= and is >= as accurate with one strict; of identical
    (cost, accuracy) trials, the first by key. Sorted by cost."""
    rows = usable(frame, accuracy, cost)
    front = []
    for key, acc, c in rows:
        dominated = any(c2 <= c and a2 >= acc and (c2 < c or a2 > acc) for _, a2, c2 in rows)
        twin_first = any(k2 < key and a2 == acc and c2 == c for k2, a2, c2 in rows)
        if not dominated and not twin_first:
            front.append((c, key))
    return [key for _, key in sorted(front)]


def brute_smallest(frame, tolerance, accuracy="val_accuracy", cost="param_count") -> str:
    rows = usable(frame, accuracy, cost)
    best = max(acc for _, acc, _ in rows)
    within = [r for r in rows if r[1] >= best - tolerance - 1e-12]
    return min(within, key=lambda r: (r[2], -r[1], r[0]))[0]


# --------------------------------------------------------------------------------------------
# The front and the smallest network within a tolerance
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("cost", ["param_count", "latency_ms"])
def test_front_agrees_with_brute_force(seed, cost):
    frame = random_frame(seed)
    front = pareto_front(frame, cost=cost)
    assert front["trial_key"].tolist() == brute_front(frame, cost=cost)
    assert (front["status"] == "completed").all()
    # a staircase: strictly cheaper and strictly less accurate to the left
    assert (np.diff(front[cost]) > 0).all() and (np.diff(front["val_accuracy"]) > 0).all()
    assert list(front.columns) == list(frame.columns)


def test_front_of_a_400_trial_search_agrees_with_brute_force():
    frame = synthetic_search(400, 0)
    assert pareto_front(frame)["trial_key"].tolist() == brute_front(frame)
    frame = continuous_search(300, 1)
    assert pareto_front(frame)["trial_key"].tolist() == brute_front(frame)


def test_front_tie_rules():
    frame = pd.DataFrame({
        "trial_key": ["e", "d", "c", "b", "a", "f"],
        "status": ["completed"] * 5 + ["pruned"],
        "param_count": [100, 100, 100, 200, 200, 50],
        "val_accuracy": [0.90, 0.95, 0.95, 0.95, 0.97, 0.99],
    })
    # c and d tie (same size, same accuracy): c, first by key; e: same size, less accurate;
    # b: as accurate as c, larger; the pruned f does not count
    assert pareto_front(frame)["trial_key"].tolist() == ["c", "a"]
    # without trial keys: the first in the frame
    no_keys = frame.drop(columns="trial_key")
    assert pareto_front(no_keys)["val_accuracy"].tolist() == [0.95, 0.97]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("tolerance", [0.0, 0.005, 0.03, 0.1])
def test_smallest_within_agrees_with_brute_force(seed, tolerance):
    frame = random_frame(seed)
    chosen = smallest_within(frame, tolerance)
    assert chosen["trial_key"] == brute_smallest(frame, tolerance)
    assert chosen["trial_key"] in pareto_front(frame)["trial_key"].tolist()


def test_smallest_within_counts_exactly_the_tolerance_as_within():
    # 0.975 is exactly 0.005 below 0.98 (counts of 2000 images), though 0.98 - 0.005 rounds
    # to a float above 0.975 on some platforms: within
    frame = pd.DataFrame({"trial_key": ["big", "mid", "small"], "status": ["completed"] * 3,
                          "param_count": [400_000, 100_000, 10_000],
                          "val_accuracy": [0.98, 0.975, 0.9745]})
    assert smallest_within(frame)["trial_key"] == "mid"
    assert smallest_within(frame, 0.0055)["trial_key"] == "small"
    assert smallest_within(frame, 0)["trial_key"] == most_accurate(frame)["trial_key"] == "big"
    with pytest.raises(ValueError, match="tolerance"):
        smallest_within(frame, -0.1)


def test_nothing_usable():
    frame = pd.DataFrame({"trial_key": ["a", "b"], "status": ["failed", "completed"],
                          "param_count": [None, None], "val_accuracy": [None, 0.9]})
    assert pareto_front(frame).empty and usable_trials(frame).empty
    assert smallest_within(frame) is None and most_accurate(frame) is None
    with pytest.raises(ValueError, match="latency_ms"):
        pareto_front(frame, cost="latency_ms")


def test_labels_and_costs():
    row = pd.Series({"units": 128, "dropout": 0.2, "activation": "relu",
                     "learning_rate": 0.001, "batch_size": 32})
    assert trial_label(row) == "128u d0.2 relu lr1e-3 b32"
    tuned = row.copy()
    tuned["dropout"], tuned["learning_rate"] = 0.23456, 3.47e-4
    assert trial_label(tuned) == "128u d0.23 relu lr3.5e-4 b32"
    assert trial_label({"units": 8, "dropout": 0.0}) == "8u d0"
    assert format_cost(101770.0) == "101,770" and format_cost(2.345, "latency_ms") == "2.35"


# --------------------------------------------------------------------------------------------
# The figure
# --------------------------------------------------------------------------------------------
def lines_by_label(ax) -> dict:
    return {line.get_label(): line for line in ax.get_lines()}


def test_figure_marks_the_front_and_the_smallest_within(tmp_path, monkeypatch):
    captured = spy_figures(monkeypatch)
    frame = random_frame(3)
    front = pareto_front(frame)
    # accuracies on a grid of 0.01: a tolerance of 0.03 makes the answer a smaller network
    path = figures_pareto.plot_pareto(frame, front, tmp_path / "pareto.png", tolerance=0.03)
    assert path.is_file() and path.stat().st_size > 0
    ((name, fig),) = captured
    assert name == "pareto.png"
    (ax,) = fig.axes
    assert ax.get_xscale() == "log"
    assert ax.get_xlabel() == "Trainable parameters (log scale)"
    assert ax.get_ylabel() == "Validation accuracy"
    lines = lines_by_label(ax)
    (marked,) = [line for label, line in lines.items() if label.startswith("Pareto front")]
    x, y = marked.get_data()
    np.testing.assert_array_equal(x, front["param_count"])
    np.testing.assert_array_equal(y, front["val_accuracy"])
    assert marked.get_marker() == "o" and marked.get_linestyle() == "None"
    (step,) = [line for line in ax.get_lines() if line.get_drawstyle() == "steps-post"]
    np.testing.assert_array_equal(step.get_xdata(), front["param_count"])
    chosen = smallest_within(frame, 0.03)
    highlighted = lines["smallest within 0.03 of the best"]
    assert highlighted.get_marker() != marked.get_marker()
    assert highlighted.get_xdata().tolist() == [chosen["param_count"]]
    assert highlighted.get_ydata().tolist() == [chosen["val_accuracy"]]
    best = lines["best validation accuracy"]
    assert best.get_ydata().tolist() == [front["val_accuracy"].max()]
    dots = ax.collections[0]
    assert len(dots.get_offsets()) == len(usable_trials(frame))
    # labels (here: trial keys, the frame has no hyperparameters) name front points, the
    # best and the highlighted one first
    annotations = [t for t in ax.texts if isinstance(t, Annotation)]
    points = {(c, a): trial_label(r) for (c, a), (_, r) in
              zip(zip(front["param_count"], front["val_accuracy"], strict=True),
                  front.iterrows(), strict=True)}
    assert all(points[tuple(t.xy)] == t.get_text() for t in annotations)
    assert [t.get_text() for t in annotations[:2]] == [best_row := trial_label(
        most_accurate(frame)), trial_label(chosen)] and best_row != trial_label(chosen)


def test_figure_of_a_400_trial_search_focuses_on_the_top(tmp_path, monkeypatch):
    captured = spy_figures(monkeypatch)
    frame = synthetic_search(400, 0)
    front = pareto_front(frame)
    figures_pareto.plot_pareto(frame, front, tmp_path / "pareto.png")
    ((_, fig),) = captured
    (ax,) = fig.axes
    acc = usable_trials(frame)["val_accuracy"]
    low, high = ax.get_ylim()
    assert acc.min() < 0.2 and low >= acc.max() - figures_pareto.Y_WINDOW - 0.01
    assert high > acc.max()
    below = int((acc < low).sum())
    notes = [t.get_text() for t in ax.texts if not isinstance(t, Annotation)]
    assert notes == [f"{below} of {len(acc)} trials below {low:.2f} not shown"]
    # every front point lies in view and carries its label
    assert (front["val_accuracy"] >= low).all()
    labels = [t.get_text() for t in ax.texts if isinstance(t, Annotation)]
    assert sorted(labels) == sorted(trial_label(r) for _, r in front.iterrows())


def test_figure_labels_at_most_twelve_points_that_do_not_overlap(tmp_path, monkeypatch):
    captured = spy_figures(monkeypatch)
    frame = continuous_search(300, 1)
    front = pareto_front(frame)
    assert len(front) > figures_pareto.MAX_LABELS
    figures_pareto.plot_pareto(frame, front, tmp_path / "pareto.png")
    ((_, fig),) = captured
    (ax,) = fig.axes
    renderer = FigureCanvasAgg(fig).get_renderer()  # the figure is closed: a new canvas
    annotations = [t for t in ax.texts if isinstance(t, Annotation)]
    assert 3 <= len(annotations) <= figures_pareto.MAX_LABELS
    boxes = [t.get_window_extent(renderer) for t in annotations]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    # the best and the highlighted trial are labelled first (the highlighted one in bold),
    # then labels spread along the front: the cheapest point has one
    best, chosen = most_accurate(frame), smallest_within(frame)
    assert [a.get_text() for a in annotations[:3]] == [
        trial_label(best), trial_label(chosen), trial_label(front.iloc[0])]
    assert tuple(annotations[1].xy) == (chosen["param_count"], chosen["val_accuracy"])
    assert annotations[1].get_fontweight() == "bold"
    assert annotations[0].get_fontweight() == "normal"


def test_figure_with_fewer_than_two_trials_says_so(tmp_path, monkeypatch):
    captured = spy_figures(monkeypatch)
    frame = random_frame(0).iloc[:0]
    figures_pareto.plot_pareto(frame, pareto_front(frame), tmp_path / "empty.png")
    ((_, fig),) = captured
    assert "0 completed trials" in fig.axes[0].texts[0].get_text()


def test_figure_with_another_cost_column(tmp_path, monkeypatch):
    captured = spy_figures(monkeypatch)
    frame = random_frame(5)
    front = pareto_front(frame, cost="latency_ms")
    figures_pareto.plot_pareto(frame, front, tmp_path / "latency.png", cost="latency_ms")
    ((_, fig),) = captured
    (ax,) = fig.axes
    assert ax.get_xlabel() == "Latency (ms) (log scale)" and ax.get_xscale() == "log"
    (marked,) = [line for label, line in lines_by_label(ax).items()
                 if label.startswith("Pareto front")]
    np.testing.assert_array_equal(marked.get_xdata(), front["latency_ms"])


# --------------------------------------------------------------------------------------------
# The report section
# --------------------------------------------------------------------------------------------
def test_write_pareto_files_and_section(tmp_path):
    frame = synthetic_search(400, 0)
    section = write_pareto(frame, tmp_path)
    front = pareto_front(frame)
    chosen, best = smallest_within(frame), most_accurate(frame)
    assert chosen["trial_key"] != best["trial_key"]

    written = pd.read_parquet(tmp_path / "pareto.parquet")
    assert written["trial_key"].tolist() == front["trial_key"].tolist()
    np.testing.assert_array_equal(written["param_count"], front["param_count"])
    np.testing.assert_array_equal(written["val_accuracy"], front["val_accuracy"])
    assert written["label"].tolist() == [trial_label(r) for _, r in front.iterrows()]
    notes = dict(zip(written["trial_key"], written["note"], strict=True))
    assert notes[chosen["trial_key"]] == "smallest within 0.005 of the best"
    assert notes[best["trial_key"]] == "best"
    assert (tmp_path / "pareto.png").stat().st_size > 0
    text = (tmp_path / "pareto.txt").read_text()
    assert text.startswith("| label") and len(text.splitlines()) == len(front) + 2

    assert section.lstrip().startswith("## Accuracy against size\n")
    sentence = (
        f"Smallest network within 0.005 of the best validation accuracy: "
        f"{trial_label(chosen)}: {round(chosen['param_count']):,} parameters, "
        f"val {chosen['val_accuracy']:.4f}, test {chosen['test_accuracy']:.4f} "
        f"(the best: {trial_label(best)}, {round(best['param_count']):,} parameters, "
        f"val {best['val_accuracy']:.4f})")
    assert sentence in section
    assert "![Accuracy against size](pareto.png)" in section
    assert text.strip() in section


def test_write_pareto_when_the_best_is_the_smallest(tmp_path):
    frame = pd.DataFrame({"trial_key": ["a", "b"], "status": ["completed"] * 2,
                          "units": [8, 32], "dropout": [0.0, 0.0], "activation": ["relu"] * 2,
                          "learning_rate": [1e-3] * 2, "batch_size": [32] * 2,
                          "param_count": [param_count(8), param_count(32)],
                          "val_accuracy": [0.95, 0.94], "test_accuracy": [0.949, 0.941]})
    section = write_pareto(frame, tmp_path)
    assert ("Smallest network within 0.005 of the best validation accuracy: "
            "8u d0 relu lr1e-3 b32: 6,370 parameters, val 0.9500, test 0.9490 "
            "(the best itself)") in section
    assert len(pd.read_parquet(tmp_path / "pareto.parquet")) == 1


def test_write_pareto_needs_two_completed_trials(tmp_path):
    frame = synthetic_search(3, 0).iloc[:1]
    assert write_pareto(frame, tmp_path) == ""
    assert not any(tmp_path.iterdir())


def test_write_pareto_with_another_cost_column(tmp_path):
    frame = random_frame(2)
    section = write_pareto(frame, tmp_path, tolerance=0.03, cost="latency_ms")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "pareto_latency_ms.parquet", "pareto_latency_ms.png", "pareto_latency_ms.txt"]
    chosen = smallest_within(frame, 0.03, cost="latency_ms")
    assert section.lstrip().startswith("## Accuracy against latency\n")
    assert (f"Fastest network within 0.03 of the best validation accuracy: "
            f"{trial_label(chosen)}: {chosen['latency_ms']:.3g} ms") in section
    written = pd.read_parquet(tmp_path / "pareto_latency_ms.parquet")
    assert written["trial_key"].tolist() == brute_front(frame, cost="latency_ms")


def test_figure_refuses_a_cost_of_zero(tmp_path):
    frame = random_frame(1)
    frame.loc[frame["status"] == "completed", "param_count"] = 0.0
    with pytest.raises(ValueError, match="> 0"):
        figures_pareto.plot_pareto(frame, pareto_front(frame), tmp_path / "zero.png")
