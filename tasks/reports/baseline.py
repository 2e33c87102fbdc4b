"""The baseline report: everything the exercise shows for its first network, for any data:
class names where the data has them, image figures in the data's own shape and colours, and
a per-class table; a table's data gets the confusion matrix and the per-class table instead
of image figures."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import task

from tasks.data.splits import DataHandle, DatasetInfo, dataset_info, load_splits
from tasks.engine.model import WEIGHTS_SUFFIX
from tasks.export.exporter import MODEL_FOLDER, ModelExport, Selection, export_model
from tasks.files import atomic_write_parquet, atomic_write_text
from tasks.reports.figures import baseline as plots
from tasks.reports.folder import (
    RunFolder,
    default_reports_dir,
    evaluation_rows,
    markdown_table,
    publish_artifacts,
    publish_model,
)
from tasks.trial.result import TrialResult

MISCLASSIFIED_SHOWN = 10


def predict_test(result: TrialResult, data: DataHandle) -> tuple[np.ndarray, str]:
    """Test-set class probabilities of the trial's saved weights, and Keras' model summary."""
    from tasks.engine.model import load_model, model_summary, predict_probabilities
    from tasks.engine.train import release_tensorflow_memory

    splits = load_splits(data)
    model = load_model(result.config, result.weights_path)
    probabilities = predict_probabilities(model, splits.x_test)
    summary = model_summary(model)
    del model
    release_tensorflow_memory()
    return probabilities, summary


def write_baseline_report(
    result: TrialResult,
    data: DataHandle,
    probabilities: np.ndarray,
    reports_dir: str | os.PathLike | None = None,
    summary: str = "",
    refit: bool = False,
) -> Path:
    """Write the baseline run folder and return its final path. ``refit``: its ``model/`` is
    the baseline's config retrained on train + validation for its best epoch count."""
    splits = load_splits(data)
    info = dataset_info(data)
    images = splits.x_test
    labels = splits.y_test.astype(int)
    predicted = probabilities.argmax(axis=1)
    missed = np.nonzero(predicted != labels)[0]
    history = pd.DataFrame(result.history)
    evaluation = evaluation_rows(result)
    classes = per_class_rows(labels, predicted, info)
    names = info.class_names if info.named_classes else None
    shape = info.image_shape

    with RunFolder(reports_dir or default_reports_dir(), "baseline") as run:
        out = run.path
        atomic_write_parquet(history, out / "history.parquet")
        atomic_write_parquet(pd.DataFrame(evaluation), out / "evaluation.parquet")
        if result.weights_path and Path(result.weights_path).exists():
            shutil.copyfile(result.weights_path, out / f"model{WEIGHTS_SUFFIX}")
        atomic_write_parquet(pd.DataFrame(classes), out / "classes.parquet")
        plots.plot_history(result.history, out / "history.png")
        plots.plot_confusion(labels, predicted, out / "confusion_matrix.png",
                             info.class_names if names else None)
        if shape is not None:
            plots.plot_predictions(probabilities[:10], images[:10], labels[:10],
                                   out / "first_test_images.png", "First 10 test images",
                                   names, shape)
            for number, index in enumerate(missed[:MISCLASSIFIED_SHOWN], start=1):
                plots.plot_prediction(probabilities[index], images[index], int(labels[index]),
                                      out / f"misclassified_{number:02d}.png", names, shape)
            plots.plot_misclassified_grid(images[missed[:32]], labels[missed[:32]],
                                          predicted[missed[:32]], out / "misclassified_grid.png",
                                          names, shape)
        evaluation_text = markdown_table(evaluation, floatfmt=".4f")
        atomic_write_text(out / "evaluation.txt", evaluation_text + "\n")
        atomic_write_text(out / "model_summary.txt", summary + "\n")
        selection = Selection("baseline", 1, report=run.final.name)
        if refit:
            from tasks.export.refit import export_refit

            model = export_refit(result, data, out / MODEL_FOLDER, selection)
        else:
            model = export_model(result, data, out / MODEL_FOLDER, selection)
        markdown = baseline_markdown(result, evaluation_text, history, len(missed),
                                     len(labels), run.final, summary, info,
                                     markdown_table(classes, floatfmt=".4f"), model)
        atomic_write_text(out / "report.md", markdown)
    publish_artifacts("evaluation", evaluation, summary_markdown(result, run.final), run.final,
                      "Baseline: train / validation / test loss, accuracy, error rate")
    publish_model("baseline", model, run.final)
    return run.final


