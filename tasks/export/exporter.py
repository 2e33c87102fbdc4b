"""The exporter: one trial (its config, stored weights and data) -> the ``model/`` folder.

:func:`export_model` reads the trial's stored weights (``data/trials/<key>/model.weights.npz``,
Keras' ``get_weights`` order), builds the standalone Keras model
(:mod:`tasks.export.network`), saves ``model.keras``, ``model.json`` and ``MODEL.md``, and
checks the saved model on the test split: seconds, not a retraining. Where the weights are
gone, it says so in one line and retrains that one trial through the trial task (cached like
any trial).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tasks.console import say
from tasks.data.splits import DataHandle, load_splits
from tasks.export.card import model_card
from tasks.export.inputs import ModelInput, model_input
from tasks.files import atomic_path, atomic_write_text
from tasks.trial.result import TrialResult, weights_exist

MODEL_FOLDER = "model"
MODEL_FILE = "model.keras"
#: model.json's layout; part of the model key.
LAYOUT = 1


@dataclass(frozen=True)
class Selection:
    """How a run chose its model: ``run`` (``baseline``, ``grid``, ``random search``, ``study``,
    ``tune``), among ``trials`` completed trials, by ``by`` on the ``split`` split."""

    run: str
    trials: int
    by: str = "val_accuracy"
    split: str = "validation"
    report: str = ""

    def how(self) -> str:
        if self.run == "baseline":
            return ("the baseline: one trial, its weights those of the epoch with the best "
                    "validation accuracy")
        return (f"the best of {self.trials} completed trial(s) of the {self.run} by "
                "validation accuracy")

    def record(self) -> dict[str, Any]:
        return {"run": self.run, "trials": self.trials, "by": self.by, "split": self.split,
                "report": self.report, "how": self.how()}


@dataclass(frozen=True)
class ModelExport:
    """What the exporter wrote: the folder, the model's key, the trial and its scores, the
    check of the saved model on the test split."""

    folder: Path
    model_key: str
    trial_key: str
    val_accuracy: float
    test_accuracy: float
    retrained: bool = False
    check: dict[str, Any] = field(default_factory=dict)
    #: model.json's ``refit`` (the search model and the refit model side by side) where the
    #: exported model is a refit (:mod:`tasks.export.refit`), else None
    refit: dict[str, Any] | None = None
    #: model.json's ``onnx``: whether model.onnx was written, its check and latencies
    onnx: dict[str, Any] = field(default_factory=dict)
    #: the data's normalization rule, and why (model.json's ``normalization.rule``)
    rule: str = ""
    #: model.json's ``ensemble`` where the exported model is an ensemble of the run's trials
    #: (:mod:`tasks.export.ensemble`; ``trial_key`` is then empty), else None
    ensemble: dict[str, Any] | None = None

    def line(self) -> str:
        """``trial key `…`, model in `model/``` for the best-trial line of the report beside
        the folder (a link to its card); a refit's names both trials and the refit's test
        accuracy; an ensemble's, its members and scores."""
        name = self.folder.name
        where = f"model in [`{name}/`]({name}/MODEL.md)" + (
            f" (its input normalized as {self.rule})" if self.rule else "")
        if self.ensemble:
            members = self.ensemble["members"]
            return (f"**ensemble** of {len(members)} trial(s) by {self.ensemble['k']} greedy "
                    f"picks on validation: validation {self.val_accuracy:.4f}, test "
                    f"**{self.test_accuracy:.4f}**, {where}")
        if not self.refit:
            return f"trial key `{self.trial_key}`, {where}"
        search, refit = self.refit["search_model"], self.refit["refit_model"]
        return (f"trial key `{search['trial_key']}`; **refit** on train + validation "
                f"({refit['train_size']} samples, {epochs_text(self.refit['epochs'])}): trial "
                f"key `{self.trial_key}`, test **{self.test_accuracy:.4f}**, {where}")


def epochs_text(epochs: int) -> str:
    """``1 epoch``, ``10 epochs``."""
    return f"{epochs} epoch{'' if epochs == 1 else 's'}"


