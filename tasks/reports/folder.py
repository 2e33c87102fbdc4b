"""Report writing: one folder per run under ``reports/``, tables (tabulate, Parquet), figures,
``report.md`` and Prefect artifacts for the UI.

A run folder is built under a hidden staging name and renamed into place when complete, so
``reports/`` never holds a half-written report.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from tasks.data.splits import DataHandle
from tasks.errors import ReportError, one_line
from tasks.export.exporter import MODEL_FOLDER, ModelExport, Selection, export_model
from tasks.files import atomic_write_parquet, atomic_write_text, check_writable_dir
from tasks.search.space import SEARCH_FIELDS, shown_fields
from tasks.trial.result import TrialResult


def default_reports_dir() -> Path:
    from tasks.settings import current

    return current().reports_dir


# --------------------------------------------------------------------------------------------
# Files, written atomically
# --------------------------------------------------------------------------------------------
def staging_prefix(pid: int | None = None) -> str:
    """The hidden name's start of a folder being written by process ``pid`` of this machine."""
    return f".staging-{socket.gethostname()}-{pid or os.getpid()}-"


def remove_abandoned_staging(root: Path) -> None:
    """Remove the staging folders that processes of this machine left when they were killed
    mid-report (``kill -9``: no clean-up ran); a live process's, or another machine's on a
    shared folder, stay."""
    import psutil

    host = socket.gethostname()
    for folder in root.glob(f".staging-{host}-*-*"):
        pid = folder.name.removeprefix(f".staging-{host}-").split("-", 1)[0]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


class RunFolder:
    """A report folder that appears under ``reports_dir`` only once it is complete.

    Use as a context manager: files go into :attr:`path` (a hidden staging folder); on a
    clean exit it is renamed to :attr:`final`; on an exception it is removed, unless the
    exception came from a :meth:`step` after the trials table was :meth:`keep`-marked: then
    the folder is renamed into place with what was written and a ``REPORT_FAILED.txt`` that
    names the step, and a :class:`ReportError` saying so is raised.
    """

    def __init__(self, reports_dir: str | os.PathLike, kind: str):
        root = check_writable_dir(reports_dir)
        remove_abandoned_staging(root)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        self.final = root / f"{kind}-{stamp}-{uuid.uuid4().hex[:4]}"
        self.path = root / f"{staging_prefix()}{self.final.name}"

    def __enter__(self) -> RunFolder:
        self.path.mkdir(parents=True)
        self.kept: str | None = None
        self.failed_later: tuple[str, Exception] | None = None
        return self

    def write_results(self, frame: pd.DataFrame, name: str = "trials.parquet") -> Path:
        """The run's results, first of all: one row per trial as Parquet; from now on a failed
        report step keeps the folder."""
        path = atomic_write_parquet(frame, self.path / name)
        self.keep(name)
        return path

    def write_trials_table(self, frame: pd.DataFrame, name: str = "trials.txt") -> str:
        """The report step "trials table": the trials, best validation accuracy first, as
        Markdown in ``name``; returns the Markdown."""
        with self.step("trials table"):
            text = markdown_table(results_table(frame, sort_by="val_accuracy"))
            atomic_write_text(self.path / name, text + "\n")
        return text

    def keep(self, name: str) -> None:
        """From now on a failed step keeps the folder: ``name`` (e.g. ``trials.parquet``)
        holds the run's results."""
        self.kept = name

    @contextlib.contextmanager
    def step(self, name: str):
        """One named report step (a table, a figure). If it fails once the results are kept,
        the run ends with one error line naming the step, not with a lost run."""
        try:
            yield
        except Exception as exc:
            if self.kept is None:
                raise
            message = (f"report step '{name}' failed ({one_line(exc)}); the "
                       f"results are safe in {self.final / self.kept}; rerun the same command "
                       "to rebuild the report from the cache")
            atomic_write_text(self.path / "REPORT_FAILED.txt", message + "\n")
            raise ReportError(message) from exc

    @contextlib.contextmanager
    def later_step(self, name: str):
        """A report step whose failure does not stop the report: the other steps are written,
        then the run ends with this step's one error line (as :meth:`step`'s)."""
        try:
            yield
        except Exception as exc:
            if self.kept is None:
                raise
            self.failed_later = (name, exc)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and self.failed_later is not None:
            name, error = self.failed_later
            with contextlib.suppress(ReportError):
                with self.step(name):
                    raise error  # writes REPORT_FAILED.txt, names the step
            os.rename(self.path, self.final)
            message = (self.final / "REPORT_FAILED.txt").read_text().strip()
            raise ReportError(message) from error
        if exc_type is None or (isinstance(exc, ReportError) and self.kept is not None):
            os.rename(self.path, self.final)
        else:
            shutil.rmtree(self.path, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------
def trials_frame(results: Sequence[TrialResult]) -> pd.DataFrame:
    """One row per trial (all hyperparameters, metrics, timing, latency, cached, status, key).
    A completed trial trained before latencies were recorded is measured from its weights
    here, once (:func:`tasks.trial.latency.latency_of` keeps the figure beside them)."""
    from tasks.trial.latency import latency_of

    rows = []
    for result in results:
        row = result.row()
        if row["latency_ms"] is None and result.status == "completed":
            row["latency_ms"] = latency_of(result)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=TrialResult.columns())
    frame["cached"] = frame["cached"].astype(bool)
    return frame


