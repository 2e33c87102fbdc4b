"""The refit: the chosen config retrained on train + validation, and exported in its place.

A search chooses a config on the validation split; the refit then trains that config once more
on the training *and* validation splits (TensorFlow's tutorials' protocol, AutoGluon's
``refit_full``) for its best epoch count: the epoch of the highest validation accuracy in the
chosen trial's history (a search trial keeps its last epoch's weights, so its ``best_epoch``
is simply its last; the history says which epoch scored best). Everything else is the chosen
trial's config (a refit keeps its last epoch: no checkpoint on a split it trains on).

The refit is a cached trial like any other (:func:`tasks.trial.task.train_trial_task`), on the
merged data of :mod:`tasks.data.refit`, whose fingerprint is derived from the original's: its
key differs from every search trial's, no search trial's key changes, and running the same
refit again trains nothing. Its validation accuracy is measured on rows it trained on: no
unbiased score. The model folder shows the search model and the refit model side by side
(``model.json``'s ``refit``, the card's "Refit" section); the exported model is the refit's.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from tasks.config import TrialConfig
from tasks.console import say
from tasks.data.refit import refit_data
from tasks.data.splits import DataHandle
from tasks.errors import UserError
from tasks.export.exporter import (
    MODEL_FOLDER,
    ModelExport,
    Selection,
    epochs_text,
    export_model,
    in_prefect_run,
)
from tasks.trial.result import TrialResult

#: The flows' ``refit`` parameter (``--refit``).
Refit = Annotated[bool, Field(
    description="retrain the chosen config on train + validation for its best epoch count "
                "(the epoch of its best validation accuracy) and export that model instead "
                "(a cached trial; its validation score is then no unbiased estimate)",
    json_schema_extra={"group": "model"})]


# --------------------------------------------------------------------------------------------
# The refit's config
# --------------------------------------------------------------------------------------------
def best_epoch_by_validation(history: list[dict[str, float]]) -> int | None:
    """The epoch of the highest validation accuracy in ``history`` (the first, on a tie, as
    the engine's checkpoint keeps it), or None without a finite one."""
    best, epoch = -math.inf, None
    for row in history:
        value = row.get("val_accuracy")
        if value is not None and math.isfinite(value) and value > best:
            best, epoch = value, int(row["epoch"])
    return epoch


def refit_config(result: TrialResult) -> TrialConfig:
    """The chosen trial's config for its refit: its best epoch count
    (:func:`best_epoch_by_validation`), its last epoch's weights (no checkpoint)."""
    epochs = best_epoch_by_validation(result.history) or result.config.epochs
    return result.config.model_copy(update={"epochs": epochs, "checkpoint": False})


# --------------------------------------------------------------------------------------------
# Training: through the trial task (cached) inside a Prefect run
# --------------------------------------------------------------------------------------------
def train_cached(config: TrialConfig, data: DataHandle, backend: str) -> tuple[TrialResult, bool]:
    """The trial of ``config`` on ``data``: the cached result where there is one, else trained
    (through the trial task inside a Prefect run, so the result is cached like any trial's;
    the plain training function outside one). Returns (result, from the cache)."""
    from tasks.trial.store import cached_results
    from tasks.trial.task import probably_cached, train_trial, train_trial_task

    data_dir = str(Path(data.directory).parents[1])  # <data dir>/processed/<fingerprint>
    cached = probably_cached(config, data, backend)
    if in_prefect_run():
        result = train_trial_task(config=config, data=data, backend=backend, data_dir=data_dir)
    else:
        from tasks.config import trial_key

        key = trial_key(config, data.fingerprint, backend)
        found = [r for r in cached_results(data.fingerprint, backend) if r.trial_key == key]
        result = found[0] if found else train_trial(config, data, backend, data_dir)
        cached = bool(found)
    if result.status != "completed":
        raise RuntimeError(f"trial {result.trial_key} ({config.label()}): {result.status}: "
                           f"{result.error}")
    return result, cached


def with_history(result: TrialResult, data: DataHandle) -> TrialResult:
    """``result`` with its epochs' history (a row of a ``trials.parquet`` has none: its
    cached result has)."""
    if result.history:
        return result
    full, _ = train_cached(result.config, data, result.backend)
    return full


def refit_trial(result: TrialResult, data: DataHandle) -> tuple[TrialResult, DataHandle, bool]:
    """Train (or take from the cache) the refit of the chosen trial ``result`` (trained on
    ``data``); returns (the refit's result, its data, from the cache). One line says so."""
    merged = refit_data(data)
    config = refit_config(result)
    refit, cached = train_cached(config, merged, result.backend)
    done = ("from the cache" if cached else
            f"trained in {refit.train_seconds or 0:.1f} s")
    say(f"Refit of trial {result.trial_key} on train + validation ({merged.train_size} "
        f"samples, {epochs_text(config.epochs)}): {done}; test accuracy "
        f"{refit.test_accuracy:.4f} (search model {result.test_accuracy:.4f})")
    return refit, merged, cached


def export_refit(result: TrialResult, data: DataHandle, folder: str | os.PathLike,
                 selection: Selection, name: str = "") -> ModelExport:
    """Refit the chosen trial ``result`` (:func:`refit_trial`) and export the refit model into
    ``folder``, the search model beside it in ``model.json`` and the card."""
    result = with_history(result, data)
    refit, merged, _ = refit_trial(result, data)
    return export_model(refit, merged, folder, selection, name, search=result,
                        search_data=data)


# --------------------------------------------------------------------------------------------
# A report's model, refitted later: python flows/train.py --from-report DIR
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReportModel:
    """What a report's ``model/model.json`` says of the trial its run chose: the search
    trial's config, backend and data, and how it was chosen (the search trial, also where the
    report's model is a refit)."""

    folder: Path
    config: TrialConfig
    trial_key: str
    backend: str
    fingerprint: str
    source: str
    split: dict[str, Any]
    selection: Selection
    #: the report's model is an ensemble (:mod:`tasks.export.ensemble`): ``config`` and
    #: ``backend`` are its first member's, ``trial_key`` the best single trial's
    ensemble: bool = False

    def run_options(self, run):
        """``run`` (the command line's RunOptions) with the report's data and split where it
        names none, and the trial's backend."""
        update: dict[str, Any] = {"backend": self.backend}
        if run.data is None:
            update["data"] = self.source
        if (run.train_samples, run.test_size, run.validation_size) == (None, None, None):
            update["train_samples"] = self.split.get("train_samples")
            if "split_column" not in self.split:
                update["test_size"] = self.split.get("test_size")
                update["validation_size"] = self.split.get("validation_size")
        return run.model_copy(update=update)

    def check_data(self, data: DataHandle) -> None:
        """Fail in one line unless ``data`` is the data the chosen trial was trained on."""
        if data.fingerprint != self.fingerprint:
            raise UserError(
                f"{self.folder}: its model's trial was trained on data {self.fingerprint}, "
                f"not on {data.fingerprint} (the data, its split or --label differ: give "
                "--data and the split options of the run that wrote the report)")


def read_report_model(folder: str | os.PathLike) -> ReportModel:
    """The chosen trial of the report folder ``folder`` (or of its ``model/`` folder), from
    its ``model.json``; one line if there is none."""
    folder = Path(folder).expanduser()
    path = next((p for p in (folder / MODEL_FOLDER / "model.json", folder / "model.json")
                 if p.is_file()), None)
    if path is None:
        raise UserError(f"{folder}: no {MODEL_FOLDER}/model.json here; give a run's report "
                        "folder (reports/grid-..., reports/random-..., reports/tune-..., "
                        "reports/baseline-...; the exercise's parts each have one)")
    try:
        record = json.loads(path.read_text())
        refit, ensemble = record.get("refit"), record.get("ensemble")
        chosen = (refit["search_model"] if refit else ensemble["members"][0] if ensemble
                  else record["trial"])
        fingerprint = (refit["search_model"]["data_fingerprint"] if refit
                       else record["data"]["fingerprint"])
        selection = Selection(**{k: v for k, v in record["chosen"].items()
                                 if k in ("run", "trials", "by", "split", "report")})
        if ensemble:
            selection = Selection(selection.run, selection.trials, report=selection.report)
        return ReportModel(folder=folder, config=TrialConfig(**chosen["config"]),
                           trial_key=(record["comparison"]["best_single"]["trial_key"]
                                      if ensemble else chosen["trial_key"]),
                           backend=chosen.get("backend") or record["trial"]["backend"],
                           fingerprint=fingerprint, source=record["data"]["source"],
                           split=dict(record["data"].get("split") or {}), selection=selection,
                           ensemble=bool(ensemble))
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: not a model.json this pipeline wrote ({exc})") from None
