"""The training engine on tiny synthetic data: learning, best-epoch restore, backends agree."""

import numpy as np
import pytest
from conftest import synthetic_mnist

from tasks.config import SplitSpec, TrialConfig
from tasks.data.prepare import in_memory, prepare
from tasks.data.readers import RawData
from tasks.engine.model import build_model, load_model, predict_probabilities
from tasks.engine.train import train_model


@pytest.fixture(scope="module")
def splits():
    return in_memory(prepare(RawData(**synthetic_mnist(n_train=512, n_test=400)),
                             SplitSpec(test_size=200)))


def test_compiled_backend_learns_and_restores_the_best_epoch(splits, tmp_path):
    config = TrialConfig(units=32, dropout=0.1, batch_size=50, epochs=5, learning_rate=3e-3)
    out = train_model(config, splits, weights_path=tmp_path / "m.weights.npz")
    losses = [row["train_loss"] for row in out.history]
    assert len(out.history) == 5 and losses[-1] < losses[0]
    assert out.metrics["train_accuracy"] > 0.5  # chance is 0.1
    vals = [row["val_accuracy"] for row in out.history]
    assert out.best_epoch == int(np.argmax(vals)) + 1
    assert out.metrics["val_accuracy"] == pytest.approx(max(vals), abs=1e-9)
    # the saved weights are the restored ones, and load into the exercise's Keras model
    model = load_model(config, tmp_path / "m.weights.npz")
    predicted = predict_probabilities(model, splits.x_val).argmax(axis=1)
    assert np.mean(predicted == splits.y_val) == pytest.approx(max(vals), abs=1e-9)


@pytest.mark.parametrize("backend", ["compiled", "keras"])
def test_best_epoch_is_restored_when_later_epochs_get_worse(splits, tmp_path, backend):
    # A huge learning rate makes validation accuracy collapse after the first epochs.
    config = TrialConfig(units=16, dropout=0.0, batch_size=16, epochs=4, learning_rate=5.0,
                         activation="sigmoid")
    out = train_model(config, splits, backend=backend, weights_path=tmp_path / "w.weights.npz")
    vals = [row["val_accuracy"] for row in out.history]
    assert out.best_epoch == int(np.argmax(vals)) + 1
    model = load_model(config, tmp_path / "w.weights.npz")
    predicted = predict_probabilities(model, splits.x_val).argmax(axis=1)
    assert np.mean(predicted == splits.y_val) == pytest.approx(max(vals), abs=1e-6)
    assert out.metrics["val_accuracy"] == pytest.approx(max(vals), abs=1e-6)


