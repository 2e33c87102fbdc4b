"""The refit report (``python flows/train.py --from-report DIR``): the model an earlier run
chose, retrained on train + validation; its ``model/`` holds the refit model, with the search
model beside it."""

from __future__ import annotations

import os
from pathlib import Path

from prefect import task

from tasks.data.splits import DataHandle, dataset_info
from tasks.export.exporter import MODEL_FOLDER, ModelExport, Selection
from tasks.files import atomic_write_text
from tasks.reports.folder import (
    RunFolder,
    default_reports_dir,
    markdown_table,
    publish_model,
    trials_frame,
)
from tasks.trial.result import TrialResult


def write_refit_report(result: TrialResult, data: DataHandle, selection: Selection,
                       source: str | os.PathLike,
                       reports_dir: str | os.PathLike | None = None) -> Path:
    """Refit the chosen trial ``result`` (trained on ``data``; chosen as ``selection`` says,
    by the run whose report is ``source``) and write a run folder with the refit model's
    ``model/``, ``trials.parquet`` (the two trials) and ``report.md``; returns its path."""
    from tasks.export.exporter import export_model
    from tasks.export.refit import refit_trial, with_history

    result = with_history(result, data)
    refit, merged, _ = refit_trial(result, data)
    with RunFolder(reports_dir or default_reports_dir(), "refit") as run:
        frame = trials_frame([result, refit])
        frame.insert(1, "model", ["search", "refit"])
        run.write_results(frame)
        model = export_model(refit, merged, run.path / MODEL_FOLDER, selection,
                             search=result, search_data=data)
        with run.step("report.md"):
            atomic_write_text(run.path / "report.md",
                              refit_markdown(model, data, selection, Path(source)))
    publish_model("refit", model, run.final)
    return run.final


def refit_markdown(model: ModelExport, data: DataHandle, selection: Selection,
                   source: Path) -> str:
    """The report: where the config came from, the two models side by side, the caveat."""
    refit = model.refit or {}
    search, refitted = refit.get("search_model", {}), refit.get("refit_model", {})
    rows = [{"model": "search model (the report's choice)",
             "trial key": f"`{search.get('trial_key')}`",
             "trained on": f"train ({search.get('train_size')})",
             "epochs": search.get("epochs"), "validation accuracy": search.get("val_accuracy"),
             "test accuracy": search.get("test_accuracy")},
            {"model": "**refit model** (`model/`)", "trial key": f"`{refitted.get('trial_key')}`",
             "trained on": f"train + validation ({refitted.get('train_size')})",
             "epochs": refitted.get("epochs"),
             "validation accuracy": refitted.get("val_accuracy"),
             "test accuracy": refitted.get("test_accuracy")}]
    name = dataset_info(data).name
    return f"""# Refit on train + validation: {name}

The model that `{source}` chose ({selection.how()}) retrained on the training and validation
splits together for {refit.get('epochs')} epoch(s) ({refit.get('epochs_rule')}); data
fingerprint `{data.fingerprint}`, the merged data's `{refitted.get('data_fingerprint')}`.

{markdown_table(rows, floatfmt=".4f")}

- **the model**: {model.line()}
- The refit model trained on the validation split: its validation accuracy is no unbiased
  estimate. Compare the two by their test accuracy, which took part in neither the choice nor
  the training; one run each, so the difference includes the training's own randomness.

Files: `trials.parquet` (the search trial and the refit trial, column `model`),
`{MODEL_FOLDER}/` (`model.keras`, `model.json`, `MODEL.md`{", `model.onnx`" if
model.onnx.get("written") else ""}).
"""


@task(name="refit-report")
def write_refit_report_task(result: TrialResult, data: DataHandle, selection: Selection,
                            source: str, reports_dir: str | None = None) -> str:
    """Refit the chosen trial and write the refit report folder."""
    return str(write_refit_report(result, data, selection, source, reports_dir))
