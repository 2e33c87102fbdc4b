"""From class probabilities to the tables of a predict run: one row per input (the predicted
class, its probability, the top 3), the counts per predicted class, and where labels exist the
accuracy, the per-class table and the confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tasks.predict.inputs import Inputs

TOP = 3


def top_classes(probabilities: np.ndarray, k: int = TOP) -> np.ndarray:
    """The ``k`` most probable classes of each row, most probable first (ties: the lower
    index first, as ``argmax``)."""
    k = min(k, probabilities.shape[1])
    return np.argsort(-probabilities, axis=1, kind="stable")[:, :k]


def predictions_frame(inputs: Inputs, probabilities: np.ndarray,
                      classes: tuple[str, ...]) -> pd.DataFrame:
    """One row per input: ``file``, ``row``, ``predicted`` (class index), ``predicted_name``,
    ``probability``, ``top_2``/``top_3`` (index, name, probability: the next most probable
    classes); with labels also ``label``, ``label_name`` and ``correct``."""
    names = np.asarray(classes, dtype=object)
    top = top_classes(probabilities)
    rows = np.arange(len(top))
    frame = pd.DataFrame({"file": inputs.files.astype(str), "row": inputs.rows.astype(np.int64)})
    frame["predicted"] = top[:, 0].astype(np.int64)
    frame["predicted_name"] = names[top[:, 0]]
    frame["probability"] = probabilities[rows, top[:, 0]]
    for rank in range(2, TOP + 1):
        if rank <= top.shape[1]:
            index = top[:, rank - 1]
            frame[f"top_{rank}"] = pd.array(index, dtype="Int64")
            frame[f"top_{rank}_name"] = names[index]
            frame[f"top_{rank}_probability"] = probabilities[rows, index]
        else:  # two classes: no third
            frame[f"top_{rank}"] = pd.array([None] * len(top), dtype="Int64")
            frame[f"top_{rank}_name"] = None
            frame[f"top_{rank}_probability"] = np.nan
    if inputs.labels is not None:
        labelled = inputs.labelled
        known = np.where(labelled, inputs.labels, 0)
        label = pd.array(known, dtype="Int64")
        label[~labelled] = pd.NA
        correct = pd.array(top[:, 0] == known, dtype="boolean")
        correct[~labelled] = pd.NA
        frame["label"] = label
        frame["label_name"] = pd.Series(names[known], dtype=object).where(labelled, None)
        frame["correct"] = correct
    return frame


def class_counts(predicted: np.ndarray, classes: tuple[str, ...]) -> pd.DataFrame:
    """Per class: how many inputs it was predicted for, and their share."""
    counts = np.bincount(predicted, minlength=len(classes))
    return pd.DataFrame({"class": np.arange(len(classes)), "name": list(classes),
                         "predicted": counts.astype(np.int64),
                         "share": counts / max(1, len(predicted))})


@dataclass(frozen=True)
class Evaluation:
    """The labelled rows' accuracy, per-class table and confusion matrix (counts: row = true
    class, column = predicted)."""

    rows: int
    accuracy: float
    per_class: pd.DataFrame
    confusion: np.ndarray


def evaluate(labels: np.ndarray, predicted: np.ndarray,
             classes: tuple[str, ...]) -> Evaluation:
    """``labels`` and ``predicted``: class indices of the labelled rows."""
    n = len(classes)
    confusion = np.zeros((n, n), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    samples = confusion.sum(axis=1)
    correct = np.diag(confusion)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(samples > 0, correct / np.maximum(samples, 1), np.nan)
    per_class = pd.DataFrame({"class": np.arange(n), "name": list(classes),
                              "samples": samples, "correct": correct, "accuracy": accuracy,
                              "predicted": confusion.sum(axis=0)})
    return Evaluation(rows=int(len(labels)),
                      accuracy=float(np.mean(labels == predicted)) if len(labels) else float("nan"),
                      per_class=per_class, confusion=confusion)


def confusion_frame(confusion: np.ndarray, classes: tuple[str, ...]) -> pd.DataFrame:
    """The confusion matrix's counts as a table: one row per true class, one column per
    predicted class (by name)."""
    frame = pd.DataFrame(confusion, columns=list(classes))
    frame.insert(0, "true \\ predicted", list(classes))
    return frame