def summary_markdown(result: TrialResult, folder: Path) -> str:
    return (
        f"## Baseline network\n\n`{result.config.label()}`\n\n"
        f"- test accuracy **{result.test_accuracy:.4f}** "
        f"(error rate {result.test_error_rate:.2f} %)\n"
        f"- validation accuracy {result.val_accuracy:.4f}, best epoch {result.best_epoch} "
        f"of {result.config.epochs}\n"
        f"- trained in {result.train_seconds:.1f} s ({result.backend} backend)\n"
        f"- report: `{folder}/report.md`\n"
    )


def per_class_rows(labels: np.ndarray, predicted: np.ndarray,
                   info: DatasetInfo) -> list[dict]:
    """One row per class: its number, its name, its test images and their accuracy."""
    rows = []
    for index, name in enumerate(info.class_names):
        mine = labels == index
        count = int(mine.sum())
        rows.append({"class": index, "name": name, "test images": count,
                     "test accuracy": float((predicted[mine] == index).mean()) if count
                     else float("nan")})
    return rows


def network_text(result: TrialResult, classes: int) -> str:
    """``Dense(128, relu) -> Dropout(0.3) -> Dense(10) -> softmax``, each hidden layer once."""
    c = result.config
    hidden = f"Dense({c.units}, {c.activation}) -> Dropout({c.dropout:g})"
    hidden = hidden if c.layers == 1 else f"{c.layers} x [{hidden}]"
    return f"{hidden} -> Dense({classes}) -> softmax"


def baseline_markdown(result: TrialResult, evaluation_text: str, history: pd.DataFrame,
                      n_missed: int, n_test: int, folder: Path, summary: str = "",
                      info: DatasetInfo | None = None, classes_text: str = "",
                      model: ModelExport | None = None) -> str:
    c = result.config
    info = info or DatasetInfo("MNIST", "image", (28, 28), tuple(map(str, range(10))))
    missed_images = "\n".join(
        f"![misclassified {i}](misclassified_{i:02d}.png)"
        for i in range(1, min(n_missed, MISCLASSIFIED_SHOWN) + 1)
    )
    images = f"""
## First 10 test images

The true class's bar is orange; a wrong prediction's bar is red.

![first test images](first_test_images.png)

## Misclassified test images

{n_missed} of {n_test} test images are misclassified. The first ones, one by one:

{missed_images}

And the first 32 as a 4 x 8 grid:

![misclassified grid](misclassified_grid.png)
""" if info.image_shape is not None else f"""
{n_missed} of {n_test} test rows are misclassified (a table: no image figures).
"""
    model_text = (f"\n- **the model**: {model.line()} (`model.keras`: the data as it comes "
                  "in, class probabilities out)\n" if model else "")
    shape = ("x".join(map(str, info.image_shape)) + " images" if info.image_shape
             else f"{len(info.feature_names or ())} features")
    return f"""# Baseline: {info.name} with a fully connected network

{network_text(result, len(info.class_names))}; Adam
(learning rate {c.learning_rate:g}), categorical cross-entropy, batch {c.batch_size},
{c.epochs} epochs, seed {c.seed}. Data: {info.name} ({shape}, {len(info.class_names)} classes),
fingerprint `{result.data_fingerprint}`,
trial key `{result.trial_key}`, {result.backend} backend, {result.train_seconds:.1f} s.
{model_text}
## Model summary

```
{summary}
```

## Performance (best-validation weights, epoch {result.best_epoch})

{evaluation_text}

## Training history

Training metrics are recomputed after each epoch *without* dropout, like the validation
metrics, so the two curves are comparable.

{markdown_table(history, floatfmt=".4f")}

![history](history.png)

## Confusion matrix

![confusion matrix](confusion_matrix.png)

## Per class

{classes_text}
{images}
Files: `history.parquet`, `evaluation.parquet`, `classes.parquet`, `evaluation.txt`,
`model_summary.txt`, `model{WEIGHTS_SUFFIX}` (load with `tasks.engine.model.load_model`),
`{MODEL_FOLDER}/` (`model.keras`, `model.json`, `MODEL.md`: loads without this project).
"""


@task(name="baseline-report")
def baseline_report_task(result: TrialResult, data: DataHandle,
                         reports_dir: str | None = None, refit: bool = False) -> str:
    """Predict the test set with the saved weights and write the baseline report (``refit``:
    its model/ is the baseline refitted on train + validation)."""
    probabilities, summary = predict_test(result, data)
    return str(write_baseline_report(result, data, probabilities, reports_dir, summary,
                                     refit))
