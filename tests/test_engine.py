"""The training engine on tiny synthetic data: learning, best-epoch restore, backends agree."""

import numpy as np
import pytest
from conftest import synthetic_mnist

from tasks.config import SplitSpec, TrialConfig
from tasks.data import split_arrays
from tasks.engine import build_model, load_model, predict_probabilities, train_model


@pytest.fixture(scope="module")
def splits():
    return split_arrays(synthetic_mnist(n_train=512, n_test=400), SplitSpec(test_size=200))


def test_compiled_backend_learns_and_restores_the_best_epoch(splits, tmp_path):
    config = TrialConfig(units=32, dropout=0.1, batch_size=50, epochs=5, learning_rate=3e-3)
    out = train_model(config, splits, weights_path=tmp_path / "m.weights.h5")
    losses = [row["train_loss"] for row in out.history]
    assert len(out.history) == 5 and losses[-1] < losses[0]
    assert out.metrics["train_accuracy"] > 0.5  # chance is 0.1
    vals = [row["val_accuracy"] for row in out.history]
    assert out.best_epoch == int(np.argmax(vals)) + 1
    assert out.metrics["val_accuracy"] == pytest.approx(max(vals), abs=1e-9)
    # the saved weights are the restored ones
    model = load_model(config, tmp_path / "m.weights.h5")
    predicted = predict_probabilities(model, splits.x_val).argmax(axis=1)
    assert np.mean(predicted == splits.y_val) == pytest.approx(max(vals), abs=1e-9)


def test_best_epoch_is_restored_when_later_epochs_get_worse(splits):
    # A huge learning rate makes validation accuracy collapse after the first epochs.
    config = TrialConfig(units=16, dropout=0.0, batch_size=16, epochs=4, learning_rate=5.0,
                         activation="sigmoid")
    out, model = train_model(config, splits, keep_model=True)
    vals = [row["val_accuracy"] for row in out.history]
    assert out.best_epoch == int(np.argmax(vals)) + 1
    predicted = predict_probabilities(model, splits.x_val).argmax(axis=1)
    assert np.mean(predicted == splits.y_val) == pytest.approx(max(vals), abs=1e-9)
    assert out.metrics["val_accuracy"] == pytest.approx(max(vals), abs=1e-9)


def test_same_seed_same_result_other_seed_differs(splits):
    config = TrialConfig(units=16, dropout=0.3, batch_size=64, epochs=2)
    a = train_model(config, splits)
    b = train_model(config, splits)
    c = train_model(config.model_copy(update={"seed": 7}), splits)
    assert a.metrics["val_loss"] == pytest.approx(b.metrics["val_loss"], rel=1e-5)
    assert a.metrics["val_loss"] != pytest.approx(c.metrics["val_loss"], rel=1e-5)


@pytest.mark.parametrize("activation", ["relu", "elu", "sigmoid", "tanh"])
def test_both_backends_agree_on_a_tiny_problem(splits, activation):
    # 500 training images with batch 64: the last batch is partial (52 images).
    config = TrialConfig(units=24, dropout=0.2, activation=activation, batch_size=64,
                         epochs=3, learning_rate=3e-3)
    compiled = train_model(config, splits, backend="compiled")
    keras = train_model(config, splits, backend="keras")
    assert compiled.param_count == keras.param_count == 784 * 24 + 24 + 24 * 10 + 10
    for out in (compiled, keras):
        assert out.history[-1]["train_loss"] < out.history[0]["train_loss"]
        assert out.metrics["test_accuracy"] > 0.4
    assert abs(compiled.metrics["test_accuracy"] - keras.metrics["test_accuracy"]) < 0.15
    assert compiled.metrics["test_loss"] == pytest.approx(keras.metrics["test_loss"], rel=0.5)


def test_model_is_the_exercise_network():
    model = build_model(TrialConfig(units=128, dropout=0.3))
    assert [layer.__class__.__name__ for layer in model.layers] == [
        "Dense", "Dropout", "Dense", "Activation"]
    assert model.count_params() == 101_770  # as in the exercise's model.summary()


def test_fused_adam_step_equals_keras_adam():
    import keras
    import tensorflow as tf

    from tasks.engine import _fused_adam_step

    config = TrialConfig(units=8, dropout=0.0)
    reference, fused = build_model(config), build_model(config)
    opt_ref = keras.optimizers.Adam(1e-2)
    opt_fused = keras.optimizers.Adam(1e-2)
    opt_ref.build(reference.trainable_variables)
    opt_fused.build(fused.trainable_variables)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(size=(16, 784)).astype(np.float32))
    y = tf.constant(rng.integers(0, 10, 16).astype(np.int32))

    def gradients(model):
        with tf.GradientTape() as tape:
            probs = model(x, training=True)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, probs))
        return tape.gradient(loss, model.trainable_variables)

    step = tf.function(lambda g: _fused_adam_step(opt_fused, fused.trainable_variables, g))
    for _ in range(5):
        opt_ref.apply(gradients(reference), reference.trainable_variables)
        step(gradients(fused))
    for a, b in zip(reference.get_weights(), fused.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert int(opt_fused.iterations.numpy()) == 5
