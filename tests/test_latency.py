"""Inference latency per image: measured after training, kept beside the weights, backfilled
for trials trained before it existed, and drawn in the reports' "Accuracy against latency".
Synthetic data and weights; no timing is asserted (only that a figure exists, is finite and is
the one stored)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from conftest import synthetic_mnist, write_npz

from tasks.config import SplitSpec, TrialConfig
from tasks.data.prepare import prepare_data
from tasks.engine.model import save_weights
from tasks.reports.folder import trials_frame
from tasks.reports.pareto import write_tradeoffs
from tasks.trial import latency
from tasks.trial.result import TrialResult
from tasks.trial.task import train_trial


def weights(units: int, inputs: int = 784, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(inputs, units)).astype(np.float32), np.zeros(units, np.float32),
            rng.normal(size=(units, 10)).astype(np.float32), np.zeros(10, np.float32)]


def saved(tmp_path, units: int, activation: str = "relu", key: str | None = None,
          **fields) -> TrialResult:
    """A completed, cached result (as the cache gives back: no latency) with saved weights."""
    key = key or f"k{units}{activation}"
    path = save_weights(weights(units), tmp_path / key / "model.weights.npz")
    return TrialResult(trial_key=key, config=TrialConfig(units=units, activation=activation),
                       data_fingerprint="fp", weights_path=str(path), param_count=units * 795 + 10,
                       val_accuracy=0.9 + units / 10_000, test_accuracy=0.9, cached=True,
                       **fields)


@pytest.mark.parametrize("activation", ["relu", "elu", "sigmoid", "tanh", "linear"])
def test_a_forward_pass_is_timed_per_image_for_every_activation(activation):
    value = latency.measure(weights(32), activation, batch=64, repeats=3)
    assert math.isfinite(value) and value > 0


def test_an_unknown_activation_is_refused_by_name():
    with pytest.raises(ValueError, match="activation 'swish': allowed: relu, elu"):
        latency.measure(weights(8), "swish", repeats=1)


def test_the_figure_is_stored_beside_the_weights_with_how_and_where_it_was_measured(tmp_path):
    path = save_weights(weights(16), tmp_path / "t" / "model.weights.npz")
    value = latency.measure_weights(path, "tanh")
    record = json.loads((tmp_path / "t" / "latency.json").read_text())
    assert record["ms_per_image"] == value
    assert record["batch"] == latency.BATCH and record["repeats"] == latency.REPEATS
    assert "cores" in record["machine"] and isinstance(record["threads"], int)
    assert latency.read_record(path) == record


def test_latency_of_prefers_the_trials_own_then_the_stored_figure_and_measures_once(tmp_path):
    result = saved(tmp_path, 24)
    assert latency.latency_of(result.model_copy(update={"latency_ms": 1.5})) == 1.5
    assert latency.latency_of(result, measure_missing=False) is None  # nothing stored yet
    first = latency.latency_of(result)  # measured from the weights, stored
    record = latency.record_path(result.weights_path)
    stamp = record.stat().st_mtime_ns
    assert latency.latency_of(result) == first and record.stat().st_mtime_ns == stamp
    # no weights, no figure: failed, pruned, deleted
    assert latency.latency_of(result.model_copy(update={"status": "failed"})) is None
    gone = result.model_copy(update={"weights_path": str(tmp_path / "gone" / "w.npz")})
    assert latency.latency_of(gone) is None


def test_a_trained_trial_records_its_latency_and_the_figure_beside_its_weights(tmp_path):
    mnist = write_npz(tmp_path / "mnist.npz", synthetic_mnist(400, 200))
    handle, _ = prepare_data(mnist, SplitSpec(test_size=100), data_dir=tmp_path / "data")
    result = train_trial(TrialConfig(units=12, epochs=1, batch_size=100, activation="linear"),
                         handle, data_dir=str(tmp_path / "data"))
    assert result.latency_ms is not None and result.latency_ms > 0
    assert latency.read_record(result.weights_path)["ms_per_image"] == result.latency_ms
    assert result.row()["latency_ms"] == result.latency_ms


def test_reports_backfill_old_trials_and_draw_accuracy_against_latency(tmp_path):
    results = [saved(tmp_path, units) for units in (16, 64, 256)]
    results.append(TrialResult(trial_key="failed", config=TrialConfig(units=8),
                               data_fingerprint="fp", status="failed", error="boom"))
    frame = trials_frame(results)
    measured = frame.set_index("trial_key")["latency_ms"]
    assert measured[["k16relu", "k64relu", "k256relu"]].gt(0).all()
    assert pd.isna(measured["failed"])
    for result in results[:3]:  # stored once, read back by the next report
        assert latency.read_record(result.weights_path)["ms_per_image"] == measured[
            result.trial_key]
    out = tmp_path / "report"
    out.mkdir()
    text = write_tradeoffs(frame, out)
    assert "## Accuracy against size" in text and "## Accuracy against latency" in text
    assert "Fastest network within 0.005 of the best validation accuracy" in text
    assert f"Measured on: {latency.machine()} (3 trials)" in text
    front = pd.read_parquet(out / "pareto_latency_ms.parquet")
    assert set(front["trial_key"]) <= {"k16relu", "k64relu", "k256relu"}
    assert front["note"].str.contains("fastest within 0.005 of the best").sum() == 1
    assert (out / "pareto_latency_ms.png").stat().st_size > 5_000


def test_without_latencies_the_report_has_only_the_size_section(tmp_path):
    results = [saved(tmp_path, units).model_copy(update={"weights_path": None})
               for units in (16, 64)]
    out = tmp_path / "report"
    out.mkdir()
    text = write_tradeoffs(trials_frame(results), out)
    assert "## Accuracy against size" in text and "latency" not in text.lower()


def test_trials_of_one_shape_share_the_median_of_their_measurements():
    from tasks.reports.pareto import shape_latency

    frame = pd.DataFrame({"units": [16, 16, 16, 64], "activation": ["relu"] * 3 + ["tanh"],
                          "latency_ms": [1.0, 5.0, 2.0, np.nan]})
    assert shape_latency(frame)["latency_ms"].tolist()[:3] == [2.0, 2.0, 2.0]
    assert pd.isna(shape_latency(frame)["latency_ms"].iloc[3])
    assert frame["latency_ms"].tolist()[:3] == [1.0, 5.0, 2.0]  # the trials' own kept


def test_damaged_weights_give_no_latency_instead_of_a_failed_report(tmp_path):
    result = saved(tmp_path, 16)
    with open(result.weights_path, "wb") as handle:
        handle.write(b"not a zip archive")
    assert latency.latency_of(result) is None
    assert pd.isna(trials_frame([result])["latency_ms"].iloc[0])