# --------------------------------------------------------------------------------------------
# The trial's weights, retrained where they are gone
# --------------------------------------------------------------------------------------------
def in_prefect_run() -> bool:
    """Whether this code runs inside a Prefect flow or task run (a trial is then trained
    through the cached trial task)."""
    from prefect.context import get_run_context

    try:
        get_run_context()
    except Exception:
        return False
    return True


def with_weights(result: TrialResult, data: DataHandle) -> tuple[TrialResult, bool]:
    """``result`` if its weights are where it says, else the result of training that trial
    again (one line says so): through the trial task inside a Prefect run (the new result
    replaces the cached one), else the plain training function. Returns (result, retrained)."""
    if weights_exist(result):
        return result, False
    say(f"The chosen trial's weights are missing ({result.weights_path or 'never saved'}): "
        f"retraining trial {result.trial_key} ({result.config.label()})")
    data_dir = str(Path(data.directory).parents[1])  # <data dir>/processed/<fingerprint>
    if in_prefect_run():
        from tasks.trial.task import train_trial_task

        fresh = train_trial_task.with_options(refresh_cache=True)(
            config=result.config, data=data, backend=result.backend, data_dir=data_dir)
    else:
        from tasks.trial.task import train_trial

        fresh = train_trial(result.config, data, result.backend, data_dir)
    if fresh.status != "completed" or not weights_exist(fresh):
        raise RuntimeError(f"retraining trial {result.trial_key} gave no weights "
                           f"({fresh.status}: {fresh.error})")
    return fresh, True


def result_from_row(row) -> TrialResult:
    """The trial of a row of a run's ``trials.parquet`` (a pandas Series or a dict): its
    config, key, data, backend, scores and ``weights_path``, for :func:`export_model`."""
    from tasks.config import TrialConfig

    values = {name: (value.item() if hasattr(value, "item") else value)
              for name, value in dict(row).items()}
    values = {name: None if isinstance(value, float) and np.isnan(value) else value
              for name, value in values.items()}  # Parquet's missing values
    config = TrialConfig(**{name: values[name] for name in TrialConfig.model_fields})
    fields = {name: values.get(name) for name in TrialResult.model_fields
              if name not in ("config", "history", "cached") and name in values}
    return TrialResult.model_validate({**fields, "config": config})


