"""The trial unit: one cached, retried, memory-stable training task over a data handle.

``train_trial_task(config, data)`` is the only place a network is trained by the flows. Its
cache key is the trial key (config + data fingerprint + training-code version + backend), so
a rerun, a resumed search, a larger grid or a random search that draws a config the grid
already trained, trains only what is missing. It runs under SERIALIZABLE isolation with an OS
file lock per key (:mod:`tasks.trial.locks`): overlapping runs train a key once, the others
wait for its result. Its retries are on its decorator: transient errors only
(:mod:`tasks.trial.faults`), 2 more attempts after 2 s and 8 s.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import CacheKeyFnPolicy
from prefect.context import TaskRunContext

from tasks.config import TrialConfig, trial_key
from tasks.data.splits import DataHandle, default_data_dir, load_splits
from tasks.settings import current
from tasks.trial.faults import (
    TRIAL_RETRIES,
    TRIAL_RETRY_DELAYS,
    maybe_inject_fault,
    retry_only_transient,
)
from tasks.trial.hold import epoch_hooks, hold
from tasks.trial.latency import measure_weights
from tasks.trial.leases import ensure_lease, stop_if_lease_lost
from tasks.trial.locks import TrialLockManager
from tasks.trial.pruning import (
    TrialLink,
    epoch_reporter,
    linked_trial,
    read_record,
    write_record,
)
from tasks.trial.result import TrialResult


def trial_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Prefect cache key = the trial key; no run id, so results are reused across runs."""
    config = TrialConfig.model_validate(parameters["config"])
    data = DataHandle.model_validate(parameters["data"])
    return "trial-" + trial_key(config, data.fingerprint, parameters.get("backend", "compiled"))


def concurrency_tags() -> list[str]:
    """``$PIPELINE_CONCURRENCY_TAG``: a Prefect tag put on every training task, so that
    ``prefect concurrency-limit create <tag> N`` caps the trainings of all runs together.

    Off by default: before a tagged task starts, Prefect 3.9 asks its API for the tag's slots,
    and on the project's machine that held trials back by about 2 s each even with no limit
    set (the default grid: 24 of its 25 trials, 54 s of its 303 s)."""
    tag = current().concurrency_tag
    return [tag] if tag else []


def weights_path_for(key: str, data_dir: str | os.PathLike | None = None) -> Path:
    from tasks.engine.model import WEIGHTS_SUFFIX

    return Path(data_dir or default_data_dir()) / "trials" / key / f"model{WEIGHTS_SUFFIX}"


def train_trial(
    config: TrialConfig,
    data: DataHandle,
    backend: str = "compiled",
    data_dir: str | None = None,
    attempt: int = 1,
    link: TrialLink | None = None,
) -> TrialResult:
    """Train one trial and return its small result (plain function, tested directly).
    ``link``: report each epoch's validation accuracy to that Optuna trial, whose pruner may
    stop it (the result is then ``pruned``; see :mod:`tasks.trial.pruning`)."""
    from tasks.engine.train import train_model

    maybe_inject_fault(config, attempt)
    key = trial_key(config, data.fingerprint, backend)
    final_path = weights_path_for(key, data_dir)
    hold("train", key, attempt=attempt)  # the test hold (tests only: tasks.trial.hold)
    if link is not None and link.pruner != "none":
        return train_prunable(config, data, backend, key, final_path, link, attempt)
    # a trial whose lease another run took (team stack) stops at its next epoch
    on_epoch = epoch_hooks(
        stop_if_lease_lost(None if link is None else epoch_reporter(link, config.epochs)),
        key, attempt)
    outcome = train_model(
        config,
        load_splits(data),
        backend=backend,
        weights_path=final_path,
        on_epoch=on_epoch,
    )
    return result_of(config, data, backend, key, outcome, attempt)


def result_of(config: TrialConfig, data: DataHandle, backend: str, key: str, outcome,
              attempt: int = 1) -> TrialResult:
    """The TrialResult of an engine outcome, with its inference latency measured here, on the
    machine that trained it (:mod:`tasks.trial.latency`)."""
    latency = None
    if outcome.weights_path:
        try:
            latency = measure_weights(outcome.weights_path, config.activation)
        except (OSError, ValueError):  # pragma: no cover (weights just written)
            latency = None
    return TrialResult(
        trial_key=key,
        config=config,
        data_fingerprint=data.fingerprint,
        backend=backend,
        best_epoch=outcome.best_epoch,
        train_seconds=round(outcome.seconds, 3),
        param_count=outcome.param_count,
        latency_ms=latency,
        weights_path=outcome.weights_path,
        history=outcome.history,
        attempts=attempt,
        **outcome.metrics,
    )


