"""Everything already trained: the trial results in Prefect's result storage, read back.

Each trial's result is persisted by ``train_trial_task`` as ``trial-<trial key>`` in Prefect's
local result storage (JSON). Reading them all answers the questions a search asks before it
trains: what did a config of this shape cost on this machine (``--budget``,
:mod:`tasks.search.spending`), and which trials of a tune's space exist already (warm
starts, :mod:`tasks.search.tune.warm_start`). Only results whose stored trial key is the key of
their own config under the current training code are returned: a result of older code is
never mistaken for one of today's. A file that cannot be read (being written, damaged) is
skipped: the store is a hint, the task still decides what to train.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from tasks.config import trial_key
from tasks.trial.result import TrialResult


def result_storage() -> Path:
    """Prefect's local result storage folder (where the trial results are)."""
    from prefect.settings import get_current_settings

    return Path(get_current_settings().results.local_storage_path).expanduser()


def read_result(path: Path) -> TrialResult | None:
    """The TrialResult persisted at ``path`` by the trial task, or None if it is not one."""
    try:
        record = json.loads(path.read_text())
        payload = record["result"]
        value = json.loads(payload) if isinstance(payload, str) else payload
        data = value["data"] if isinstance(value, dict) and "data" in value else value
        history = [{k: math.nan if v is None else v for k, v in row.items()}
                   for row in data.get("history", [])]
        return TrialResult.model_validate({**data, "history": history})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def cached_results(data_fingerprint: str | None = None, backend: str | None = None,
                   storage: Path | None = None) -> list[TrialResult]:
    """Every trial result in the result storage (completed and pruned) that belongs to the
    current training code; only those on ``data_fingerprint`` and ``backend`` when given.
    In file-name order (stable), each key once."""
    folder = storage or result_storage()
    found = []
    for path in sorted(folder.glob("trial-*")):
        result = read_result(path)
        if result is None or path.name != f"trial-{result.trial_key}":
            continue
        if data_fingerprint is not None and result.data_fingerprint != data_fingerprint:
            continue
        if backend is not None and result.backend != backend:
            continue
        if trial_key(result.config, result.data_fingerprint, result.backend) != result.trial_key:
            continue  # trained by other training code: not today's trial
        found.append(result.model_copy(update={"cached": True}))
    return found
