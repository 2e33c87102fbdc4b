"""``model.onnx`` beside ``model.keras`` where the ``export`` extra is installed: the same model
for ONNX Runtime, checked against Keras on the test split (every most probable class equal, no
class probability more than 1e-5 apart), with both runtimes' latencies; without the extra, or
when the check fails, no file and a record that says why. Tiny networks with random weights:
no training, no data step."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.config import TrialConfig
from tasks.export import onnx_model
from tasks.export.inputs import ModelInput

AVAILABLE, WHY = onnx_model.onnx_available()
needs_extra = pytest.mark.skipif(not AVAILABLE, reason=f"{WHY} (pip install -e '.[export]')")


def random_weights(features: int, units: int, classes: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 0.3, (features, units)).astype(np.float32),
            rng.normal(0, 0.1, units).astype(np.float32),
            rng.normal(0, 0.3, (units, classes)).astype(np.float32),
            rng.normal(0, 0.1, classes).astype(np.float32)]


def image_model():
    """An 8-bit image model (uint8 12x10 in, /255 inside) and raw test images."""
    from tasks.export.network import build_standalone

    spec = ModelInput(kind="image", shape=(12, 10), dtype="uint8",
                      classes=tuple("0123"), scaling="pixels")
    model = build_standalone(TrialConfig(units=16, activation="relu"),
                             random_weights(120, 16, 4), spec)
    x = np.random.default_rng(1).integers(0, 256, (300, 12, 10)).astype(np.uint8)
    return model, x


def table_model():
    """A table model (float64 rows of 5 features, standardized inside) and raw test rows,
    one feature far from zero (its float64 standardization matters)."""
    from tasks.export.network import build_standalone

    mean = np.array([1e5, -2.0, 7.0, 3.0, 0.5])
    std = np.array([1.0, 0.5, 1.0, 0.8, 2.0])
    spec = ModelInput(kind="table", shape=(5,), dtype="float64", classes=("a", "b", "c"),
                      scaling="standardize", mean=mean, std=std,
                      feature_names=("w", "x", "y", "z", "v"))
    model = build_standalone(TrialConfig(units=8, activation="tanh", layers=2),
                             [*random_weights(5, 8, 8)[:2], *random_weights(8, 8, 3, 1)], spec)
    x = mean + std * np.random.default_rng(2).normal(size=(200, 5))
    return model, x


def keras_probabilities(model, x):
    from tasks.engine.model import predict_probabilities

    return predict_probabilities(model, x)


@needs_extra
@pytest.mark.parametrize("make, name", [(image_model, "image"), (table_model, "features")])
def test_model_onnx_predicts_what_keras_predicts_and_records_both_latencies(make, name,
                                                                            tmp_path):
    model, x = make()
    expected = keras_probabilities(model, x)
    record = onnx_model.export_onnx(model, tmp_path, x, expected)
    assert record["written"], record.get("reason")
    parity = record["parity"]
    assert parity["passed"] and parity["differing_predictions"] == 0
    assert parity["samples"] == len(x) and parity["max_probability_difference"] <= 1e-5
    assert record["input"]["name"] == name and record["input"]["shape"][0] == "batch"
    assert record["input"]["type"] == ("tensor(uint8)" if name == "image" else "tensor(double)")
    # the file alone, in onnxruntime: the raw input in, the probabilities out
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["probabilities"]
    [got] = session.run(None, {name: x})
    assert np.array_equal(got.argmax(axis=1), expected.argmax(axis=1))
    assert np.max(np.abs(got - expected)) <= 1e-5
    for batch in ("batch_256", "batch_1"):
        assert record["latency"][batch]["keras_ms"] > 0
        assert record["latency"][batch]["onnxruntime_ms"] > 0
    assert set(record["versions"]) == {"tf2onnx", "onnxruntime", "onnx"}


@needs_extra
def test_a_model_that_fails_the_check_is_not_written(tmp_path, monkeypatch):
    model, x = image_model()
    expected = keras_probabilities(model, x)
    real = onnx_model.run_session
    monkeypatch.setattr(onnx_model, "run_session",
                        lambda sess, rows: real(sess, rows) + np.float32(1e-4))
    record = onnx_model.export_onnx(model, tmp_path, x, expected)
    assert not record["written"] and not (tmp_path / "model.onnx").exists()
    assert record["parity"]["passed"] is False
    assert "the check failed" in record["reason"]


def test_without_the_export_extra_no_onnx_is_written_and_the_record_says_why(tmp_path,
                                                                             monkeypatch):
    monkeypatch.setattr(onnx_model.importlib.util, "find_spec",
                        lambda name: None if name in onnx_model.PACKAGES else object())
    available, why = onnx_model.onnx_available()
    assert not available and "export" in why
    record = onnx_model.export_onnx(None, tmp_path, np.zeros((1, 2)), np.zeros((1, 2)))
    assert record == {"written": False, "reason": why}
    assert not (tmp_path / "model.onnx").exists()
    # the card says so in one line
    from tasks.export.card import onnx_section

    assert "No `model.onnx`" in onnx_section({"onnx": record})


@needs_extra
def test_a_model_above_the_parameter_limit_is_not_converted_and_the_record_says_why(
        tmp_path, monkeypatch):
    """tf2onnx's conversion takes about 310 bytes of memory per parameter (an ensemble of
    11.2 M parameters: 3.5 GB): above ``PIPELINE_ONNX_MAX_PARAMS`` nothing is converted; at
    the limit, and with 0 (no limit), the model is."""
    model, x = image_model()  # 120*16 + 16 + 16*4 + 4 = 2004 parameters
    expected = keras_probabilities(model, x)
    assert model.count_params() == 2004
    monkeypatch.setenv("PIPELINE_ONNX_MAX_PARAMS", "2003")
    record = onnx_model.export_onnx(model, tmp_path, x, expected)
    assert not record["written"] and not (tmp_path / "model.onnx").exists()
    assert "2,004 parameters" in record["reason"]
    assert "PIPELINE_ONNX_MAX_PARAMS=2,003" in record["reason"]
    from tasks.export.card import onnx_section

    assert "2,004 parameters" in onnx_section({"onnx": record})
    for limit in ("2004", "0"):
        monkeypatch.setenv("PIPELINE_ONNX_MAX_PARAMS", limit)
        assert onnx_model.export_onnx(model, tmp_path, x, expected)["written"], limit
        (tmp_path / "model.onnx").unlink()
