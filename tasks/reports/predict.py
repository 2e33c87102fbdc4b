"""The report of a predict run (``reports/predict-<time>-<id>/``): what the model predicted
for each input, the counts per predicted class, a grid of the inputs with their predicted
names (images), and where labels exist the accuracy, the per-class table, the confusion
matrix and the misclassified inputs (the baseline report's figures).

Files: ``predictions.parquet`` and ``predictions.csv`` (one row per input:
:func:`tasks.predict.scoring.predictions_frame`), ``summary.json`` (model, input, counts,
accuracy and confusion matrix), ``report.md`` and the figures.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.files import atomic_path, atomic_write_text
from tasks.predict.inputs import Inputs
from tasks.predict.model import ModelFolder
from tasks.predict.scoring import (
    Evaluation,
    class_counts,
    confusion_frame,
    evaluate,
    predictions_frame,
)
from tasks.reports.figures import baseline as plots
from tasks.reports.figures import common as figures
from tasks.reports.folder import (
    RunFolder,
    default_reports_dir,
    markdown_table,
    publish_artifacts,
)

KIND = "predict"


@figures.locked
def plot_input_grid(images: Any, predicted: Sequence[int], probability: Sequence[float],
                    path: figures.PathLike, class_names: Sequence[str],
                    labels: Sequence[int] | None = None, title: str = "Inputs") -> Path:
    """The first (up to) 32 inputs in a 4 x 8 grid, each titled with its predicted class and
    probability; where ``labels`` are given, a wrong prediction's title is red and names the
    true class (``true→predicted``)."""
    imgs = figures.as_images(images)
    shown = min(len(imgs), figures.MAX_GRID_IMAGES)
    rows = max(1, min(figures.GRID_ROWS, math.ceil(shown / figures.GRID_COLS)))
    fig, axes = plt.subplots(rows, figures.GRID_COLS, figsize=(12, 1.9 * rows + 0.6),
                             squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i >= shown:
            continue
        figures.show_image(ax, imgs[i])
        name = figures.class_label(class_names, int(predicted[i]), 11)
        wrong = labels is not None and 0 <= int(labels[i]) != int(predicted[i])
        text = (f"{figures.class_label(class_names, int(labels[i]), 11)}→{name}" if wrong
                else f"{name} {probability[i]:.2f}")
        ax.set_title(text, fontsize=8, color="C3" if wrong else "black")
    if len(imgs) > shown:
        title += f" — first {shown} of {len(imgs)}"
    fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    return figures.save(fig, path)


def write_predict_report(model: ModelFolder, inputs: Inputs, probabilities: np.ndarray,
                         reports_dir: str | os.PathLike | None = None,
                         inbox: dict[str, Any] | None = None) -> Path:
    """Write the predict run's folder (``predict-…``) and return its final path. ``inbox``:
    the inbox run's files (``folder``, ``scored``, ``rejected``: name -> line, ``summary``)."""
    classes = model.classes
    frame = predictions_frame(inputs, probabilities, classes)
    predicted = frame["predicted"].to_numpy()
    counts = class_counts(predicted, classes)
    labelled = inputs.labelled
    evaluation = (evaluate(inputs.labels[labelled], predicted[labelled], classes)
                  if labelled.any() else None)
    images = model.kind == "image"
    with RunFolder(reports_dir or default_reports_dir(), KIND) as run:
        out = run.path
        run.write_results(frame, "predictions.parquet")
        with run.step("predictions.csv"), atomic_path(out / "predictions.csv") as tmp:
            frame.to_csv(tmp, index=False)
        if images:
            with run.step("inputs grid"):
                plot_input_grid(inputs.x[:figures.MAX_GRID_IMAGES],
                                predicted[:figures.MAX_GRID_IMAGES],
                                frame["probability"].to_numpy()[:figures.MAX_GRID_IMAGES],
                                out / "inputs.png", classes,
                                None if inputs.labels is None
                                else inputs.labels[:figures.MAX_GRID_IMAGES],
                                "Inputs and their predicted classes")
        if evaluation is not None:
            with run.step("confusion matrix"):
                plots.plot_confusion(inputs.labels[labelled], predicted[labelled],
                                     out / "confusion_matrix.png", list(classes))
            missed = np.flatnonzero(labelled & (predicted != np.where(labelled, inputs.labels,
                                                                       -1)))
            if images:
                with run.step("misclassified grid"):
                    plots.plot_misclassified_grid(
                        inputs.x[missed[:figures.MAX_GRID_IMAGES]],
                        inputs.labels[missed[:figures.MAX_GRID_IMAGES]],
                        predicted[missed[:figures.MAX_GRID_IMAGES]],
                        out / "misclassified_grid.png", classes)
        summary = summary_record(model, inputs, counts, evaluation, run.final, inbox)
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
        atomic_write_text(out / "report.md", report_markdown(model, inputs, counts, evaluation,
                                                             summary, images, inbox))
    publish_artifacts("predict", counts, summary_markdown(model, inputs, evaluation, run.final),
                      run.final, "predict: inputs per predicted class")
    return run.final


