"""Expected best accuracy per budget of training minutes: the estimator against a brute force
over every order of a small pool, its edge cases, the figure's content and the random-search
report's files (synthetic results, no training)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from conftest import spy_figures
from matplotlib.collections import PolyCollection

from tasks.config import TrialConfig, trial_key
from tasks.reports.figures import budget as figures_budget
from tasks.reports.random_search import write_random_report
from tasks.search.budget import (
    BUDGET_COLUMNS,
    TRAJECTORY_COLUMNS,
    best_at,
    completed_pool,
    default_budgets,
    expected_best_by_budget,
    trajectory,
)
from tasks.search.space import DEFAULT_RANDOM_SPACE, sample_configs
from tasks.trial.result import TrialResult

FINGERPRINT = "b" * 20

# trials 1 and 4 tie in validation accuracy (different test accuracies): the later one wins
VAL = np.array([0.95, 0.97, 0.93, 0.96, 0.97, 0.94])
TEST = np.array([0.951, 0.962, 0.940, 0.958, 0.968, 0.975])
SECONDS = np.array([60.0, 150.0, 30.0, 90.0, 120.0, 45.0])


def brute_force(val, test, seconds, budget_minutes):
    """Per order of the pool (all of them): trials finished, best-by-validation trial's test
    accuracy (ties: the later trial of the pool), max test accuracy; None if none finished."""
    rows = []
    for order in itertools.permutations(range(len(val))):
        spent, done = 0.0, []
        for i in order:
            spent += seconds[i] / 60.0
            if spent > budget_minutes + 1e-12:
                break
            done.append(i)
        if not done:
            rows.append((0, None, None))
            continue
        best = max(done, key=lambda i: (val[i], i))
        rows.append((len(done), test[best], max(test[i] for i in done)))
    return rows


def all_orders(m: int) -> np.ndarray:
    return np.array(list(itertools.permutations(range(m))), dtype=np.int64)


@pytest.mark.parametrize("budget", [0.5, 1.0, 1.6, 2.5, 3.0, 4.25, 6.0, 7.4, 8.25])
def test_all_orders_agree_with_brute_force(budget):
    table = expected_best_by_budget(VAL, TEST, SECONDS, [budget], orders=all_orders(6))
    (row,) = table.to_dict("records")
    rows = brute_force(VAL, TEST, SECONDS, budget)
    finished = [r for r in rows if r[0] > 0]
    assert row["budget_minutes"] == budget
    assert row["trials_mean"] == pytest.approx(np.mean([r[0] for r in rows]), abs=1e-12)
    assert row["orders_with_trial"] == pytest.approx(len(finished) / len(rows), abs=1e-12)
    for name, k in (("best_val_test", 1), ("max_test", 2)):
        values = np.array([r[k] for r in finished])
        assert row[f"{name}_mean"] == pytest.approx(values.mean(), abs=1e-12)
        assert row[f"{name}_std"] == pytest.approx(values.std(), abs=1e-12)
        assert row[f"{name}_p10"] == pytest.approx(np.percentile(values, 10), abs=1e-12)
        assert row[f"{name}_p90"] == pytest.approx(np.percentile(values, 90), abs=1e-12)


def test_random_orders_approach_the_exact_values():
    budgets = [1.5, 3.0, 5.0, 8.25]
    exact = expected_best_by_budget(VAL, TEST, SECONDS, budgets, orders=all_orders(6))
    sampled = expected_best_by_budget(VAL, TEST, SECONDS, budgets, orders=4000, seed=3)
    for column in ("trials_mean", "best_val_test_mean", "max_test_mean"):
        np.testing.assert_allclose(sampled[column], exact[column], atol=0.06 if column ==
                                   "trials_mean" else 2e-3)
    again = expected_best_by_budget(VAL, TEST, SECONDS, budgets, orders=4000, seed=3)
    pd.testing.assert_frame_equal(sampled, again)  # seeded: reproducible


def test_validation_tie_broken_as_the_best_of_n_study():
    # with the whole pool, the best by validation is trial 4 (tied with 1, later in the pool)
    table = expected_best_by_budget(VAL, TEST, SECONDS, [SECONDS.sum() / 60.0], orders=50)
    assert table["best_val_test_mean"].iloc[0] == pytest.approx(TEST[4])


def test_budget_below_the_cheapest_trial_and_at_the_total():
    total = SECONDS.sum() / 60.0
    table = expected_best_by_budget(VAL, TEST, SECONDS, [0.25, total], orders=300, seed=1)
    below, whole = table.to_dict("records")
    assert below["trials_mean"] == 0 and below["orders_with_trial"] == 0
    assert all(math.isnan(below[c]) for c in BUDGET_COLUMNS if c.startswith(("best", "max")))
    assert whole["trials_mean"] == len(VAL) and whole["orders_with_trial"] == 1
    assert whole["max_test_mean"] == pytest.approx(TEST.max())
    assert whole["max_test_std"] == pytest.approx(0, abs=1e-12)
    assert whole["best_val_test_p10"] == whole["best_val_test_p90"] == pytest.approx(TEST[4])


def test_default_budgets_span_the_pool():
    budgets = default_budgets(SECONDS)
    assert budgets[0] == pytest.approx(0.5) and budgets[-1] == pytest.approx(8.25)
    assert np.all(np.diff(budgets) > 0) and len(budgets) >= 25
    assert {1.0, 2.0, 5.0} <= set(budgets.tolist())
    table = expected_best_by_budget(VAL, TEST, SECONDS, orders=200)
    assert list(table.columns) == list(BUDGET_COLUMNS)
    np.testing.assert_allclose(table["budget_minutes"], budgets)
    assert table["trials_mean"].is_monotonic_increasing
    assert table["trials_mean"].iloc[-1] == len(VAL)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="length"):
        expected_best_by_budget(VAL, TEST[:3], SECONDS, [1.0])
    with pytest.raises(ValueError, match="> 0"):
        expected_best_by_budget(VAL, TEST, np.zeros(6), [1.0])
    with pytest.raises(ValueError, match="permutations"):
        expected_best_by_budget(VAL, TEST, SECONDS, [1.0], orders=np.zeros((2, 6), int))


def test_completed_pool_keeps_completed_trials_with_a_cost():
    frame = pd.DataFrame(dict(
        trial_key=["a", "b", "c", "d", "a", "e"],
        status=["completed", "failed", "completed", "completed", "completed", "pruned"],
        val_accuracy=[0.9, None, 0.8, 0.85, 0.9, 0.7],
        test_accuracy=[0.9, None, 0.8, 0.84, 0.9, 0.7],
        train_seconds=[3.0, 1.0, None, 2.0, 3.0, 1.0]))
    assert completed_pool(frame)["trial_key"].tolist() == ["a", "d"]


def test_figure_draws_a_mean_line_and_a_band_per_measure(tmp_path, monkeypatch):
    captured = spy_figures(monkeypatch)
    table = expected_best_by_budget(VAL, TEST, SECONDS, [0.25, 1.0, 2.0, 4.0, 8.25],
                                    orders=all_orders(6))
    path = figures_budget.plot_best_by_budget(table, tmp_path / "best_by_budget.png")
    assert path.is_file() and path.stat().st_size > 0
    ((name, fig),) = captured
    assert name == "best_by_budget.png"
    (ax,) = fig.axes
    assert ax.get_xscale() == "log"
    assert "minutes" in ax.get_xlabel() and "machine" in ax.get_xlabel()
    assert ax.get_ylabel() == "Accuracy"
    drawn = table[table["best_val_test_mean"].notna()]  # the 0.25-minute budget has no trial
    lines = {line.get_label(): line for line in ax.get_lines()}
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(lines) == 2 and len(bands) == 2
    for measure, band in zip(("best_val_test", "max_test"), bands, strict=True):
        (line,) = [v for k, v in lines.items() if k.startswith(
            "test accuracy" if measure == "best_val_test" else "max test")]
        x, y = line.get_data()
        np.testing.assert_allclose(x, drawn["budget_minutes"])
        np.testing.assert_allclose(y, drawn[f"{measure}_mean"])
        vertices = band.get_paths()[0].vertices
        assert vertices[:, 1].min() == pytest.approx(drawn[f"{measure}_p10"].min())
        assert vertices[:, 1].max() == pytest.approx(drawn[f"{measure}_p90"].max())


def fake_result(config: TrialConfig, rng: np.random.Generator, failed: bool = False
                ) -> TrialResult:
    """A trial without training: accuracies that grow with units, a cost that grows too."""
    key = trial_key(config, FINGERPRINT)
    if failed:
        return TrialResult(trial_key=key, config=config, data_fingerprint=FINGERPRINT,
                           status="failed", error="boom")
    val = float(np.clip(0.9 + 0.08 * math.log(config.units, 512) + rng.normal(0, 0.01),
                        0.05, 0.999))
    test = float(np.clip(val - 0.005 + rng.normal(0, 0.004), 0.05, 0.999))
    return TrialResult(trial_key=key, config=config, data_fingerprint=FINGERPRINT,
                       val_accuracy=val, test_accuracy=test, val_loss=0.1, test_loss=0.1,
                       train_accuracy=val, train_loss=0.1, best_epoch=config.epochs,
                       train_seconds=float(20 + config.units / 4 + rng.uniform(0, 30)),
                       history=[])


def test_random_report_writes_the_budget_files(tmp_path):
    rng = np.random.default_rng(0)
    configs = sample_configs(DEFAULT_RANDOM_SPACE, 12, 0)
    results = [fake_result(c, rng, failed=(k == 3)) for k, c in enumerate(configs)]
    folder = write_random_report(results, DEFAULT_RANDOM_SPACE, reports_dir=tmp_path)

    done = [r for r in results if r.status == "completed"]
    expected = expected_best_by_budget([r.val_accuracy for r in done],
                                       [r.test_accuracy for r in done],
                                       [r.train_seconds for r in done])
    written = pd.read_parquet(folder / "best_by_budget.parquet")
    pd.testing.assert_frame_equal(written, expected)
    assert (folder / "best_by_budget.png").stat().st_size > 0
    text = (folder / "best_by_budget.txt").read_text()
    assert text.startswith("| budget_minutes") and len(text.splitlines()) == len(expected) + 2
    report = (folder / "report.md").read_text()
    assert "## Best accuracy per minute of training" in report
    assert "](best_by_budget.png)" in report
    assert text.strip() in report
    assert report.index("## Best accuracy per minute") < report.index("## What mattered")
    assert (folder / "trials.parquet").is_file() and (folder / "hyperparameters.png").is_file()


def test_random_report_without_a_pool_has_no_budget_section(tmp_path):
    rng = np.random.default_rng(1)
    (config,) = sample_configs(DEFAULT_RANDOM_SPACE, 1, 0)
    folder = write_random_report([fake_result(config, rng)], DEFAULT_RANDOM_SPACE,
                                 reports_dir=tmp_path)
    assert not (folder / "best_by_budget.parquet").exists()
    assert "Best accuracy per minute" not in (folder / "report.md").read_text()


# --------------------------------------------------------------------------------------------
# A real search's trajectory on the same axes
# --------------------------------------------------------------------------------------------
def trajectory_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "status": ["completed", "failed", "pruned", "completed", "completed", "completed"],
        "train_seconds": [60.0, None, 30.0, 90.0, 30.0, 120.0],
        "val_accuracy": [0.95, None, 0.99, 0.97, 0.97, 0.96],
        "test_accuracy": [0.94, None, None, 0.965, 0.99, 0.975],
    })


def test_a_trajectory_is_the_best_so_far_against_the_minutes_spent():
    path = trajectory(trajectory_frame())
    assert list(path.columns) == list(TRAJECTORY_COLUMNS)
    # minutes: cumulative, a failed trial adds nothing, a pruned one its epochs' time
    np.testing.assert_allclose(path["minutes"], [1.0, 1.0, 1.5, 3.0, 3.5, 5.5])
    # the pruned trial's 0.99 is not a finished network; a tie keeps the earlier trial
    np.testing.assert_allclose(path["best_val"], [0.95, 0.95, 0.95, 0.97, 0.97, 0.97])
    np.testing.assert_allclose(path["best_val_test"], [0.94, 0.94, 0.94, 0.965, 0.965, 0.965])
    assert best_at(path, 0.5) != best_at(path, 0.5)  # NaN: nothing finished within 30 s
    assert best_at(path, 3.2) == 0.97 and best_at(path, 3.0) == 0.97
    assert best_at(path, 2.9) == 0.95 and best_at(path, 99, "best_val_test") == 0.965


def test_the_figure_draws_a_trajectory_as_a_step_line_beside_the_pool(tmp_path, monkeypatch):
    captured = spy_figures(monkeypatch)
    table = expected_best_by_budget(VAL, TEST, SECONDS, [0.5, 1.0, 2.0, 4.0, 8.25],
                                    orders=all_orders(6))
    path = trajectory(trajectory_frame())
    figures_budget.plot_best_by_budget(table, tmp_path / "a.png", trajectories={"tune": path},
                                       pool="the pool")
    figures_budget.plot_best_by_budget(None, tmp_path / "b.png", trajectories={"tune": path})
    (_, with_pool), (_, alone) = captured
    for fig, lines in ((with_pool, 3), (alone, 1)):
        (ax,) = fig.axes
        assert len(ax.get_lines()) == lines and ax.get_xscale() == "log"
        (step,) = [line for line in ax.get_lines() if line.get_label().startswith("tune:")]
        x, y = step.get_data()
        np.testing.assert_allclose(x, path["minutes"])
        np.testing.assert_allclose(y, path["best_val_test"])
        assert step.get_drawstyle() == "steps-post"
    labels = [line.get_label() for line in with_pool.axes[0].get_lines()]
    assert sum(label.startswith("the pool: ") for label in labels) == 2
