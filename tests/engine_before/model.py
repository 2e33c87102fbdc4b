"""The exercise's network as a Keras model: build, summary, weights on disk, predictions.

Dense(units, activation) -> Dropout -> Dense(10) -> softmax. The compiled backend trains the
same network with plain TensorFlow ops; its weights come back in Keras' ``get_weights`` order
(hidden kernel, hidden bias, output kernel, output bias), so a saved trial loads into this
model.
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

N_CLASSES = 10
EVAL_BATCH = 10_000  # rows per forward pass when predicting (bounded memory)
WEIGHTS_SUFFIX = ".weights.npz"


def build_model(config: TrialConfig, input_dim: int = 784):
    """Dense(units, activation) -> Dropout -> Dense(10) -> softmax, seeded, not compiled."""
    tensorflow()
    import keras
    from keras import layers

    seed = config.seed
    return keras.Sequential(
        [
            keras.Input((input_dim,)),
            layers.Dense(
                config.units,
                activation=config.activation,
                kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
                name="hidden",
            ),
            layers.Dropout(config.dropout, seed=seed + 1, name="dropout"),
            layers.Dense(
                N_CLASSES,
                kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 2),
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


def load_model(config: TrialConfig, weights_path: str | os.PathLike, input_dim: int = 784):
    """Rebuild the trial's Keras model and load its saved weights."""
    model = build_model(config, input_dim)
    model.set_weights(read_weights(weights_path))
    return model


def predict_probabilities(model, x: np.ndarray) -> np.ndarray:
    """Class probabilities (n, 10) without dropout."""
    tf = tensorflow()
    return np.concatenate(
        [model(tf.constant(x[i : i + EVAL_BATCH]), training=False).numpy()
         for i in range(0, len(x), EVAL_BATCH)]
    )
