"""Exported studies put numeric hyperparameters on numeric axes (for optuna-dashboard and for
Optuna's figures), and the parallel-coordinates figure draws the best 10 % in colour over the
rest in grey (synthetic results, no training)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import spy_figures
from matplotlib.collections import LineCollection
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from tasks.config import TrialConfig, trial_key
from tasks.reports.optuna_export import (
    TOP_SHARE,
    draw_study_figures,
    export_distribution,
    export_run,
    parallel_axis,
)
from tasks.search.space import DEFAULT_RANDOM_SPACE, SEARCH_FIELDS, sample_configs
from tasks.trial.result import TrialResult

FINGERPRINT = "e" * 20
N_TRIALS = 40  # the best 10 %: 4 trials


def fake_result(config: TrialConfig, rng: np.random.Generator) -> TrialResult:
    """A trial without training: best near learning rate 1e-3, better with more units."""
    val = 0.97 - 0.02 * (math.log10(config.learning_rate) + 3) ** 2
    val += 0.01 * math.log(config.units, 512) - 0.03 * config.dropout ** 2
    val = float(np.clip(val + rng.normal(0, 0.005), 0.05, 0.999))
    return TrialResult(trial_key=trial_key(config, FINGERPRINT), config=config,
                       data_fingerprint=FINGERPRINT, val_accuracy=val, test_accuracy=val,
                       val_loss=0.1, test_loss=0.1, train_accuracy=val, train_loss=0.1,
                       best_epoch=config.epochs, train_seconds=30.0, history=[])


def space_values(space) -> dict[str, list]:
    return {field: getattr(space, field) for field in SEARCH_FIELDS}


@pytest.fixture(scope="module")
def random_study():
    """A 40-trial random search over the exercise's random space, exported."""
    rng = np.random.default_rng(0)
    results = [fake_result(c, rng) for c in sample_configs(DEFAULT_RANDOM_SPACE, N_TRIALS, 0)]
    study = export_run("random-axes", results, space_values(DEFAULT_RANDOM_SPACE))
    return study, results


@pytest.mark.parametrize(("values", "expected"), [
    ([16, 32, 64, 128, 256], IntDistribution(16, 256, log=True)),
    ([256, 8, 512], IntDistribution(8, 512, log=True)),
    ([12, 24], IntDistribution(12, 24)),  # a factor 2: linear
    ([32], IntDistribution(32, 32)),
    ([1e-5, 1e-4, 1e-3, 1e-2, 1e-1], FloatDistribution(1e-5, 1e-1, log=True)),
    ([1e-3, 5e-3], FloatDistribution(1e-3, 5e-3)),  # a factor 5: linear
    ([0.0, 0.1, 0.3, 0.5, 0.8], FloatDistribution(0.0, 0.8)),  # includes 0: linear
    ([1e-3], FloatDistribution(1e-3, 1e-3)),
    (["relu", "elu", "relu"], CategoricalDistribution(["relu", "elu"])),
])
def test_export_distribution_rule(values, expected):
    assert export_distribution(values) == expected


def test_exported_study_has_numeric_distributions_that_hold_every_trial(random_study):
    study, results = random_study
    expected = {
        "units": IntDistribution(8, 512, log=True),
        "batch_size": IntDistribution(16, 256, log=True),
        "learning_rate": FloatDistribution(1e-5, 1e-1, log=True),
        "dropout": FloatDistribution(0.0, 0.6),
        "activation": CategoricalDistribution(["relu", "elu", "sigmoid", "tanh"]),
    }
    trials = study.get_trials()
    assert len(trials) == N_TRIALS
    by_key = {r.trial_key: r for r in results}
    for trial in trials:
        assert trial.distributions == expected
        config = by_key[trial.user_attrs["trial_key"]].config
        # one hidden layer, as every trial here: not a parameter of the study
        assert trial.params == {f: getattr(config, f) for f in SEARCH_FIELDS if f != "layers"}
        assert isinstance(trial.params["units"], int)
        assert isinstance(trial.params["batch_size"], int)


def test_dashboard_search_space_keeps_batch_sizes_in_order(random_study):
    # optuna-dashboard (pinned 0.21.0) merges the trials' distributions into its search space;
    # categorical choices went through a set: 256, 32, 64, 128, 16
    from optuna_dashboard._inmemory_cache import _CachedExtraStudyProperty

    study, _ = random_study
    merged = _CachedExtraStudyProperty()
    merged.update(study.get_trials())
    union = dict(merged.union_search_space)
    assert union["batch_size"] == IntDistribution(16, 256, log=True)
    assert union["units"] == IntDistribution(8, 512, log=True)
    assert union["learning_rate"] == FloatDistribution(1e-5, 1e-1, log=True)
    assert union["dropout"] == FloatDistribution(0.0, 0.6)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_optuna_figures_put_batch_size_on_a_numeric_log_axis(random_study):
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ov

    study, _ = random_study
    batch_sizes = [t.params["batch_size"] for t in study.get_trials()]
    units = [t.params["units"] for t in study.get_trials()]
    try:
        ax = ov.plot_slice(study, params=["batch_size"])
        ax.figure.canvas.draw()
        assert ax.get_xscale() == "log"
        assert ax.collections[0].get_offsets()[:, 0].tolist() == batch_sizes
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks == sorted(ticks)
        assert ax.get_xlim()[0] <= 16 and ax.get_xlim()[1] >= 256

        ax = ov.plot_contour(study, params=["batch_size", "units"])
        ax.figure.canvas.draw()
        assert (ax.get_xlabel(), ax.get_xscale()) == ("batch_size", "log")
        assert (ax.get_ylabel(), ax.get_yscale()) == ("units", "log")
        (points,) = [c.get_offsets() for c in ax.collections
                     if len(c.get_offsets()) == len(batch_sizes)]
        assert points[:, 0].tolist() == batch_sizes and points[:, 1].tolist() == units
    finally:
        plt.close("all")


