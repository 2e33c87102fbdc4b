"""Which model: a model folder, a report folder (its ``model/``), or the newest report's.

A model folder holds ``model.keras`` and ``model.json`` (:mod:`tasks.export.exporter`);
:class:`ModelFolder` is that folder with ``model.json`` read: what the model takes (shape,
dtype, a table's feature names), what happens before it (an image folder's conversion), its
classes, its data's fingerprint and split, its ``model_key``. Loading ``model.keras`` and
running it (:func:`probabilities`) start TensorFlow; everything else does not.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.errors import UserError
from tasks.export.exporter import MODEL_FILE, MODEL_FOLDER

MODEL_JSON = "model.json"
#: The word ``--model`` takes for the newest report folder's model.
LATEST = "latest"
#: The kind of predict's own report folders (``predict-<time>-<id>``), which hold no model.
PREDICT_KIND = "predict"
#: Rows per call of the model (bounded memory).
BATCH = 10_000
_STAMP = re.compile(r"-(\d{8}-\d{6})-[0-9a-f]{4}$")


@dataclass(frozen=True)
class ModelFolder:
    """An exported model's folder and its ``model.json`` (``record``); ``report``: the report
    folder it belongs to, where it is one's ``model/``."""

    folder: Path
    record: dict[str, Any]
    report: Path | None = None

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.record["classes"])

    @property
    def model_key(self) -> str:
        return self.record["model_key"]

    @property
    def kind(self) -> str:
        """``image`` or ``table``."""
        return self.record["input"]["kind"]

    @property
    def shape(self) -> tuple[int, ...]:
        """One sample's shape: ``(h, w)``, ``(h, w, c)`` or ``(features,)``."""
        return tuple(self.record["input"]["shape"])

    @property
    def dtype(self) -> str:
        return self.record["input"]["dtype"]

    @property
    def feature_names(self) -> tuple[str, ...] | None:
        names = self.record["input"].get("feature_names")
        return tuple(names) if names else None

    @property
    def before_model(self) -> dict[str, Any] | None:
        return self.record.get("before_model")

    @property
    def fingerprint(self) -> str:
        return self.record["data"]["fingerprint"]

    @property
    def split_record(self) -> dict[str, Any]:
        return self.record["data"].get("split") or {}

    @property
    def name(self) -> str:
        return self.record.get("name") or self.folder.name

    def takes(self) -> str:
        """What the model takes, in words: ``28x28 uint8 images``, ``rows of 5 feature
        columns (size, weight, …)``."""
        if self.kind == "image":
            return f"{shape_text(self.shape)} {self.dtype} images"
        names = self.feature_names
        listed = f" ({', '.join(names)})" if names else ""
        return f"rows of {self.shape[0]} feature columns{listed}"


def shape_text(shape) -> str:
    """``28x28``, ``32x32x3``."""
    return "x".join(str(int(d)) for d in shape)


# --------------------------------------------------------------------------------------------
# Finding the folder
# --------------------------------------------------------------------------------------------
def default_reports_dir() -> Path:
    from tasks.settings import current

    return current().reports_dir


def find_model(model: str, reports_dir: str | os.PathLike | None = None) -> ModelFolder:
    """The model ``--model`` names: :data:`LATEST` (:func:`latest_report`), a model folder,
    a report folder (its ``model/``) or a ``model.keras`` file. One line if there is none."""
    if model == LATEST:
        return open_model(latest_report(reports_dir) / MODEL_FOLDER)
    path = Path(model).expanduser()
    if not path.exists():
        raise UserError(f"--model {model}: not found (a model folder, a report folder holding "
                        f"model/, a model.keras file, or {LATEST})")
    if path.is_file():
        if path.name != MODEL_FILE:
            raise UserError(f"--model {model}: not a model folder, a report folder or a "
                            f"{MODEL_FILE} file")
        path = path.parent
    if not (path / MODEL_FILE).is_file() and (path / MODEL_FOLDER / MODEL_FILE).is_file():
        path = path / MODEL_FOLDER
    if not (path / MODEL_FILE).is_file():
        raise UserError(f"--model {model}: no {MODEL_FILE} in it or in its {MODEL_FOLDER}/ "
                        "(a run's report folder holds one)")
    return open_model(path)


def open_model(folder: Path) -> ModelFolder:
    """The model folder ``folder`` with its ``model.json`` read."""
    try:
        record = json.loads((folder / MODEL_JSON).read_text())
        record["classes"], record["input"], record["model_key"], record["data"]  # noqa: B018
    except FileNotFoundError:
        raise UserError(f"{folder}: no {MODEL_JSON} beside {MODEL_FILE} (an exported model "
                        "folder holds both)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{folder / MODEL_JSON}: not a model description this project wrote "
                        f"({type(exc).__name__}: {exc})") from None
    report = folder.parent if folder.name == MODEL_FOLDER else None
    return ModelFolder(folder=folder, record=record, report=report)


def latest_report(reports_dir: str | os.PathLike | None = None) -> Path:
    """The newest report folder under ``reports_dir`` (default: ``$PIPELINE_REPORTS_DIR``,
    else ``reports/``) that holds ``model/``: by the time in its name, then by its model's
    age; predict's own folders and hidden (staging) folders left out."""
    root = Path(reports_dir or default_reports_dir()).expanduser()
    found = []
    if root.is_dir():
        for folder in root.iterdir():
            if (folder.name.startswith((".", f"{PREDICT_KIND}-")) or not folder.is_dir()
                    or not (folder / MODEL_FOLDER / MODEL_FILE).is_file()):
                continue
            stamp = _STAMP.search(folder.name)
            written = (folder / MODEL_FOLDER / MODEL_JSON)
            found.append((stamp.group(1) if stamp else "",
                          written.stat().st_mtime if written.exists() else 0.0, folder))
    if not found:
        raise UserError(f"--model {LATEST}: no report folder with a {MODEL_FOLDER}/ under "
                        f"{root} (predict's own left out): run a flow first, or give --model "
                        "PATH (or --reports-dir)")
    return max(found)[2]


# --------------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------------
def load(model: ModelFolder):
    """``model.keras``, loaded with ``keras.saving.load_model`` (no custom objects)."""
    from tasks.engine.tf_runtime import tensorflow

    tensorflow()
    import keras

    return keras.saving.load_model(model.folder / MODEL_FILE)


def probabilities(network, x: np.ndarray) -> np.ndarray:
    """Class probabilities (n, classes) of the loaded model on raw input ``x`` (the model's
    dtype: a table's float64 rows are standardized in float64, as the data step did, which
    ``model.predict``'s float32 would round), in batches of :data:`BATCH`."""
    from tasks.engine.tf_runtime import tensorflow

    tf = tensorflow()
    return np.concatenate([np.asarray(network(tf.constant(x[i:i + BATCH]), training=False),
                                      dtype=np.float64)
                           for i in range(0, len(x), BATCH)])


def predict(model: ModelFolder, x: np.ndarray) -> np.ndarray:
    """Load the model, run it on ``x``, free TensorFlow's memory: class probabilities."""
    from tasks.engine.train import release_tensorflow_memory

    network = load(model)
    try:
        return probabilities(network, x)
    finally:
        del network
        release_tensorflow_memory()