# --------------------------------------------------------------------------------------------
# The folder
# --------------------------------------------------------------------------------------------
def model_key(trial_key: str, weights: list[np.ndarray], preprocessing: dict[str, Any]) -> str:
    """The model's identity: its trial key, its weights' bytes and its preprocessing (the
    ``.keras`` file's bytes change with every save and cannot serve)."""
    digest = hashlib.sha256(f"mnist-search-model-v{LAYOUT}|{trial_key}|".encode())
    digest.update(json.dumps(preprocessing, sort_keys=True).encode())
    for array in weights:
        array = np.ascontiguousarray(array)
        digest.update(f"|{array.dtype.str}:{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:24]


def versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    try:
        project = importlib.metadata.version("mnist-search")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover (run from a checkout)
        project = "unknown"
    return {"tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "python": platform.python_version(),
            "mnist-search": project}


def raw_inputs(x: np.ndarray, spec: ModelInput) -> np.ndarray:
    """Processed feature rows back as the model's raw input: 8-bit pixels exactly
    (``rint(x * 255)``), standardized features to float rounding (``x * std + mean``)."""
    if spec.scaling == "pixels":
        raw = np.rint(x.astype(np.float64) * 255.0)
    else:
        raw = x.astype(np.float64) * spec.std + spec.mean
    return raw.astype(spec.dtype).reshape((len(x), *spec.shape))


def readable_json(value: Any, depth: int = 0) -> str:
    """JSON indented by objects, with lists of numbers or strings on one line (a
    standardization's 784 means are one line, not 784)."""
    pad = "  " * (depth + 1)
    if isinstance(value, dict) and value:
        items = [f"{pad}{json.dumps(k)}: {readable_json(v, depth + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + "  " * depth + "}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        items = [pad + readable_json(v, depth + 1) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + "  " * depth + "]"
    return json.dumps(value)


def split_text(split: dict[str, Any]) -> str:
    """The split rule as the data step applied it, in words."""
    if "split_column" in split:
        return "the rows the table's `split` column marks `test`"
    if "validation_size" in split:
        return (f"a stratified hold-out of {split.get('test_size')} rows (seed "
                f"{split.get('seed')}); validation: {split.get('validation_size')} more rows")
    if "test_size" in split:
        return (f"the first {split['test_size']} samples of the data's test part; validation: "
                "the rest of it")
    return "as the data step split it"


def export_model(result: TrialResult, data: DataHandle, folder: str | os.PathLike,
                 selection: Selection, name: str = "", search: TrialResult | None = None,
                 search_data: DataHandle | None = None) -> ModelExport:
    """Write the trial ``result``'s model folder (``model.keras``, ``model.json``,
    ``MODEL.md``, and ``model.onnx`` where the ``export`` extra is installed) at ``folder``
    (replaced if it exists); returns what was written. ``search``: where ``result`` is the
    refit of a search trial (:mod:`tasks.export.refit`), that trial, trained on
    ``search_data``: both are shown side by side."""
    from tasks.engine.model import predict_probabilities, read_weights
    from tasks.engine.train import release_tensorflow_memory
    from tasks.export.network import build_standalone, network_of

    if result.data_fingerprint != data.fingerprint:
        raise ValueError(f"trial {result.trial_key} was trained on data "
                         f"{result.data_fingerprint}, not on {data.fingerprint}")
    result, retrained = with_weights(result, data)
    weights = read_weights(result.weights_path)
    spec = model_input(data)
    splits = load_splits(data)
    model = build_standalone(result.config, weights, spec)
    # the project's own network on the processed test split, and the model on raw input
    reference = predict_probabilities(network_of(model), splits.x_test).argmax(axis=1)
    raw_test = raw_inputs(splits.x_test, spec)
    probabilities = predict_probabilities(model, raw_test)
    exported = probabilities.argmax(axis=1)
    labels = splits.y_test.astype(np.int64)
    preprocessing = spec.preprocessing()
    key = model_key(result.trial_key, weights, preprocessing)
    record = model_record(result, data, spec, selection, key, labels, reference, exported,
                          retrained, name)
    if search is not None:
        record["refit"] = refit_record(result, data, search, search_data)
        record["data"]["split_text"] += ("; the refit model trained on the training and "
                                         "validation splits together")
    folder = write_model_folder(folder, model, record, model_card, raw_test, probabilities)
    del model
    release_tensorflow_memory()
    return ModelExport(folder=folder, model_key=key, trial_key=result.trial_key,
                       val_accuracy=float(result.val_accuracy),
                       test_accuracy=float(result.test_accuracy), retrained=retrained,
                       check=record["check"], refit=record.get("refit"),
                       onnx=record["onnx"], rule=spec.rule)


def write_model_folder(folder: str | os.PathLike, model, record: dict[str, Any], card,
                       raw_test: np.ndarray, probabilities: np.ndarray) -> Path:
    """The model folder at ``folder`` (replaced if it exists): ``model.keras``,
    ``model.onnx`` where the ``export`` extra passes its check against ``probabilities`` (the
    model's on ``raw_test``; ``record["onnx"]`` says how it went), ``model.json`` and
    ``MODEL.md`` (``card(record)``)."""
    from tasks.export.onnx_model import export_onnx

    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    with atomic_path(folder / MODEL_FILE) as tmp:
        model.save(tmp)
    record["onnx"] = export_onnx(model, folder, raw_test, probabilities)
    atomic_write_text(folder / "model.json", readable_json(record) + "\n")
    atomic_write_text(folder / "MODEL.md", card(record))
    return folder


def _scores(result: TrialResult) -> dict[str, Any]:
    return {"train_accuracy": result.train_accuracy, "val_accuracy": result.val_accuracy,
            "test_accuracy": result.test_accuracy, "train_loss": result.train_loss,
            "val_loss": result.val_loss, "test_loss": result.test_loss}


def refit_record(refit: TrialResult, data: DataHandle, search: TrialResult,
                 search_data: DataHandle | None) -> dict[str, Any]:
    """``model.json``'s ``refit``: the search model (the chosen trial) and the refit model
    (the exported one) side by side."""
    return {
        "what": "the chosen trial's config retrained on the training and validation splits "
                "together, for the epoch count of the chosen trial's best validation "
                "accuracy; the exported model is this refit",
        "epochs": refit.config.epochs,
        "epochs_rule": "the epoch of the highest validation accuracy in the chosen trial's "
                       "history",
        "search_model": {
            "trial_key": search.trial_key, "config": search.config.model_dump(),
            "backend": search.backend, "data_fingerprint": search.data_fingerprint,
            "train_size": search_data.train_size if search_data else None,
            "trained_on": "train", "epochs": search.config.epochs,
            "best_epoch": search.best_epoch, **_scores(search)},
        "refit_model": {
            "trial_key": refit.trial_key, "config": refit.config.model_dump(),
            "backend": refit.backend, "data_fingerprint": refit.data_fingerprint,
            "train_size": data.train_size, "trained_on": "train + validation",
            "epochs": refit.config.epochs, **_scores(refit)},
        "note": "the refit model trained on the validation split: its validation accuracy is "
                "no unbiased estimate; compare the two models by their test accuracy (the "
                "test split took part in neither the choice nor the training)",
    }


def class_scores(spec: ModelInput, labels: np.ndarray, predicted: np.ndarray
                 ) -> tuple[dict[str, Any], np.ndarray]:
    """Per class (test samples, test accuracy) and the confusion matrix (rows: true class)."""
    classes = list(spec.classes)
    confusion = np.zeros((len(classes), len(classes)), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = {}
    for index, class_name in enumerate(classes):
        count = int(confusion[index].sum())
        per_class[class_name] = {"test_samples": count, "test_accuracy":
                                 float(confusion[index, index] / count) if count else None}
    return per_class, confusion


def common_record(spec: ModelInput, data: DataHandle, key: str, name: str) -> dict[str, Any]:
    """What every ``model.json`` starts with (a single trial's or an ensemble's): the model's
    name and key, its classes, input, normalization, output and data."""
    classes = list(spec.classes)
    data_name = spec.data_name or "data"
    return {
        "layout": LAYOUT,
        "name": name,
        "model_key": key,
        "file": MODEL_FILE,
        "classes": classes,
        "input": spec.describe(),
        "before_model": spec.before_model,
        # which rule, and why: in model.json, not in the model key (preprocessing())
        "normalization": {**spec.normalization(), "rule": spec.rule},
        "output": {"what": "class probabilities (softmax), one per class, in the order of "
                           "`classes`", "shape": [len(classes)], "dtype": "float32"},
        "data": {"name": data_name, "source": spec.source, "fingerprint": data.fingerprint,
                 "split": spec.split, "split_text": split_text(spec.split),
                 "sizes": {"train": data.train_size, "validation": data.validation_size,
                           "test": data.test_size}},
    }


def model_record(result: TrialResult, data: DataHandle, spec: ModelInput, selection: Selection,
                 key: str, labels: np.ndarray, predicted: np.ndarray, exported: np.ndarray,
                 retrained: bool, name: str = "") -> dict[str, Any]:
    """``model.json``: everything a user or a later step needs to use the model."""
    per_class, confusion = class_scores(spec, labels, predicted)
    data_name = spec.data_name or "data"
    return {
        **common_record(spec, data, key, name or f"{data_name}: {result.config.label()}"),
        "trial": {"trial_key": result.trial_key, "config": result.config.model_dump(),
                  "backend": result.backend, "best_epoch": result.best_epoch,
                  "param_count": result.param_count, "weights_path": result.weights_path,
                  "retrained": retrained},
        "scores": {"train_accuracy": result.train_accuracy, "train_loss": result.train_loss,
                   "val_accuracy": result.val_accuracy, "val_loss": result.val_loss,
                   "test_accuracy": result.test_accuracy, "test_loss": result.test_loss,
                   "per_class": per_class, "confusion_matrix": confusion.tolist(),
                   "note": "accuracies and losses as the training run measured them; per "
                           "class and the confusion matrix: the network's predictions on the "
                           "test split"},
        "chosen": selection.record(),
        "check": {"samples": int(len(labels)),
                  "test_accuracy": float(np.mean(exported == labels)),
                  "network_test_accuracy": float(np.mean(predicted == labels)),
                  "differing_predictions": int(np.sum(exported != predicted)),
                  "how": "model.keras on the test split rebuilt as raw input (exact for 8-bit "
                         "images; to float rounding for standardized data) against the "
                         "project's network on the processed test split"},
        "versions": versions(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