def segment_colours(ax) -> tuple[list, list]:
    """The parallel-coordinates lines of ``ax`` as (grey, coloured) lists of their vertices."""
    grey, coloured = [], []
    for collection in ax.collections:
        if not isinstance(collection, LineCollection):
            continue
        colours = collection.get_colors()
        for k, segment in enumerate(collection.get_segments()):
            r, g, b, _ = colours[k % len(colours)]
            (grey if max(r, g, b) - min(r, g, b) < 0.02 else coloured).append(segment)
    return grey, coloured


def test_parallel_coordinates_draw_the_best_tenth_in_colour(random_study, tmp_path,
                                                            monkeypatch):
    study, _ = random_study
    captured = spy_figures(monkeypatch)
    lines = draw_study_figures(study, tmp_path)
    assert lines == ["![parameter importance](param_importance.png)",
                     "![parallel coordinates](parallel_coordinates.png)"]
    assert (tmp_path / "parallel_coordinates.png").stat().st_size > 10_000
    (fig,) = [f for name, f in captured if name == "parallel_coordinates.png"]
    ax = fig.axes[0]
    grey, coloured = segment_colours(ax)
    top = math.ceil(TOP_SHARE * N_TRIALS)
    assert (len(coloured), len(grey)) == (top, N_TRIALS - top)
    # the coloured ones are the best: highest on the objective's axis (the first)
    assert min(s[0][1] for s in coloured) > max(s[0][1] for s in grey)
    title = ax.get_title()
    assert f"the best {top} (10%" in title and "in colour" in title and "in grey" in title
    # one axis per varying parameter after the objective's, numbers bottom-up in order
    names = [t.get_text().split("\n")[0] for t in ax.get_xticklabels()]
    assert names == ["val accuracy", "activation", "batch_size", "dropout", "learning_rate",
                     "units"]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[2] == "batch_size\n(log scale)" and labels[3] == "dropout"
    batch_ticks = sorted((t.get_position()[1], t.get_text()) for t in ax.texts
                         if 2 < t.get_position()[0] < 2.5)
    assert [text for _, text in batch_ticks] == ["16", "32", "64", "128", "256"]
    # log scale: equal steps between the powers of two
    steps = np.diff([y for y, _ in batch_ticks])
    assert steps == pytest.approx([0.25] * 4)
    # every line crosses the batch-size axis at its trial's value
    heights = {y: int(text) for y, text in batch_ticks}
    crossings = sorted(heights[min(heights, key=lambda y: abs(y - s[2][1]))]
                       for s in grey + coloured)
    assert crossings == sorted(t.params["batch_size"] for t in study.get_trials())


def test_a_one_value_dimension_exports_and_draws(tmp_path):
    rng = np.random.default_rng(2)
    configs = [TrialConfig(units=64, batch_size=32, learning_rate=1e-3, dropout=d, epochs=1)
               for d in (0.0, 0.2, 0.4, 0.6)]
    results = [fake_result(c, rng) for c in configs]
    study = export_run("one-value", results, {"units": [64], "batch_size": [32],
                                              "learning_rate": [1e-3],
                                              "dropout": [0.0, 0.2, 0.4, 0.6],
                                              "activation": ["relu"]})
    trial = study.get_trials()[0]
    assert trial.distributions["units"] == IntDistribution(64, 64)
    assert trial.distributions["batch_size"] == IntDistribution(32, 32)
    assert trial.distributions["learning_rate"] == FloatDistribution(1e-3, 1e-3)
    assert trial.distributions["activation"] == CategoricalDistribution(["relu"])
    assert len(study.get_trials()) == 4
    # only dropout varies: no importance figure, a two-axis parallel coordinates
    assert draw_study_figures(study, tmp_path) == [
        "![parallel coordinates](parallel_coordinates.png)"]
    assert (tmp_path / "parallel_coordinates.png").is_file()


def test_values_a_trial_took_widen_its_distribution():
    results = [fake_result(TrialConfig(units=units, epochs=1), np.random.default_rng(units))
               for units in (4, 8, 16)]
    study = export_run("widened", results, {"units": [8, 16]})
    assert study.get_trials()[0].distributions == {"units": IntDistribution(4, 16, log=True)}


def test_a_continuous_axis_is_labelled_in_order_within_its_range():
    values = [1.3e-4, 2e-3, 0.05, 0.02, 7e-4, 3e-3, 1e-2, 4e-4, 0.08, 6e-3]
    positions, ticks, log = parallel_axis(values, [FloatDistribution(1e-4, 0.1, log=True)])
    assert log
    assert positions.min() == 0 and positions.max() == 1
    assert positions[values.index(2e-3)] == pytest.approx(
        (math.log10(2e-3) - math.log10(1.3e-4)) / (math.log10(0.08) - math.log10(1.3e-4)))
    heights = [y for y, _ in ticks]
    assert heights == sorted(heights) and all(-1e-9 <= y <= 1 + 1e-9 for y in heights)
    assert [float(text) for _, text in ticks] == sorted(float(text) for _, text in ticks)
    assert {"0.001", "0.01"} <= {text for _, text in ticks}
