"""The exported network: the trial's own network with the data's preprocessing in front.

    Input(the data's shape and dtype) -> [Flatten] -> Normalization -> the trial's network
    (``layers`` x [Dense(units, activation) -> Dropout] -> Dense(classes) -> softmax)

The trial's network is the engine's Keras model (:func:`tasks.engine.model.build_model`), its
layers applied to the normalized input, so the exported model computes what the project's own
model of the trial computes. Built-in layers only: ``keras.saving.load_model`` needs no custom
objects and no part of this project.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tasks.config import TrialConfig
from tasks.engine.model import build_model
from tasks.engine.tf_runtime import tensorflow
from tasks.export.inputs import PIXEL_VARIANCE, ModelInput


def normalization_layer(spec: ModelInput):
    """The data step's normalization as one built-in Keras layer (module doc of
    :mod:`tasks.export.inputs`)."""
    from keras import layers

    if spec.scaling == "pixels":
        return layers.Normalization(mean=0.0, variance=PIXEL_VARIANCE, name="normalize")
    return layers.Normalization(mean=spec.mean, variance=np.square(spec.std), dtype="float64",
                                name="normalize")


def build_standalone(config: TrialConfig, weights: Sequence[np.ndarray], spec: ModelInput):
    """The exported Keras model of a trial: raw input in, class probabilities out."""
    tensorflow()
    import keras

    network = build_model(config, weights[0].shape[0], weights[-1].shape[0])
    network.set_weights(list(weights))
    inputs, x = normalized_input(spec)
    for layer in network.layers:  # hidden, dropout, ..., output, softmax
        x = layer(x)
    return keras.Model(inputs, x, name=f"{config.layers}x{config.units}-{config.activation}")


def normalized_input(spec: ModelInput):
    """The exported model's input and its preprocessing: (the Input, the normalized feature
    rows as the networks take them)."""
    tensorflow()
    import keras
    from keras import layers

    inputs = keras.Input(spec.shape, dtype=spec.dtype,
                         name="image" if spec.kind == "image" else "features")
    x = inputs
    if len(spec.shape) > 1:
        # integers pass unchanged; floats are flattened in float64, as the data step reads them
        x = layers.Flatten(name="flatten",
                           dtype="float64" if spec.scaling == "standardize" else None)(x)
    return inputs, normalization_layer(spec)(x)


def network_of(model):
    """The part of an exported model after its normalization (processed features in,
    probabilities out): the trial's own network."""
    import keras

    layers = model.layers
    start = next(i for i, layer in enumerate(layers) if layer.name == "normalize") + 1
    inputs = keras.Input((int(layers[start].kernel.shape[0]),), name="processed")
    x = inputs
    for layer in layers[start:]:
        x = layer(x)
    return keras.Model(inputs, x, name="network")
