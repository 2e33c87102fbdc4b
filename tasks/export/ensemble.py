"""An ensemble of a run's trials as one model folder, like any model of :mod:`tasks.export`.

    Input(the data's shape and dtype) -> [Flatten] -> Normalization
      -> member_1 (the first trial's network, a nested model) -> Rescaling(weight_1) --+
      -> member_2 ...                                         -> Rescaling(weight_2) --+-> Add
      ...

Each member is the trial's own network (:func:`tasks.engine.model.build_model`, its stored
weights, softmax included) nested under a unique name (``member_<i>_<trial key's first 8>``:
every trial's network names its layers alike); its probabilities are scaled by its weight (its
picks over K) and added: the weighted average of the members' softmax outputs. The preprocessing
is shared, once in front. Built-in layers only: ``keras.saving.load_model`` needs neither custom
objects nor this project.

``model.json`` is a single model's (classes, input, normalization, data, scores, check,
versions, ``onnx``) with ``ensemble`` (the members, their picks, weights and trial keys, the
candidates and what was skipped, the curve over K) and ``comparison`` (the ensemble, the best
single trial and the plain average of the top K: validation and test accuracy, parameters,
latency) in place of ``trial``; ``MODEL.md`` is the ensemble's card
(:func:`tasks.export.card.ensemble_card`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tasks.data.splits import DataHandle, load_splits
from tasks.ensemble.choose import EnsembleChoice
from tasks.ensemble.selection import log_loss
from tasks.export.card import ensemble_card
from tasks.export.exporter import (
    ModelExport,
    Selection,
    class_scores,
    common_record,
    model_key,
    raw_inputs,
    versions,
    write_model_folder,
)
from tasks.export.inputs import ModelInput, model_input

METHOD = ("greedy ensemble selection with replacement (Caruana et al., ICML 2004): each pick "
          "adds the trial that gives the average of the probabilities picked so far the best "
          "validation accuracy (ties: the lower validation log loss, then the better trial by "
          "validation); a trial picked twice weighs twice; the search's own weights, nothing "
          "trained")


def member_name(index: int, trial_key: str) -> str:
    return f"member_{index}_{trial_key[:8]}"


def build_ensemble(members: list[tuple[Any, list[np.ndarray], float, str]], spec: ModelInput):
    """The ensemble's Keras model from ``members`` (config, weights, weight, name): raw input
    in, the weighted average of the members' class probabilities out."""
    from tasks.engine.tf_runtime import tensorflow

    tensorflow()  # TensorFlow configured (threads, quiet logs) before Keras imports it
    import keras
    from keras import layers

    from tasks.engine.model import build_model
    from tasks.export.network import normalized_input

    inputs, x = normalized_input(spec)
    outputs = []
    for index, (config, weights, weight, name) in enumerate(members, 1):
        network = build_model(config, weights[0].shape[0], weights[-1].shape[0])
        network.set_weights(list(weights))
        member = keras.Sequential([keras.Input((int(weights[0].shape[0]),)), *network.layers],
                                  name=name)
        outputs.append(layers.Rescaling(float(weight), name=f"weight_{index}")(member(x)))
    out = outputs[0] if len(outputs) == 1 else layers.Add(name="average")(outputs)
    return keras.Model(inputs, out, name=f"ensemble_of_{len(members)}")


def keras_latency(model, x: np.ndarray) -> dict[str, float]:
    """Milliseconds per input of the model's traced forward pass on a batch of 256 and on one
    input (:func:`tasks.export.onnx_model.fastest_ms_per_image`)."""
    import tensorflow as tf

    from tasks.export.onnx_model import BATCH, fastest_ms_per_image, keras_function

    forward = keras_function(model)
    return {f"batch_{BATCH}": round(fastest_ms_per_image(
                lambda r: forward(r).numpy(), tf.constant(x[:BATCH])), 5),
            "batch_1": round(fastest_ms_per_image(
                lambda r: forward(r).numpy(), tf.constant(x[:1])), 5)}


def export_ensemble(choice: EnsembleChoice, data: DataHandle, folder: str | Path,
                    selection: Selection, name: str = "") -> ModelExport:
    """Write the ensemble's model folder at ``folder`` (replaced if it exists): ``model.keras``,
    ``model.json``, ``MODEL.md`` and, where the ``export`` extra is installed, ``model.onnx``;
    the saved model is checked on the raw test split against the members' average."""
    from tasks.engine.model import predict_probabilities, read_weights
    from tasks.engine.train import release_tensorflow_memory
    from tasks.export.network import build_standalone
    from tasks.trial.latency import machine

    spec = model_input(data)
    splits = load_splits(data)
    named = [(m, member_name(i, m.result.trial_key)) for i, m in enumerate(choice.members, 1)]
    arrays = {m.result.trial_key: read_weights(m.result.weights_path) for m in choice.members}
    model = build_ensemble([(m.result.config, arrays[m.result.trial_key], m.weight, label)
                            for m, label in named], spec)
    raw_val, raw_test = raw_inputs(splits.x_val, spec), raw_inputs(splits.x_test, spec)
    val_probabilities = predict_probabilities(model, raw_val)
    probabilities = predict_probabilities(model, raw_test)
    labels, y_val = splits.y_test.astype(np.int64), splits.y_val.astype(np.int64)
    reference = choice.test_probabilities.argmax(axis=1)
    identity = "ensemble|" + ",".join(f"{m.result.trial_key}:{m.picks}/{choice.k}"
                                      for m in choice.members)
    key = model_key(identity, [w for m in choice.members for w in arrays[m.result.trial_key]],
                    spec.preprocessing())
    single = choice.best_single
    single_model = build_standalone(single.config, read_weights(single.weights_path), spec)
    latency = {"ensemble": keras_latency(model, raw_test),
               "best_single": keras_latency(single_model, raw_test),
               "machine": machine(),
               "how": "milliseconds per input, the fastest of 30 timed calls after 3 untimed "
                      "ones of each model's forward pass as one traced TensorFlow function, "
                      "both models in one process, one after the other"}
    del single_model
    record = ensemble_record(choice, data, spec, selection, key, name, labels, y_val,
                             probabilities, val_probabilities, reference, latency,
                             [label for _, label in named])
    folder = write_model_folder(folder, model, record, ensemble_card, raw_test, probabilities)
    del model
    release_tensorflow_memory()
    return ModelExport(folder=folder, model_key=key, trial_key="",
                       val_accuracy=record["scores"]["val_accuracy"],
                       test_accuracy=record["scores"]["test_accuracy"],
                       check=record["check"], onnx=record["onnx"], rule=spec.rule,
                       ensemble=record["ensemble"])