def against_model_json(model: ModelFolder, inputs: Inputs,
                       evaluation: Evaluation | None) -> dict[str, Any] | None:
    """For the model's own test split: this run's accuracy and confusion matrix beside the
    ones ``model.json`` recorded at training."""
    if inputs.split != "test" or evaluation is None:
        return None
    scores = model.record.get("scores", {})
    recorded = np.asarray(scores.get("confusion_matrix") or [], dtype=np.int64)
    same = recorded.shape == evaluation.confusion.shape and bool(
        np.array_equal(recorded, evaluation.confusion))
    differing = (int(np.abs(recorded - evaluation.confusion).sum()) // 2
                 if recorded.shape == evaluation.confusion.shape else None)
    return {"test_accuracy": scores.get("test_accuracy"), "accuracy_here": evaluation.accuracy,
            "same_accuracy": scores.get("test_accuracy") is not None
            and abs(scores["test_accuracy"] - evaluation.accuracy) < 0.5 / evaluation.rows,
            "confusion_matrix_identical": same, "moved_predictions": differing}


def summary_record(model: ModelFolder, inputs: Inputs, counts, evaluation: Evaluation | None,
                   folder: Path, inbox: dict[str, Any] | None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "report": folder.name,
        "model": {"folder": str(model.folder), "model_key": model.model_key,
                  "trial_key": model.record.get("trial", {}).get("trial_key"),
                  "ensemble_trial_keys": (model.record.get("ensemble") or {}).get("trial_keys"),
                  "name": model.name, "classes": list(model.classes)},
        "input": {"source": inputs.source, "what": inputs.what, "rows": len(inputs),
                  "split": inputs.split, "fingerprint": inputs.fingerprint,
                  "conversion": inputs.conversion, "labelled_rows": int(inputs.labelled.sum())},
        "counts": {row["name"]: int(row["predicted"]) for row in counts.to_dict("records")},
    }
    if evaluation is not None:
        record["accuracy"] = evaluation.accuracy
        record["confusion_matrix"] = evaluation.confusion.tolist()
        record["per_class"] = {row["name"]: {"samples": int(row["samples"]),
                                             "accuracy": None if np.isnan(row["accuracy"])
                                             else float(row["accuracy"])}
                               for row in evaluation.per_class.to_dict("records")}
    compared = against_model_json(model, inputs, evaluation)
    if compared is not None:
        record["model_json"] = compared
    if inbox is not None:
        record["inbox"] = inbox
    return record


