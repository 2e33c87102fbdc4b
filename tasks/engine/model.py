"""The exercise's network as a Keras model: build, summary, weights on disk, predictions.

``layers`` x [Dense(units, activation) -> Dropout] -> Dense(classes) -> softmax; the exercise's
network is one hidden layer on MNIST's 784 pixels and 10 classes. The compiled backend trains
the same network with plain TensorFlow ops; its weights come back in Keras' ``get_weights``
order (each hidden layer's kernel and bias, then the output's), so a saved trial loads into
this model.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tasks.config import TrialConfig
from tasks.engine.tf_runtime import tensorflow
from tasks.files import atomic_path

N_CLASSES = 10  # MNIST's
EVAL_BATCH = 10_000  # rows per forward pass when predicting (bounded memory)
WEIGHTS_SUFFIX = ".weights.npz"


def layer_seeds(seed: int, layer: int) -> tuple[int, int]:
    """(initializer seed, dropout seed) of hidden layer ``layer`` (1-based): the exercise's
    ``seed`` and ``seed + 1`` for the first (the output layer's initializer takes ``seed + 2``),
    two more per deeper layer."""
    return (seed, seed + 1) if layer == 1 else (seed + 2 * layer - 1, seed + 2 * layer)


def build_model(config: TrialConfig, input_dim: int = 784, n_classes: int = N_CLASSES):
    """``config.layers`` x [Dense(units, activation) -> Dropout] -> Dense(n_classes) ->
    softmax, seeded, not compiled."""
    tensorflow()
    import keras
    from keras import layers

    hidden = []
    for layer in range(1, config.layers + 1):
        kernel_seed, dropout_seed = layer_seeds(config.seed, layer)
        suffix = "" if layer == 1 else f"_{layer}"
        hidden += [
            layers.Dense(
                config.units,
                activation=config.activation,
                kernel_initializer=keras.initializers.GlorotUniform(seed=kernel_seed),
                name=f"hidden{suffix}",
            ),
            layers.Dropout(config.dropout, seed=dropout_seed, name=f"dropout{suffix}"),
        ]
    return keras.Sequential(
        [
            keras.Input((input_dim,)),
            *hidden,
            layers.Dense(
                n_classes,
                kernel_initializer=keras.initializers.GlorotUniform(seed=config.seed + 2),
                name="output",
            ),
            layers.Activation("softmax", name="softmax"),
        ],
        name="mlp",
    )


def model_summary(model) -> str:
    """Keras' ``model.summary()`` as plain text."""
    lines: list[str] = []
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line), line_length=80)
    return re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(lines))  # rich's colour codes


def save_weights(weights: Sequence[np.ndarray], path: str | os.PathLike) -> Path:
    """Save the network's weights (Keras ``get_weights`` order) to ``path``, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, *[np.asarray(w) for w in weights])
    return path


def read_weights(path: str | os.PathLike) -> list[np.ndarray]:
    with np.load(path) as archive:
        return [archive[f"arr_{i}"] for i in range(len(archive.files))]


def load_model(config: TrialConfig, weights_path: str | os.PathLike):
    """Rebuild the trial's Keras model and load its saved weights (their shapes give the
    input width and the classes)."""
    weights = read_weights(weights_path)
    model = build_model(config, weights[0].shape[0], weights[-1].shape[0])
    model.set_weights(weights)
    return model


def predict_probabilities(model, x: np.ndarray) -> np.ndarray:
    """Class probabilities (n, classes) without dropout."""
    tf = tensorflow()
    return np.concatenate(
        [model(tf.constant(x[i : i + EVAL_BATCH]), training=False).numpy()
         for i in range(0, len(x), EVAL_BATCH)]
    )