def _scores(result) -> dict[str, Any]:
    return {"val_accuracy": result.val_accuracy, "test_accuracy": result.test_accuracy,
            "val_loss": result.val_loss, "test_loss": result.test_loss}


def ensemble_record(choice: EnsembleChoice, data: DataHandle, spec: ModelInput,
                    selection: Selection, key: str, name: str, labels: np.ndarray,
                    y_val: np.ndarray, probabilities: np.ndarray,
                    val_probabilities: np.ndarray, reference: np.ndarray,
                    latency: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The ensemble's ``model.json``."""
    predicted = probabilities.argmax(axis=1)
    per_class, confusion = class_scores(spec, labels, predicted)
    data_name = spec.data_name or "data"
    single = choice.best_single
    members = [{"name": label, "trial_key": m.result.trial_key, "picks": m.picks,
                "weight": m.weight, "config": m.result.config.model_dump(),
                "label": m.result.config.label(), "backend": m.result.backend,
                "best_epoch": m.result.best_epoch, "param_count": m.result.param_count,
                **_scores(m.result), "weights_path": m.result.weights_path}
               for m, label in zip(choice.members, names, strict=True)]
    params = int(sum(m.result.param_count or 0 for m in choice.members))
    top = choice.at(choice.k)
    scores = {"val_accuracy": float(np.mean(val_probabilities.argmax(axis=1) == y_val)),
              "val_loss": float(log_loss(val_probabilities, y_val)),
              "test_accuracy": float(np.mean(predicted == labels)),
              "test_loss": float(log_loss(probabilities, labels)),
              "per_class": per_class, "confusion_matrix": confusion.tolist(),
              "note": "the exported model.keras on the validation and test splits as raw "
                      "input; per class and the confusion matrix: its predictions on the test "
                      "split. The validation split chose the members: its accuracy is no "
                      "unbiased estimate"}
    chosen = selection.record() | {
        "by": "val_accuracy (ties: val log loss)",
        "how": f"{choice.k} greedy picks with replacement among {len(choice.pool.trials)} "
               f"trial(s) of the {selection.run} with their weights, on the validation "
               "split's class probabilities"}
    return {
        **common_record(spec, data, key, name or f"{data_name}: an ensemble of "
                        f"{len(members)} trial(s) of the {selection.run}"),
        "ensemble": {
            "method": METHOD, "k": choice.k, "members": members,
            "weights": [m.weight for m in choice.members],
            "trial_keys": [m.result.trial_key for m in choice.members],
            "param_count": params,
            "candidates": len(choice.pool.trials), "completed": choice.pool.completed,
            "skipped": len(choice.pool.skipped),
            "skipped_trial_keys": list(choice.pool.skipped[:50]),
            "pool": choice.pool.line(),
            "probabilities": {"computed": choice.computed, "read_from_cache": choice.read,
                              "cache": "probabilities-<split>.npz beside each trial's "
                                       "weights, keyed by the weights file's SHA-256"},
            "curve": [{k: (int(v) if k in ("k", "members", "top_k_members") else float(v))
                       for k, v in row.items()} for row in choice.curve.to_dict("records")],
        },
        "comparison": {
            "ensemble": {"members": len(members), "picks": choice.k,
                         "val_accuracy": scores["val_accuracy"],
                         "test_accuracy": scores["test_accuracy"], "param_count": params,
                         "latency_ms": latency["ensemble"]},
            "best_single": {"trial_key": single.trial_key, "label": single.config.label(),
                            **_scores(single), "param_count": single.param_count,
                            "latency_ms": latency["best_single"]},
            "top_k_average": {"k": int(top["top_k_members"]),
                              "val_accuracy": float(top["top_k_val_accuracy"]),
                              "test_accuracy": float(top["top_k_test_accuracy"]),
                              "how": "the plain average of the top K trials by validation "
                                     "accuracy, equal weights"},
            "latency": {k: latency[k] for k in ("machine", "how")},
        },
        "scores": scores,
        "chosen": chosen,
        "check": {"samples": int(len(labels)),
                  "test_accuracy": scores["test_accuracy"],
                  "network_test_accuracy": float(np.mean(reference == labels)),
                  "differing_predictions": int(np.sum(predicted != reference)),
                  "how": "model.keras on the test split rebuilt as raw input against the "
                         "members' weighted average computed from their weights on the "
                         "processed test split"},
        "versions": versions(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