def report_markdown(model: ModelFolder, inputs: Inputs, counts, evaluation: Evaluation | None,
                    summary: dict[str, Any], images: bool,
                    inbox: dict[str, Any] | None) -> str:
    trial = model.record.get("trial", {}).get("trial_key")
    ensemble = model.record.get("ensemble")
    which = (f"an ensemble of {len(ensemble['members'])} trials" if ensemble
             else f"trial key `{trial}`")
    source = (f"[`{model.report.name}`](../{model.report.name}/report.md)" if model.report
              else f"`{model.folder}`")
    lines = [f"# Predictions: {model.name}", "",
             f"- **model**: `{model.folder}` (model key `{model.model_key}`, {which}), from "
             f"{source}; it takes {model.takes()}",
             f"- **input**: `{inputs.source}`: {inputs.what}; {len(inputs)} rows"
             + (f", {int(inputs.labelled.sum())} with labels" if inputs.labels is not None
                else ", no labels")]
    if inputs.conversion:
        lines.append(f"- {inputs.conversion}")
    lines += [f"- {note}" for note in inputs.notes]
    lines += ["", "## Predicted classes", "",
              markdown_table(counts.assign(share=counts["share"] * 100).rename(
                  columns={"share": "share %"}), floatfmt=".1f")]
    if images:
        lines += ["", "## Inputs", "", "The first inputs with their predicted class and its "
                  "probability (a wrong prediction in red, true→predicted):", "",
                  "![inputs](inputs.png)"]
    if evaluation is not None:
        lines += ["", "## Accuracy", "",
                  f"**{evaluation.accuracy:.4f}** on the {evaluation.rows} labelled rows "
                  f"({int(np.trace(evaluation.confusion))} correct)."]
        compared = summary.get("model_json")
        if compared is not None:
            same = "identical" if compared["confusion_matrix_identical"] else (
                f"{compared['moved_predictions']} prediction(s) moved")
            lines += ["", f"`model.json`'s test accuracy (the training run's): "
                      f"{compared['test_accuracy']:.4f}; here {compared['accuracy_here']:.4f}. "
                      f"Its confusion matrix against this one: {same}."]
        lines += ["", "## Per class", "", markdown_table(evaluation.per_class),
                  "", "## Confusion matrix", "",
                  "Counts (row: true class, column: predicted):", "",
                  markdown_table(confusion_frame(evaluation.confusion, model.classes)), "",
                  "![confusion matrix](confusion_matrix.png)"]
        if images:
            lines += ["", "## Misclassified inputs", "",
                      "![misclassified](misclassified_grid.png)"]
    if inbox is not None:
        lines += ["", "## Inbox", "", inbox["summary"], ""]
        lines += [f"- scored: `{name}`" for name in inbox.get("scored", [])]
        lines += [f"- rejected: `{name}`: {line}" for name, line in
                  inbox.get("rejected", {}).items()]
    lines += ["", "Files: `predictions.parquet`, `predictions.csv` (one row per input: file, "
              "row, predicted class index and name, its probability, the next two classes), "
              "`summary.json`.", ""]
    return "\n".join(lines)


def summary_markdown(model: ModelFolder, inputs: Inputs, evaluation: Evaluation | None,
                     folder: Path) -> str:
    accuracy = (f"- accuracy **{evaluation.accuracy:.4f}** on {evaluation.rows} labelled rows\n"
                if evaluation is not None else "")
    return (f"## Predictions\n\n- model `{model.folder}` (model key `{model.model_key}`)\n"
            f"- input `{inputs.source}`: {len(inputs)} rows\n{accuracy}"
            f"- report: `{folder}/report.md`\n")


@task(name="predict-report", cache_policy=NO_CACHE, persist_result=False)
def predict_report_task(model: ModelFolder, inputs: Inputs, probabilities: np.ndarray,
                        reports_dir: str | None = None,
                        inbox: dict[str, Any] | None = None) -> str:
    """Write the predict run's report folder; returns its path."""
    return str(write_predict_report(model, inputs, probabilities, reports_dir, inbox))
