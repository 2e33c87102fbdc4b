"""Reports at the sizes users run, from synthetic results (no training): the default study's
400-trial pool with N up to 200, the exercise's repeats protocol (3 x (10+20+50+100+200)
draws), the 25-cell grid, the combined exercise report, and a report step that fails.

Each test reads back what was written: table values, figure titles, the points and error bars
drawn, not only that a file exists.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import spy_figures
from matplotlib.container import ErrorbarContainer

from tasks.config import TrialConfig, trial_key
from tasks.errors import ReportError
from tasks.reports.exercise import write_exercise_report
from tasks.reports.figures import random_search as figures_random
from tasks.reports.grid import write_grid_report
from tasks.reports.random_search import write_random_report
from tasks.search.best_of_n import (
    NOTEBOOK_BEST_OF_N,
    StudyPlan,
    expected_best_of_n,
    study_configs,
)
from tasks.search.space import DEFAULT_GRID, DEFAULT_RANDOM_SPACE, expand_grid
from tasks.trial.task import TrialResult

FINGERPRINT = "f" * 20


def fake_result(config: TrialConfig, rng: np.random.Generator) -> TrialResult:
    """A completed trial with plausible accuracies that grow with units (no training)."""
    base = 0.90 + 0.08 * math.log(config.units, 512) - 0.05 * (config.learning_rate >= 0.1)
    val = float(np.clip(base + rng.normal(0, 0.01), 0.05, 0.999))
    test = float(np.clip(val - 0.005 + rng.normal(0, 0.004), 0.05, 0.999))
    return TrialResult(
        trial_key=trial_key(config, FINGERPRINT), config=config, data_fingerprint=FINGERPRINT,
        train_loss=0.1, train_accuracy=val + 0.01, val_loss=0.1, val_accuracy=val,
        test_loss=0.12, test_accuracy=test, best_epoch=config.epochs, train_seconds=3.0,
        param_count=784 * config.units + config.units + 10 * config.units + 10,
        history=[{"epoch": e, "train_loss": 0.2, "train_accuracy": 0.9, "val_loss": 0.2,
                  "val_accuracy": 0.9} for e in range(1, config.epochs + 1)])


def results_for(configs: list[TrialConfig], seed: int = 0) -> list[TrialResult]:
    """One result per config, the same result for a repeated config (as the cache gives)."""
    rng = np.random.default_rng(seed)
    by_key: dict[str, TrialResult] = {}
    return [by_key.setdefault(c.canonical_json(), fake_result(c, rng)) for c in configs]


def errorbar_series(fig) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """label -> (x, y, half-length of each error bar) of every errorbar series on the axes."""
    (ax,) = fig.axes
    series = {}
    for container in ax.containers:
        assert isinstance(container, ErrorbarContainer)
        line, _caps, (bars,) = container.lines
        x, y = line.get_data()
        half = np.array([abs(seg[1][1] - seg[0][1]) / 2 for seg in bars.get_segments()])
        series[container.get_label()] = (np.asarray(x), np.asarray(y), half)
    return series


def run_study(plan: StudyPlan, tmp_path: Path) -> tuple[Path, list[TrialResult], dict]:
    draws = study_configs(plan, DEFAULT_RANDOM_SPACE, seed=0)
    configs = [c for draw in draws.values() for c in draw]
    results = results_for(configs)
    by_config = {r.config.canonical_json(): r.trial_key for r in results}
    keys = {draw: [by_config[c.canonical_json()] for c in chosen]
            for draw, chosen in draws.items()}
    folder = write_random_report(results, DEFAULT_RANDOM_SPACE, plan,
                                 [(n, r, k) for (n, r), k in keys.items()], tmp_path,
                                 len(configs))
    return folder, results, keys


def test_default_pool_study_report_400_trials_n_up_to_200(tmp_path, monkeypatch):
    figures = spy_figures(monkeypatch)
    plan = StudyPlan()  # N in 10..200, a pool of 400: C(400, 10) ~ 2.6e19 subsets
    folder, results, _ = run_study(plan, tmp_path)

    trials = pd.read_parquet(folder / "trials.parquet")
    assert len(trials) == 400 and trials["trial_key"].is_unique
    table = pd.read_parquet(folder / "best_of_n.parquet")
    assert table["n"].tolist() == [10, 20, 50, 100, 200]
    assert table["samples"].iloc[0] == pytest.approx(math.comb(400, 10), rel=1e-12)
    assert table["samples"].iloc[-1] == pytest.approx(math.comb(400, 200), rel=1e-12)
    assert (table["pool_size"] == 400).all()
    val, test = trials["val_accuracy"].to_numpy(), trials["test_accuracy"].to_numpy()
    for row in table.itertuples():
        mean, std = expected_best_of_n(val, test, row.n)
        assert row.val_selected_test_mean == pytest.approx(mean)
        assert row.val_selected_test_std == pytest.approx(std)
    # the best of more trials is better on average and less spread
    assert table["max_test_mean"].is_monotonic_increasing
    assert table["max_test_std"].iloc[-1] < table["max_test_std"].iloc[0]
    assert table["max_test_mean"].iloc[-1] <= test.max() + 1e-12

    names = [name for name, _ in figures]
    assert names.count("best_of_n.png") == 1
    fig = dict(figures)["best_of_n.png"]
    assert fig.axes[0].get_title() == "Max accuracy estimate"
    series = errorbar_series(fig)
    x, y, half = series["test accuracy of the best-by-validation trial"]
    np.testing.assert_allclose(x, [10, 20, 50, 100, 200])
    np.testing.assert_allclose(y, table["val_selected_test_mean"])
    np.testing.assert_allclose(half, table["val_selected_test_std"], atol=1e-12)
    x, y, half = series["max test accuracy (the notebook's number, selected on test)"]
    np.testing.assert_allclose(y, table["max_test_mean"])
    # the notebook's own points are drawn beside ours (the study searched its space)
    x, y, half = series["the notebook's printout (max test accuracy)"]
    np.testing.assert_allclose(y, [NOTEBOOK_BEST_OF_N[n][0] for n in sorted(NOTEBOOK_BEST_OF_N)])
    np.testing.assert_allclose(half, [NOTEBOOK_BEST_OF_N[n][1]
                                      for n in sorted(NOTEBOOK_BEST_OF_N)], atol=1e-12)
    report = (folder / "report.md").read_text()
    assert "![Max accuracy estimate](best_of_n.png)" in report
    # the table people read stays readable: C(400, 200) ~ 1e119 is not written out in full
    text = (folder / "best_of_n.txt").read_text()
    assert "| 2.58e+19 " in text and "1.03e+119" in text
    assert max(len(line) for line in text.splitlines()) < 200
    assert (folder / "best_of_n.png").stat().st_size > 0


def test_exercise_repeats_protocol_report_3_x_380_draws(tmp_path, monkeypatch):
    figures = spy_figures(monkeypatch)
    plan = StudyPlan(protocol="repeats", repeats=3)
    folder, results, keys = run_study(plan, tmp_path)
    assert len(results) == 3 * (10 + 20 + 50 + 100 + 200)
    by_key = {r.trial_key: r for r in results}
    table = pd.read_parquet(folder / "best_of_n.parquet")
    assert table["n"].tolist() == [10, 20, 50, 100, 200]
    assert (table["samples"] == 3).all()
    for row in table.itertuples():
        draws = [[by_key[k] for k in keys[(row.n, r)]] for r in range(3)]
        picked = [max(d, key=lambda t: t.val_accuracy).test_accuracy for d in draws]
        maxima = [max(t.test_accuracy for t in d) for d in draws]
        assert row.val_selected_test_mean == pytest.approx(np.mean(picked))
        assert row.val_selected_test_std == pytest.approx(np.std(picked))
        assert row.max_test_mean == pytest.approx(np.mean(maxima))
    series = errorbar_series(dict(figures)["best_of_n.png"])
    _, y, half = series["max test accuracy (the notebook's number, selected on test)"]
    np.testing.assert_allclose(y, table["max_test_mean"])
    np.testing.assert_allclose(half, table["max_test_std"], atol=1e-12)
    trials = pd.read_parquet(folder / "trials.parquet")
    assert len(trials) == len(by_key)  # one row per distinct trial


def test_default_grid_report_25_cells(tmp_path, monkeypatch):
    figures = spy_figures(monkeypatch)
    results = results_for(expand_grid(DEFAULT_GRID))
    folder = write_grid_report(results, DEFAULT_GRID, tmp_path, wall_seconds=100.0)
    trials = pd.read_parquet(folder / "trials.parquet")
    assert len(trials) == 25
    fig = dict(figures)["heatmap_test_accuracy.png"]
    ax = fig.axes[0]
    assert ax.get_title() == "test accuracy: dropout x units"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["16", "32", "64", "128", "256"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "0.1", "0.3", "0.5", "0.8"]
    expected = trials.pivot(index="dropout", columns="units", values="test_accuracy")
    np.testing.assert_allclose(ax.images[0].get_array(), expected.to_numpy())
    cell_texts = [t.get_text() for t in ax.texts]
    assert len(cell_texts) == 25
    assert cell_texts == [f"{v:.3f}" for v in expected.to_numpy().ravel()]
    results_txt = (folder / "results.txt").read_text()
    assert results_txt.count("neurons -> accuracy") == 25


def test_exercise_combined_report_links_every_figure(tmp_path, monkeypatch):
    spy_figures(monkeypatch)
    grid = write_grid_report(results_for(expand_grid(DEFAULT_GRID)), DEFAULT_GRID, tmp_path)
    study, _, _ = run_study(StudyPlan(), tmp_path)
    folder = write_exercise_report({"grid": str(grid), "random": str(study)}, tmp_path)
    report = (folder / "report.md").read_text()
    assert "# Grid search" in report and "# Random search" in report
    links = re.findall(r"\]\(([^)]+\.png)\)", report)
    assert any(link.endswith("best_of_n.png") for link in links)
    assert any(link.endswith("heatmap_test_accuracy.png") for link in links)
    for link in links:  # every image the combined page shows exists where it points
        assert (folder / link).resolve().is_file(), link


def test_a_failing_report_step_keeps_the_results_and_names_the_step(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OverflowError("Python int too large to convert to C long")

    monkeypatch.setattr(figures_random, "plot_best_of_n", broken)
    with pytest.raises(ReportError, match="report step 'best-of-N figure' failed") as error:
        run_study(StudyPlan(n_values=[10, 20], pool_size=40), tmp_path)
    assert "\n" not in str(error.value)  # one line
    (folder,) = [p for p in tmp_path.iterdir() if p.name.startswith("random-")]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".staging")]
    assert len(pd.read_parquet(folder / "trials.parquet")) == 40  # the results are safe
    assert "best-of-N figure" in (folder / "REPORT_FAILED.txt").read_text()
    assert str(folder / "trials.parquet") in str(error.value)
    # fixed, a rerun from the same (cached) results writes the whole report
    monkeypatch.undo()
    spy_figures(monkeypatch)
    again, _, _ = run_study(StudyPlan(n_values=[10, 20], pool_size=40), tmp_path)
    assert (again / "best_of_n.png").is_file() and not (again / "REPORT_FAILED.txt").exists()


def test_a_report_folder_a_killed_run_left_half_written_is_removed_by_the_next_run(tmp_path):
    """A run killed mid-report leaves its hidden staging folder; the next report removes it,
    but never a live run's."""
    import subprocess
    import sys

    from tasks.reports.folder import RunFolder, staging_prefix

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    abandoned = tmp_path / f"{staging_prefix(int(dead))}grid-20261206-010101-abcd"
    live = tmp_path / f"{staging_prefix()}grid-20261206-020202-ef01"
    for folder in (abandoned, live):
        folder.mkdir()
        (folder / "trials.parquet").write_bytes(b"half")
    with RunFolder(tmp_path, "grid") as run:
        (run.path / "report.md").write_text("done\n")
    assert not abandoned.exists() and live.exists()
    assert (run.final / "report.md").read_text() == "done\n"


def test_the_notebooks_points_are_drawn_beside_a_study_of_mnist_only(tmp_path, monkeypatch):
    """The notebook's printed best-of-N is MNIST's: a Fashion-MNIST study over the same space
    draws its own points alone."""
    figures = spy_figures(monkeypatch)
    plan = StudyPlan(n_values=[10, 20], pool_size=40)
    draws = study_configs(plan, DEFAULT_RANDOM_SPACE, seed=0)
    configs = [c for draw in draws.values() for c in draw]
    results = results_for(configs)
    by_config = {r.config.canonical_json(): r.trial_key for r in results}
    keys = [(n, r, [by_config[c.canonical_json()] for c in chosen])
            for (n, r), chosen in draws.items()]
    for dataset, drawn in (("Fashion-MNIST", False), ("MNIST", True)):
        write_random_report(results, DEFAULT_RANDOM_SPACE, plan, keys, tmp_path / dataset,
                            len(configs), dataset=dataset)
        series = errorbar_series(dict(figures)["best_of_n.png"])
        assert ("the notebook's printout (max test accuracy)" in series) is drawn
        figures.clear()
