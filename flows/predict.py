"""Predict with a run's model: the model folder every run leaves, on new data.

    python flows/predict.py --model latest --data photos/                 # the newest run's model
    python flows/predict.py --model reports/grid-20250101-120000-ab12 --data new.csv
    python flows/predict.py --model latest --data fashion-mnist --split test   # its own test rows
    python flows/predict.py --model latest --inbox inbox/                 # each new file, once

Find the model (a model folder, a report folder's model/, or the newest report's) -> read the
input as the model takes it (image files converted as at training; a mismatch is one line,
exit status 2, nothing written) -> model.keras on the raw input -> a report folder
(predictions.parquet and .csv, counts per predicted class, the inputs with their predicted
names; accuracy, per-class table and confusion matrix where there are labels).
"""

from __future__ import annotations

import sys
from typing import Annotated

from prefect import flow
from pydantic import Field

from tasks.cli import flow_main, run_cli, say
from tasks.errors import UserError
from tasks.predict.inbox import claim_new_files, inbox_note, record_outcomes
from tasks.predict.inputs import SplitName
from tasks.predict.model import LATEST, ModelFolder, find_model
from tasks.predict.task import predict_task, read_inbox_task, read_input_task
from tasks.reports.predict import predict_report_task

_WHAT = {"group": "model and input"}
Model = Annotated[str, Field(
    description="the model: a model folder (model.keras, model.json), a run's report folder "
                "(its model/), or latest: the newest report folder with a model/ under "
                "--reports-dir ($PIPELINE_REPORTS_DIR), predict's own left out",
    json_schema_extra=_WHAT | {"metavar": "PATH|latest"})]
Data = Annotated[str | None, Field(
    description="the input, with or without labels: an npz of x (y) or x_test (y_test); IDX "
                "images (the labels file beside them, if any); a folder of images (class "
                "subfolders, named by class name or index, or none); one image file; a "
                "Parquet or CSV table of the model's feature columns (and a label column); "
                "or a name: mnist, fashion-mnist",
    json_schema_extra=_WHAT | {"metavar": "PATH|NAME"})]
Split = Annotated[SplitName, Field(
    description="all: every row of the input; test (validation, train): the model's own rows "
                "of that split, read and split as its training run did (the input must be "
                "its data: the fingerprint in model.json)", json_schema_extra=_WHAT)]
Label = Annotated[str, Field(description="a table's label column, where it has one",
                             json_schema_extra=_WHAT | {"metavar": "COLUMN"})]
Inbox = Annotated[str | None, Field(
    description="instead of --data: a folder whose new files are each scored once by the "
                "model (the key: model key + the file's content hash; a file that does not fit "
                "is recorded as rejected, with its line); one report for the run's new files",
    json_schema_extra=_WHAT | {"metavar": "DIR"})]
ReportsDir = Annotated[str | None, Field(
    description="where the report folder is written and latest is looked for (default: "
                "./reports or $PIPELINE_REPORTS_DIR)",
    json_schema_extra={"group": "output", "metavar": "DIR"})]


@flow(name="predict")
def predict(
    model: Model = LATEST,
    data: Data = None,
    split: Split = "all",
    label: Label = "label",
    inbox: Inbox = None,
    reports_dir: ReportsDir = None,
) -> str:
    """Predict the classes of ``data`` (or of each new file of ``inbox``) with ``model`` and
    write a report; returns the report folder ("" for an inbox run that scored nothing)."""
    check_choice(data, split, inbox)
    chosen = find_model(model, reports_dir)
    if inbox is not None:
        return score_inbox(chosen, inbox, label, reports_dir)
    inputs = read_input_task(chosen, data, split, label)
    probabilities = predict_task(chosen, inputs)
    folder = predict_report_task(chosen, inputs, probabilities, reports_dir)
    say(f"Report: {folder}")
    return folder


def score_inbox(model: ModelFolder, inbox: str, label: str, reports_dir: str | None) -> str:
    """Each new file of ``inbox`` once: claimed under its key, read (or rejected), predicted,
    reported, recorded."""
    folder = ""
    with claim_new_files(inbox, model.model_key) as batch:
        inputs, rejected = read_inbox_task(model, batch, label)
        for line in rejected.values():
            say(f"rejected: {line}")
        if inputs is not None:
            probabilities = predict_task(model, inputs)
            folder = predict_report_task(model, inputs, probabilities, reports_dir,
                                         inbox_note(batch, rejected))
        record_outcomes(batch, rejected, folder)
    say(batch.summary())
    if folder:
        say(f"Report: {folder}")
    return folder


def check_choice(data: str | None, split: str, inbox: str | None) -> None:
    if (data is None) == (inbox is None):
        raise UserError("give --data INPUT or --inbox DIR (one of them)")
    if inbox is not None and split != "all":
        raise UserError(f"--split {split} needs --data (an inbox's files are scored whole)")


def check(kwargs: dict) -> None:
    """Before Prefect or TensorFlow start: the model, the input against it (read once, handed
    to the run), the inbox, the reports directory."""
    from tasks.files import check_writable_dir
    from tasks.predict.inbox import check_inbox
    from tasks.predict.inputs import check_inputs
    from tasks.settings import current

    data, split, inbox = kwargs.get("data"), kwargs.get("split", "all"), kwargs.get("inbox")
    check_choice(data, split, inbox)
    chosen = find_model(kwargs.get("model", LATEST), kwargs.get("reports_dir"))
    if inbox is not None:
        check_inbox(inbox)
    else:
        check_inputs(chosen, data, split, kwargs.get("label", "label"))
    check_writable_dir(kwargs.get("reports_dir") or current().reports_dir)


def main(argv: list[str] | None = None) -> str:
    return flow_main(predict, "Predict classes with a run's model (its model/ folder) on new "
                     "data, with or without labels, and write a report folder under reports/.",
                     argv, check=check)


if __name__ == "__main__":
    sys.exit(run_cli(main))