def best_trial(frame: pd.DataFrame, by: str = "val_accuracy") -> pd.Series | None:
    """The completed trial with the highest ``by`` (validation accuracy: never test)."""
    done = frame[(frame["status"] == "completed") & frame[by].notna()]
    if done.empty:
        return None
    return done.loc[done[by].idxmax()]


def best_trial_line(best: pd.Series, what: str = "trial", model: str = "") -> str:
    """The summary line of the best trial (a grid's: ``what="cell"``) by validation accuracy
    (a row of the trials table); its hidden layers where there are more than one; ``model``:
    its trial key and model folder (:meth:`tasks.export.exporter.ModelExport.line`)."""
    layers = best.get("layers", 1)
    depth = f"layers={int(layers)}, " if pd.notna(layers) and int(layers) != 1 else ""
    return (f"- **best {what} by validation accuracy**: units={best['units']}, {depth}"
            f"dropout={best['dropout']:g}, activation={best['activation']}, "
            f"learning rate={best['learning_rate']:g}, batch={best['batch_size']} -> "
            f"validation {best['val_accuracy']:.4f}, **test {best['test_accuracy']:.4f}**"
            + (f"; {model}" if model else ""))


# --------------------------------------------------------------------------------------------
# The model of the run (tasks.export): the chosen trial's model/ folder
# --------------------------------------------------------------------------------------------
def export_chosen(run: RunFolder, results: Sequence[TrialResult], best: pd.Series | None,
                  data: DataHandle | None, kind: str, refit: bool = False) -> ModelExport | None:
    """Export the chosen trial (``best``, a row of the trials table) into the run folder's
    ``model/``, as the report step "model" (should it fail, the rest of the report is still
    written, then the run ends with its error line); None without data or without a
    completed trial (a report written from results alone, e.g. in tests). ``refit``: retrain
    the chosen config on train + validation first and export that model
    (:func:`tasks.export.refit.export_refit`), the report step "refit" (an ensemble instead:
    :func:`tasks.reports.ensemble.export_run_model`)."""
    if data is None or best is None:
        return None
    chosen = [r for r in results if r.trial_key == best["trial_key"] and r.status == "completed"]
    if not chosen:
        return None
    completed = len({r.trial_key for r in results if r.status == "completed"})
    model = None
    selection = Selection(kind, completed, report=run.final.name)
    with run.later_step("refit" if refit else "model"):  # a failure still leaves the report
        if refit:
            from tasks.export.refit import export_refit

            model = export_refit(chosen[0], data, run.path / MODEL_FOLDER, selection)
        else:
            model = export_model(chosen[0], data, run.path / MODEL_FOLDER, selection)
    return model


def publish_model_link(key: str, where: Path,
                       description: str = "the chosen trial's model folder: model.keras, "
                                          "model.json, MODEL.md") -> None:
    """A link artifact (key ``<key>-model``) to the model card in the model folder ``where``;
    nothing outside a Prefect run."""
    from prefect.artifacts import create_link_artifact

    if not _in_run():
        return
    create_link_artifact(where.resolve().as_uri() + "/MODEL.md", link_text=f"the model: {where}",
                         key=f"{key}-model", description=description)


def publish_model(key: str, model: ModelExport | None, folder: Path) -> None:
    """A link artifact to the run's model card and a markdown one that names the trial key
    and the model folder; nothing without a model or outside a Prefect run."""
    from prefect.artifacts import create_markdown_artifact

    if model is None or not _in_run():
        return
    where = folder / MODEL_FOLDER
    publish_model_link(key, where)
    if model.ensemble:
        create_markdown_artifact(
            f"## The model: an ensemble\n\n- folder: `{where}` (`model.keras`, `model.json`, "
            f"`MODEL.md`)\n- {len(model.ensemble['members'])} trial(s), "
            f"{model.ensemble['k']} greedy picks on validation; model key "
            f"`{model.model_key}`\n- validation {model.val_accuracy:.4f}, test "
            f"**{model.test_accuracy:.4f}**\n"
            "- load it without this project: `keras.saving.load_model(\"model.keras\")`\n",
            key=f"{key}-model-card", description="the run's model: an ensemble of its trials")
        return
    refit = ""
    if model.refit:
        search = model.refit["search_model"]
        refit = (f"- a **refit** on train + validation ({model.refit['epochs']} epoch(s)) of trial "
                 f"`{search['trial_key']}` (validation {search['val_accuracy']:.4f}, test "
                 f"{search['test_accuracy']:.4f}); the refit's validation score is no "
                 "unbiased estimate\n")
    onnx = ("- `model.onnx` for ONNX Runtime, checked against Keras on the test split\n"
            if model.onnx.get("written") else "")
    create_markdown_artifact(
        f"## The model\n\n- folder: `{where}` (`model.keras`, `model.json`, `MODEL.md`)\n"
        f"- trial key `{model.trial_key}`, model key `{model.model_key}`\n"
        f"- validation {model.val_accuracy:.4f}, test **{model.test_accuracy:.4f}**\n"
        + refit + onnx +
        "- load it without this project: `keras.saving.load_model(\"model.keras\")`\n",
        key=f"{key}-model-card", description="the chosen trial's model")


