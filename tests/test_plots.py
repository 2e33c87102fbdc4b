"""Fast tests for tasks.reports.figures: every figure is a valid PNG, saved atomically,
figures closed."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from tasks.reports.figures import baseline as figures_baseline
from tasks.reports.figures import common as figures
from tasks.reports.figures import grid as figures_grid
from tasks.reports.figures import random_search as figures_random

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, min_bytes: int = 2000) -> None:
    """``path`` exists, is a PNG, is not trivially small, and no temp file was left beside it."""
    assert path.is_file(), path
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC), path
    assert len(data) > min_bytes, (path, len(data))
    leftovers = [p.name for p in path.parent.iterdir() if ".tmp-" in p.name]
    assert leftovers == []
    assert plt.get_fignums() == [], "figure left open"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def fake_probabilities(rng: np.random.Generator, n: int) -> np.ndarray:
    logits = rng.normal(size=(n, 10)) * 3
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def capture_figure(monkeypatch: pytest.MonkeyPatch) -> list:
    """Make figures.save record the figure (still saving and closing it)."""
    captured: list = []
    real_save = figures.save

    def spy(fig, path):
        captured.append((fig, [ax for ax in fig.axes if ax.images], fig._suptitle))
        return real_save(fig, path)

    monkeypatch.setattr(figures, "save", spy)
    return captured


# --------------------------------------------------------------------------------------------
# Confusion percentages
# --------------------------------------------------------------------------------------------
def test_confusion_percent_columns_are_percent_of_predicted_class() -> None:
    percent = figures_baseline.confusion_percent([0, 0, 1], [0, 1, 1], n_classes=2)
    np.testing.assert_allclose(percent[:, 0], [100.0, 0.0])
    np.testing.assert_allclose(percent[:, 1], [50.0, 50.0])


def test_confusion_percent_never_predicted_column_is_nan(rng: np.random.Generator) -> None:
    y_true = rng.integers(0, 10, 200)
    y_pred = np.where(y_true == 3, 4, y_true)  # class 3 is never predicted
    percent = figures_baseline.confusion_percent(y_true, y_pred)
    assert percent.shape == (10, 10)
    assert np.isnan(percent[:, 3]).all()
    others = np.delete(percent, 3, axis=1)
    np.testing.assert_allclose(others.sum(axis=0), 100.0)
    assert percent[3, 4] > 0  # true 3 shows up in the "predicted 4" column


def test_confusion_percent_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        figures_baseline.confusion_percent([0, 1], [0])
    with pytest.raises(ValueError):
        figures_baseline.confusion_percent([0, 10], [0, 1], n_classes=10)


# --------------------------------------------------------------------------------------------
# Each figure
# --------------------------------------------------------------------------------------------
def test_plot_history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    history = [
        {
            "epoch": e,
            "train_loss": 1 / e,
            "train_accuracy": 1 - 0.5 / e,
            "val_loss": 1.1 / e,
            "val_accuracy": 1 - 0.6 / e,
        }
        for e in range(1, 6)
    ]
    captured = capture_figure(monkeypatch)
    out = figures_baseline.plot_history(history, tmp_path / "history.png")
    assert out == tmp_path / "history.png"
    assert_png(out)
    fig = captured[0][0]
    assert "without dropout" in fig._suptitle.get_text()
    by_title = {ax.get_title(): ax for ax in fig.axes}
    assert set(by_title) == {"Accuracy", "Loss"}
    lines = {line.get_label(): line for line in by_title["Loss"].get_lines()}
    train = next(line for label, line in lines.items() if "train" in label.lower())
    np.testing.assert_allclose(train.get_xdata(), [1, 2, 3, 4, 5])
    np.testing.assert_allclose(train.get_ydata(), [1 / e for e in range(1, 6)])


def test_plot_history_rejects_missing_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="val_loss"):
        figures_baseline.plot_history(
            [{"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5, "val_accuracy": 0.5}],
            tmp_path / "h.png",
        )
    assert plt.get_fignums() == []


def test_plot_confusion(tmp_path: Path, rng: np.random.Generator,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    captured = capture_figure(monkeypatch)
    y_true = rng.integers(0, 10, 500)
    y_pred = np.where(rng.random(500) < 0.9, y_true, rng.integers(0, 10, 500))
    out = figures_baseline.plot_confusion(y_true, y_pred, str(tmp_path / "confusion.png"))
    assert isinstance(out, Path)
    assert_png(out)
    fig, image_axes, _ = captured[0]
    (ax,) = image_axes
    assert ax.get_title() == "Confusion matrix (% of each predicted class)"
    drawn = np.ma.filled(ax.images[0].get_array(), np.nan)
    expected = figures_baseline.confusion_percent(y_true, y_pred)
    np.testing.assert_allclose(drawn, expected, equal_nan=True)
    assert len(ax.texts) == 100  # every cell annotated


def test_plot_predictions(tmp_path: Path, rng: np.random.Generator,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    captured = capture_figure(monkeypatch)
    for n in (3, 10):
        labels = rng.integers(0, 10, n)
        out = figures_baseline.plot_predictions(
            fake_probabilities(rng, n),
            rng.random((n, 28, 28)),
            labels,
            tmp_path / f"pred{n}.png",
            title=f"first {n} test images",
        )
        assert_png(out)
        fig, image_axes, suptitle = captured[-1]
        assert suptitle.get_text() == f"first {n} test images"
        assert len(image_axes) == n  # one image per sample, each beside its bars
        bar_titles = [ax.get_title() for ax in fig.axes if ax.patches]
        assert [int(t.split()[1]) for t in bar_titles] == list(labels)


def test_plot_predictions_accepts_flat_images(tmp_path: Path, rng: np.random.Generator) -> None:
    out = figures_baseline.plot_predictions(
        fake_probabilities(rng, 2),
        rng.random((2, 784)),
        [1, 2],
        tmp_path / "flat.png",
        title="flat",
    )
    assert_png(out)


def test_plot_prediction(tmp_path: Path, rng: np.random.Generator,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.colors import to_rgba

    captured = capture_figure(monkeypatch)
    probability = np.full(10, 0.02)
    probability[2] = 0.82  # predicted 2, truly 7: a wrong prediction
    out = figures_baseline.plot_prediction(probability, rng.random((28, 28)), 7,
                                           tmp_path / "one.png")
    assert_png(out)
    fig = captured[0][0]
    (bars,) = [ax for ax in fig.axes if ax.patches]
    np.testing.assert_allclose([p.get_width() for p in bars.patches], probability)
    colours = [p.get_facecolor() for p in bars.patches]
    with plt.style.context("default"):  # the figures' style, whatever pyplot's is now
        assert colours[7] == to_rgba("C1")  # the true class
        assert colours[2] == to_rgba("C3")  # the wrong prediction
        assert colours[0] == to_rgba("C0")
    assert bars.get_title() == "true 7 / predicted 2"


@pytest.mark.parametrize("k", [0, 5, 40])
def test_plot_misclassified_grid(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, k: int
) -> None:
    captured = capture_figure(monkeypatch)
    images = rng.random((k, 28, 28))
    out = figures_baseline.plot_misclassified_grid(
        images, rng.integers(0, 10, k), rng.integers(0, 10, k), tmp_path / "mis.png"
    )
    assert_png(out)
    ((_, image_axes, suptitle),) = captured
    assert len(image_axes) == min(k, 32)
    if k:
        assert image_axes[0].get_title().count("→") == 1
    else:
        assert "true→predicted" in suptitle.get_text()


def test_plot_grid_heatmap_with_duplicates_and_failures(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    df = pd.DataFrame(
        {
            "dropout": [0.0, 0.0, 0.0, 0.3, 0.3, 0.5],
            "units": [32, 32, 128, 32, 128, 32],
            "test_accuracy": [0.95, 0.97, 0.975, np.nan, 0.98, 0.96],
        }
    )  # (0.5, 128) was never run; (0.3, 32) failed; (0.0, 32) is averaged
    captured = capture_figure(monkeypatch)
    out = figures_grid.plot_grid_heatmap(df, tmp_path / "heat.png", title="test accuracy")
    assert_png(out)
    (ax,) = captured[0][1]
    assert ax.get_title() == "test accuracy"
    drawn = np.ma.filled(ax.images[0].get_array(), np.nan)
    np.testing.assert_allclose(drawn, [[0.96, 0.975], [np.nan, 0.98], [0.96, np.nan]])
    assert [t.get_text() for t in ax.texts] == ["0.960", "0.975", "failed", "0.980", "0.960",
                                                "not run"]


def test_plot_grid_heatmap_missing_column(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="units"):
        figures_grid.plot_grid_heatmap(
            pd.DataFrame({"dropout": [0.1], "test_accuracy": [0.9]}), tmp_path / "x.png"
        )


def test_plot_best_of_n(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    n = np.array([1, 2, 5, 10, 20, 50])
    df = pd.DataFrame(
        {
            "n": n,
            "val_selected_test_mean": 0.95 + 0.005 * np.log(n),
            "val_selected_test_std": 0.01 / np.sqrt(n),
            "max_test_mean": 0.951 + 0.006 * np.log(n),
            "max_test_std": 0.008 / np.sqrt(n),
        }
    )
    captured = capture_figure(monkeypatch)
    out = figures_random.plot_best_of_n(df, tmp_path / "best.png",
                                        reference={10: (0.975, 0.006)})
    assert_png(out)
    (ax,) = captured[0][0].axes
    assert ax.get_title() == "Max accuracy estimate" and ax.get_xscale() == "log"
    assert ax.get_xlabel() == "N (random trials)"
    honest, optimistic, notebook = ax.containers  # three error-bar series
    x, y = honest.lines[0].get_data()
    np.testing.assert_allclose(x, n)
    np.testing.assert_allclose(y, df["val_selected_test_mean"])
    bars = honest.lines[2][0].get_segments()
    np.testing.assert_allclose([seg[1][1] - seg[0][1] for seg in bars],
                               2 * df["val_selected_test_std"])
    np.testing.assert_allclose(optimistic.lines[0].get_data()[0], n * 1.04)  # side by side
    np.testing.assert_allclose(notebook.lines[0].get_data()[1], [0.975])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "test accuracy of the best-by-validation trial",
        "max test accuracy (the notebook's number, selected on test)",
        "the notebook's printout (max test accuracy)"]


def test_plot_accuracy_vs_hyperparameters(tmp_path: Path, rng: np.random.Generator,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    n = 40
    df = pd.DataFrame(
        {
            "batch_size": rng.choice([32, 128, 1000], n),
            "units": rng.choice([16, 64, 256], n),
            "learning_rate": rng.choice([1e-4, 1e-3, 1e-2], n),
            "activation": rng.choice(["relu", "elu", "tanh", "sigmoid"], n),
            "dropout": rng.choice([0.0, 0.2, 0.5], n),
            "val_accuracy": rng.uniform(0.85, 0.98, n),
        }
    )
    df.loc[:3, "val_accuracy"] = np.nan
    params = ["batch_size", "units", "learning_rate", "activation", "dropout"]
    captured = capture_figure(monkeypatch)
    out = figures_random.plot_accuracy_vs_hyperparameters(df, tmp_path / "hp.png", params)
    assert_png(out)
    fig = captured[0][0]
    assert fig._suptitle.get_text() == "What mattered: val_accuracy per hyperparameter"
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == params
    out = figures_random.plot_accuracy_vs_hyperparameters(df.iloc[:4], tmp_path / "none.png",
                                                          params)
    assert_png(out, min_bytes=500)


# --------------------------------------------------------------------------------------------
# Atomic saving
# --------------------------------------------------------------------------------------------
def test_save_is_atomic_and_cleans_up_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "sub" / "fig.png"
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    assert figures.save(fig, target) == target
    assert_png(target, min_bytes=500)
    before = target.read_bytes()

    seen: list[str] = []
    fig, _ = plt.subplots()

    def broken_savefig(fname, **kwargs):
        seen.append(Path(fname).name)
        Path(fname).write_bytes(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(fig, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        figures.save(fig, target)
    assert seen and seen[0].startswith(".tmp-") and seen[0].endswith("fig.png")
    assert target.read_bytes() == before  # old file untouched
    assert sorted(p.name for p in target.parent.iterdir()) == ["fig.png"]
    assert plt.get_fignums() == []


def test_many_calls_do_not_leak_figures(tmp_path: Path) -> None:
    for i in range(10):
        figures_baseline.plot_prediction(np.full(10, 0.1), np.zeros((28, 28)), 3,
                                         tmp_path / f"p{i}.png")
    assert plt.get_fignums() == []


def test_concurrent_calls_from_threads(tmp_path: Path) -> None:
    def one(i: int) -> Path:
        probability = np.full(10, 0.05)
        probability[i % 10] = 0.55
        return figures_baseline.plot_prediction(probability, np.zeros((28, 28)), i % 10,
                                                tmp_path / "same.png")

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(one, range(8)))
    assert results == [tmp_path / "same.png"] * 8
    assert_png(tmp_path / "same.png")
