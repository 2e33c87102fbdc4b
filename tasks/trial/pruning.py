"""Pruning: a trial reports each epoch's validation accuracy to its Optuna trial, and the
study's pruner may stop it (``flows/tune.py --pruner median|hyperband``).

A pruned trial is kept as what it is: ``data/trials/<trial key>/pruned.json`` holds the epochs
it did (the longest pruned run of that config so far). It is never stored as the trial's
result, so a grid, a random search or an unpruned tune that asks for the same config trains it
fully. A later pruned tune that asks for it first replays the recorded epochs through its own
pruner (training is deterministic, so they are the epochs it would train): pruned within them,
it costs nothing; not pruned, it trains from the start, reporting only the new epochs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict

from tasks.errors import UserError
from tasks.files import atomic_write_text

PrunerName = Literal["none", "median", "hyperband"]
PRUNERS: tuple[str, ...] = get_args(PrunerName)
RECORD = "pruned.json"


class TrialLink(BaseModel):
    """Where a trial reports its epochs: a trial of an Optuna study (``flows/tune.py``). With
    a ``pruner`` other than ``none``, that pruner may stop the trial after any epoch."""

    model_config = ConfigDict(frozen=True)

    storage: str
    study: str
    trial_number: int
    pruner: str = "none"


def make_pruner(name: str, epochs: int):
    """Optuna's pruner ``name``: median (from the second epoch on, prune a trial below the
    median of the earlier trials at the same epoch, once 5 trials have finished) or hyperband
    (successive halving over 1..``epochs`` epochs)."""
    import optuna

    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs,
                                              reduction_factor=3)
    raise UserError(f"pruner={name!r}: allowed {', '.join(PRUNERS)}")


def linked_trial(link: TrialLink, epochs: int):
    """The Optuna trial ``link`` names, with its study's pruner (pruners are not stored)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=link.study, storage=link.storage,
                              pruner=make_pruner(link.pruner, epochs))
    storage = optuna.storages.get_storage(link.storage)
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(link.study), link.trial_number)
    return optuna.Trial(study, trial_id)


def epoch_reporter(link: TrialLink, epochs: int, after: int = 0, trial=None
                   ) -> Callable[[dict[str, float]], bool]:
    """An engine ``on_epoch`` callback: report the epoch (those after ``after``) to the linked
    trial (``trial``, if already loaded); True (stop) when its pruner says so."""
    trial = trial or linked_trial(link, epochs)
    prunes = link.pruner != "none"

    def on_epoch(row: dict[str, float]) -> bool:
        epoch = int(row["epoch"])
        if epoch <= after:
            return False
        trial.report(float(row["val_accuracy"]), epoch)
        return prunes and trial.should_prune()

    return on_epoch


def read_record(folder: Path) -> dict | None:
    try:
        return json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None


def write_record(folder: Path, history: list[dict[str, float]], seconds: float) -> None:
    """Keep the longest pruned run of this config."""
    known = read_record(folder)
    if known is not None and len(known["history"]) >= len(history):
        return
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / RECORD, json.dumps({"history": history,
                                                   "train_seconds": round(seconds, 3)}))