def markdown_table(rows: Sequence[dict[str, Any]] | pd.DataFrame, floatfmt: str = ".4f") -> str:
    """A GitHub-markdown table: floats with ``floatfmt``, strings exactly as given (so a
    learning rate formatted as ``1e-05`` stays that way)."""
    if isinstance(rows, pd.DataFrame):
        rows = rows.to_dict("records")

    def cell(value: Any) -> Any:
        if isinstance(value, (float, np.floating)):
            return "" if np.isnan(value) else format(float(value), floatfmt)
        return value

    rows = [{key: cell(value) for key, value in row.items()} for row in rows]
    return tabulate(rows, headers="keys", tablefmt="github", disable_numparse=True)


def evaluation_rows(result: TrialResult) -> list[dict[str, Any]]:
    """The exercise's Train/Validation/Test table: loss, accuracy, error rate %."""
    rows = []
    for name, prefix in (("Train", "train"), ("Validation", "val"), ("Test", "test")):
        accuracy = getattr(result, f"{prefix}_accuracy")
        rows.append({
            "": name,
            "Loss": getattr(result, f"{prefix}_loss"),
            "Accuracy": accuracy,
            "Error rate [%]": 100.0 * (1.0 - accuracy),
        })
    return rows


def grid_lines(frame: pd.DataFrame) -> str:
    """The exercise's grid printout, one line per cell."""
    lines = []
    for row in frame.itertuples():
        if row.status != "completed":
            lines.append(
                f"dropout = {row.dropout:.2f}, {row.units} neurons -> FAILED ({row.error})"
            )
        else:
            lines.append(
                f"dropout = {row.dropout:.2f}, {row.units} neurons -> accuracy "
                f"{row.test_accuracy:.3f}, error rate = {row.test_error_rate:.1f}%"
            )
    return "\n".join(lines)


def hyperparameter_columns(frame: pd.DataFrame) -> list[str]:
    """The search fields a table of ``frame``'s trials shows (a quiet one, e.g. ``layers``,
    only where some trial differs from its default: :func:`tasks.search.space.shown_fields`)."""
    return shown_fields({name: list(pd.unique(frame[name])) for name in SEARCH_FIELDS
                         if name in frame})


def results_table(frame: pd.DataFrame, sort_by: str | None = None) -> pd.DataFrame:
    """The human table: hyperparameters, validation/test accuracy, error rate, source."""
    columns = [*hyperparameter_columns(frame), "epochs", "val_accuracy", "test_accuracy",
               "test_error_rate", "train_seconds", "cached", "status"]
    table = frame[columns].copy()
    if sort_by:
        table = table.sort_values(sort_by, ascending=False, na_position="last")
    # hyperparameters as typed (1e-05, not 0.0000); metrics keep 4 decimals
    for column in ("dropout", "learning_rate"):
        table[column] = table[column].map(lambda v: f"{v:g}")
    table["train_seconds"] = table["train_seconds"].map(
        lambda v: "" if pd.isna(v) else f"{v:.1f}")
    return table.rename(columns={"test_error_rate": "test_error_%", "train_seconds": "seconds"})


# --------------------------------------------------------------------------------------------
# Prefect artifacts (stable keys; tables as lists of dicts, which the UI renders)
# --------------------------------------------------------------------------------------------
def _clean(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return None if np.isnan(value) else round(float(value), 5)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _in_run() -> bool:
    from prefect.context import get_run_context

    try:
        get_run_context()
    except Exception:
        return False
    return True


def publish_table(key: str, table: pd.DataFrame | Sequence[dict[str, Any]],
                  description: str) -> None:
    """A table artifact (list of dicts, NaN as empty) under a stable key; no-op outside a
    Prefect run."""
    from prefect.artifacts import create_table_artifact

    if not _in_run():
        return
    rows = table.to_dict("records") if isinstance(table, pd.DataFrame) else list(table)
    rows = [{k: _clean(v) for k, v in row.items()} for row in rows]
    create_table_artifact(rows, key=key, description=description)


def publish_artifacts(
    table_key: str,
    table: pd.DataFrame | Sequence[dict[str, Any]],
    summary_markdown: str,
    folder: Path,
    description: str,
) -> None:
    """A table artifact, a markdown summary and a link to the report. Outside a Prefect run
    this does nothing."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    if not _in_run():
        return
    publish_table(table_key, table, description)
    create_markdown_artifact(
        summary_markdown, key=f"{table_key}-summary", description=f"{description}: summary"
    )
    create_link_artifact(
        folder.resolve().as_uri() + "/report.md",
        link_text=f"report.md in {folder}",
        key=f"{table_key}-report",
        description="the full report on disk (figures, tables, Parquet)",
    )