@pytest.mark.parametrize("backend", ["compiled", "keras"])
def test_search_protocol_scores_the_last_epoch_without_the_metrics_pass(splits, tmp_path,
                                                                        backend):
    # The exercise's searches: plain fit, no checkpoint, no per-epoch dropout-free pass.
    config = TrialConfig(units=16, dropout=0.5, batch_size=16, epochs=4, learning_rate=5.0,
                         activation="sigmoid", epoch_metrics=False, checkpoint=False)
    out = train_model(config, splits, backend=backend, weights_path=tmp_path / "w.weights.npz")
    assert out.best_epoch == 4
    assert out.metrics["val_accuracy"] == out.history[-1]["val_accuracy"]
    model = load_model(config, tmp_path / "w.weights.npz")
    probs = predict_probabilities(model, splits.x_train)
    # the reported training metrics are the last weights' own, without dropout, computed
    # once; the history does not compute them per epoch (nothing monitored in the loop)
    accuracy = np.mean(probs.argmax(axis=1) == splits.y_train)
    assert out.metrics["train_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert all(np.isnan(row["train_loss"]) for row in out.history)
    assert all(np.isfinite(row["val_loss"]) for row in out.history)


@pytest.mark.parametrize("activation", ["relu", "elu", "sigmoid", "tanh"])
def test_compiled_step_is_keras_adam_on_the_keras_model(splits, tmp_path, activation):
    # Full batches and no dropout: shuffling cannot matter, so the compiled backend and
    # Keras' own fit must follow the same trajectory from the same seeded initial weights
    # (same loss, same Adam with Keras' defaults), to float precision. The compiled backend
    # leaves the pixels that are zero in every training image (the top row) out of its
    # steps; validation and test images have ink there, so their losses check that those
    # weights are the full network's.
    config = TrialConfig(units=12, dropout=0.0, activation=activation, batch_size=512, epochs=3,
                         learning_rate=1e-2, epoch_metrics=True, checkpoint=False)
    compiled = train_model(config, splits, backend="compiled",
                           weights_path=tmp_path / "c.weights.npz")
    keras = train_model(config, splits, backend="keras", weights_path=tmp_path / "k.weights.npz")
    assert not splits.x_train[:, :28].any() and splits.x_val[:, :28].any()
    w_compiled = np.load(tmp_path / "c.weights.npz")
    w_keras = np.load(tmp_path / "k.weights.npz")
    for name in w_keras.files:  # the same weights, the frozen rows included
        assert np.allclose(w_compiled[name], w_keras[name], atol=1e-4), name
    for a, b in zip(compiled.history, keras.history, strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    assert compiled.metrics["test_loss"] == pytest.approx(keras.metrics["test_loss"], rel=1e-4)


def test_trainers_are_reused_across_trials_of_one_shape(splits):
    from tasks.engine import backend_compiled

    backend_compiled.clear_trainers()
    first = TrialConfig(units=20, dropout=0.2, batch_size=64, epochs=1)
    train_model(first, splits)
    # units, activation, hidden layers, classes, label type, trained and frozen inputs (the top
    # row is zero in every training image)
    shape = (20, "relu", 1, 10, "uint8", 784 - 28, 28)
    (trainer,) = backend_compiled._IDLE[shape]
    traces = trainer._train_epoch.experimental_get_tracing_count()
    # another batch size, dropout, learning rate and seed: the same graph, no new trace
    other = first.model_copy(update={"batch_size": 32, "dropout": 0.0, "learning_rate": 0.1,
                                     "seed": 3})
    again = train_model(other, splits)
    assert backend_compiled._IDLE[shape] == [trainer]
    assert trainer._train_epoch.experimental_get_tracing_count() == traces == 1
    # and reuse leaves no trace of the earlier trial: a fresh trainer gives the same result
    backend_compiled.clear_trainers()
    fresh = train_model(other, splits)
    assert fresh.metrics == again.metrics


def test_same_seed_same_result_other_seed_differs(splits):
    config = TrialConfig(units=16, dropout=0.3, batch_size=64, epochs=2)
    a = train_model(config, splits)
    b = train_model(config, splits)
    c = train_model(config.model_copy(update={"seed": 7}), splits)
    assert a.metrics["val_loss"] == pytest.approx(b.metrics["val_loss"], rel=1e-5)
    assert a.metrics["val_loss"] != pytest.approx(c.metrics["val_loss"], rel=1e-5)


@pytest.mark.parametrize("activation", ["relu", "elu", "sigmoid", "tanh"])
def test_both_backends_learn_a_tiny_problem(splits, activation):
    # 500 training images with batch 64: the last batch is partial (52 images).
    config = TrialConfig(units=24, dropout=0.2, activation=activation, batch_size=64,
                         epochs=3, learning_rate=3e-3)
    compiled = train_model(config, splits, backend="compiled")
    keras = train_model(config, splits, backend="keras")
    assert compiled.param_count == keras.param_count == 784 * 24 + 24 + 24 * 10 + 10
    for out in (compiled, keras):
        assert out.history[-1]["train_loss"] < out.history[0]["train_loss"]
        assert out.metrics["test_accuracy"] > 0.4
    # (their minibatch orders and dropout masks differ, and on 512 images that moves the
    # accuracy by tens of points either way; the exact agreement is the full-batch test's)


def test_model_is_the_exercise_network():
    model = build_model(TrialConfig(units=128, dropout=0.3))
    assert [layer.__class__.__name__ for layer in model.layers] == [
        "Dense", "Dropout", "Dense", "Activation"]
    assert model.count_params() == 101_770  # as in the exercise's model.summary()


@pytest.mark.parametrize("backend", ["compiled", "keras"])
def test_an_epoch_callback_returning_true_stops_training_after_that_epoch(splits, backend):
    # what a pruner does: the history holds the epochs done and the last of them is scored
    config = TrialConfig(units=16, dropout=0.1, batch_size=64, epochs=5, epoch_metrics=False,
                         checkpoint=False)
    seen = []
    out = train_model(config, splits, backend=backend,
                      on_epoch=lambda row: seen.append(row["epoch"]) or row["epoch"] == 2)
    assert seen == [1, 2] and [row["epoch"] for row in out.history] == [1, 2]
    assert out.best_epoch == 2
    assert out.metrics["val_accuracy"] == out.history[-1]["val_accuracy"]
    full = train_model(config, splits, backend=backend)
    if backend == "compiled":  # deterministic: the first two epochs are the full run's
        assert [r["val_loss"] for r in full.history[:2]] == pytest.approx(
            [r["val_loss"] for r in out.history], rel=1e-6)