def pruned_result(config: TrialConfig, data: DataHandle, backend: str, key: str,
                  history: list[dict[str, float]], seconds: float | None,
                  attempt: int = 1) -> TrialResult:
    """A pruned trial: its epochs, and the last one's validation metrics (no weights, no
    test score: it is not a finished network)."""
    last = history[-1]
    return TrialResult(
        trial_key=key, config=config, data_fingerprint=data.fingerprint, backend=backend,
        status="pruned", error=f"pruned after epoch {len(history)} of {config.epochs}",
        val_loss=last["val_loss"], val_accuracy=last["val_accuracy"],
        best_epoch=len(history), train_seconds=seconds, history=history, attempts=attempt)


def train_prunable(config: TrialConfig, data: DataHandle, backend: str, key: str,
                   final_path: Path, link: TrialLink, attempt: int = 1) -> TrialResult:
    """Train under the linked trial's pruner (module doc): a complete trial's weights end at
    ``final_path`` as any trial's; a pruned one leaves only its record."""
    from tasks.engine.model import WEIGHTS_SUFFIX
    from tasks.engine.train import train_model

    folder = final_path.parent
    trial = linked_trial(link, config.epochs)
    known = 0
    record = read_record(folder)
    for row in (record or {}).get("history", [])[:config.epochs - 1]:
        known = int(row["epoch"])
        trial.report(float(row["val_accuracy"]), known)
        if trial.should_prune():
            return pruned_result(config, data, backend, key, record["history"][:known], 0.0,
                                 attempt)
    scratch = final_path.with_name("prunable" + WEIGHTS_SUFFIX)
    outcome = train_model(config, load_splits(data), backend=backend, weights_path=scratch,
                          on_epoch=epoch_hooks(stop_if_lease_lost(
                              epoch_reporter(link, config.epochs, known, trial)), key, attempt))
    if len(outcome.history) == config.epochs:  # not pruned: an ordinary finished trial
        os.replace(scratch, final_path)
        outcome.weights_path = str(final_path)
        return result_of(config, data, backend, key, outcome, attempt)
    scratch.unlink(missing_ok=True)
    write_record(folder, outcome.history, outcome.seconds)
    return pruned_result(config, data, backend, key, outcome.history,
                         round(outcome.seconds, 3), attempt)


@task(
    name="train-trial",
    task_run_name="train {config.units}u-d{config.dropout}-{config.activation}"
    "-lr{config.learning_rate}-b{config.batch_size}-e{config.epochs}",
    cache_policy=CacheKeyFnPolicy(cache_key_fn=trial_cache_key).configure(
        isolation_level="SERIALIZABLE", lock_manager=TrialLockManager()),
    persist_result=True,
    result_serializer="json",
    cache_result_in_memory=False,
    retries=TRIAL_RETRIES,
    retry_delay_seconds=TRIAL_RETRY_DELAYS,
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_only_transient,
)
def train_trial_task(
    config: TrialConfig,
    data: DataHandle,
    backend: str = "compiled",
    data_dir: str | None = None,
    link: TrialLink | None = None,
) -> TrialResult:
    """Train one network (cached on the trial key; retried with backoff). ``link`` (not part
    of the key): the Optuna trial it reports to; a pruned result is never cached."""
    from prefect.runtime import task_run
    from prefect.transactions import get_transaction

    result = train_trial(config, data, backend, data_dir, attempt=task_run.run_count or 1,
                         link=link)
    ensure_lease()  # Redis leases: still this attempt's, or it stops (tasks.trial.locks)
    if result.status == "pruned":
        # not the trial's result: a later request for this config must train it fully
        transaction = get_transaction()
        if transaction is not None:
            transaction.write_on_commit = False
    return result


def probably_cached(config: TrialConfig, data: DataHandle, backend: str = "compiled") -> bool:
    """True if Prefect's local result storage holds a result under this trial's cache key. A
    hint for choosing the runner only: the task still decides (a damaged entry is retrained,
    another result storage reads as not cached)."""
    from prefect.settings import get_current_settings

    storage = Path(get_current_settings().results.local_storage_path).expanduser()
    return (storage / f"trial-{trial_key(config, data.fingerprint, backend)}").is_file()
