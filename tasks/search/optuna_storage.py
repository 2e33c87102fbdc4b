"""The Optuna side every search shares: where studies are stored, what a trial records.

Tunes keep their studies here, and every grid and random run is exported here too
(:mod:`tasks.reports.optuna_export`), so optuna-dashboard shows them all.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

from tasks.trial.result import TrialResult

#: What the studies maximize.
OBJECTIVE = "val_accuracy"
def storage_url(storage: str | None = None, data_dir: str | os.PathLike | None = None) -> str:
    """``storage``, else ``$PIPELINE_OPTUNA_STORAGE``, else ``sqlite:///<data dir>/optuna.db``
    (``data_dir``: the run's ``--data-dir``; the storage moves with the data directory)."""
    from tasks.settings import current

    if storage:
        return storage
    settings = current()
    if settings.optuna_storage:
        return settings.optuna_storage
    folder = Path(data_dir or settings.data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(folder / 'optuna.db').resolve()}"


def quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def json_safe(value: Any) -> Any:
    """``value`` with NaN as None: the dashboard reads attributes as strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def result_attrs(result: TrialResult) -> dict[str, Any]:
    """The user attributes of a trial: its test accuracy, key, source, and the whole result
    (so a report can be rebuilt from the study alone)."""
    return json_safe({"test_accuracy": result.test_accuracy, "trial_key": result.trial_key,
                      "train_seconds": result.train_seconds, "cached": result.cached,
                      "status": result.status, "result": result.model_dump(mode="json")})
