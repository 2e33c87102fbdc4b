"""The trial unit: one cached, retried, memory-stable training task over a data handle.

``train_trial_task(config, data)`` is the only place a network is trained by the flows. Its cache
key is the trial key (config + data fingerprint + training-code version + backend), so a
rerun, a resumed search, a larger grid or a random search that draws a config the grid
already trained, trains only what is missing. ``run_trials`` fans trials out through a task
runner and reports one line per finished trial.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from prefect import get_run_logger, task
from prefect.cache_policies import CacheKeyFnPolicy
from prefect.context import TaskRunContext
from pydantic import BaseModel, ConfigDict, Field

from tasks.config import TrialConfig, trial_key
from tasks.console import say
from tasks.data import DataHandle, default_data_dir, load_splits
from tasks.pruning import TrialLink, epoch_reporter, linked_trial, read_record, write_record
from tasks.settings import current


class TransientTrainingError(RuntimeError):
    """A failure worth retrying (injected in tests; also raised for flaky I/O)."""


class TrialResult(BaseModel):
    """The small result of one trial: metrics, history, timings and the weights' path."""

    model_config = ConfigDict(extra="ignore")

    trial_key: str
    config: TrialConfig
    data_fingerprint: str
    backend: str = "compiled"
    #: pruned: stopped early by a pruner; its history holds the epochs done, its metrics are
    #: the last epoch's validation ones. Never cached as the trial's result (see train_trial).
    status: Literal["completed", "failed", "pruned"] = "completed"
    error: str | None = None
    train_loss: float | None = None
    train_accuracy: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    test_loss: float | None = None
    test_accuracy: float | None = None
    best_epoch: int | None = None
    train_seconds: float | None = None
    param_count: int | None = None
    weights_path: str | None = None
    history: list[dict[str, float]] = Field(default_factory=list)
    attempts: int = 1  # the attempt that trained it (2 or more: after retries)
    cached: bool = False  # set when collected: True if this run did not train it

    @property
    def test_error_rate(self) -> float | None:
        """Test error rate in percent."""
        return None if self.test_accuracy is None else 100.0 * (1.0 - self.test_accuracy)

    def row(self) -> dict[str, Any]:
        """One flat row for the results table (Parquet)."""
        return {
            "trial_key": self.trial_key,
            **self.config.model_dump(),
            "train_loss": self.train_loss,
            "train_accuracy": self.train_accuracy,
            "val_loss": self.val_loss,
            "val_accuracy": self.val_accuracy,
            "test_loss": self.test_loss,
            "test_accuracy": self.test_accuracy,
            "test_error_rate": self.test_error_rate,
            "best_epoch": self.best_epoch,
            "train_seconds": self.train_seconds,
            "param_count": self.param_count,
            "backend": self.backend,
            "data_fingerprint": self.data_fingerprint,
            "attempts": self.attempts,
            "cached": self.cached,
            "status": self.status,
            "error": self.error,
            "weights_path": self.weights_path,
        }


# --------------------------------------------------------------------------------------------
# Fault injection (tests and demos): PIPELINE_FAULTS='[{"units": 16, "times": 1}]'
# --------------------------------------------------------------------------------------------
def maybe_inject_fault(config: TrialConfig, attempt: int) -> None:
    """Raise a TransientTrainingError for configs matched by ``$PIPELINE_FAULTS``.

    Each rule is a JSON object of config fields to match plus ``times``: the number of
    attempts that fail (``-1``: every attempt), and optionally ``"error": "deterministic"``
    to raise a ValueError instead, which is never retried.
    """
    fields = config.model_dump()
    for rule in current().faults:
        rule = dict(rule)
        times = int(rule.pop("times", 1))
        kind = rule.pop("error", "transient")
        if all(fields.get(k) == v for k, v in rule.items()):
            if times < 0 or attempt <= times:
                error = ValueError if kind == "deterministic" else TransientTrainingError
                raise error(f"injected {kind} fault for {config.label()} (attempt {attempt})")


# --------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------
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


#: Errors worth another attempt: injected faults, flaky I/O (a shared filesystem, a full disk
#: being cleaned). Anything else (bad data, a bad config, a bug) fails at once, with its message.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (TransientTrainingError, OSError)


def is_transient(error: object) -> bool:
    return isinstance(error, TRANSIENT_ERRORS)


def retry_only_transient(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry a failed attempt only for a transient error."""
    return is_transient(state.data)


def weights_path_for(key: str, data_dir: str | os.PathLike | None = None) -> Path:
    from tasks.model import WEIGHTS_SUFFIX

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
    stop it (the result is then ``pruned``; see :mod:`tasks.pruning`)."""
    from tasks.engine import train_model

    maybe_inject_fault(config, attempt)
    key = trial_key(config, data.fingerprint, backend)
    final_path = weights_path_for(key, data_dir)
    if link is not None and link.pruner != "none":
        return train_prunable(config, data, backend, key, final_path, link, attempt)
    on_epoch = None if link is None else epoch_reporter(link, config.epochs)
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
    """The TrialResult of an engine outcome."""
    return TrialResult(
        trial_key=key,
        config=config,
        data_fingerprint=data.fingerprint,
        backend=backend,
        best_epoch=outcome.best_epoch,
        train_seconds=round(outcome.seconds, 3),
        param_count=outcome.param_count,
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
    from tasks.engine import train_model
    from tasks.model import WEIGHTS_SUFFIX

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
                          on_epoch=epoch_reporter(link, config.epochs, known, trial))
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
    cache_policy=CacheKeyFnPolicy(cache_key_fn=trial_cache_key),
    persist_result=True,
    result_serializer="json",
    cache_result_in_memory=False,
    # retries and their delays: Prefect's own settings (prefect.toml: 2 retries, 2 s and 8 s)
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
    if result.status == "pruned":
        # not the trial's result: a later request for this config must train it fully
        transaction = get_transaction()
        if transaction is not None:
            transaction.write_on_commit = False
    return result


# --------------------------------------------------------------------------------------------
# Fan-out
# --------------------------------------------------------------------------------------------
def probably_cached(config: TrialConfig, data: DataHandle, backend: str = "compiled") -> bool:
    """True if Prefect's local result storage holds a result under this trial's cache key. A
    hint for choosing the runner only: the task still decides (a damaged entry is retrained,
    another result storage reads as not cached)."""
    from prefect.settings import get_current_settings

    storage = Path(get_current_settings().results.local_storage_path).expanduser()
    return (storage / f"trial-{trial_key(config, data.fingerprint, backend)}").is_file()


def weights_exist(result: TrialResult) -> bool:
    """True if the trial's saved weights are where its (possibly cached) result says."""
    return bool(result.weights_path) and Path(result.weights_path).is_file()


def failed_result(
    config: TrialConfig, data: DataHandle, backend: str, error: BaseException | str
) -> TrialResult:
    message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return TrialResult(
        trial_key=trial_key(config, data.fingerprint, backend),
        config=config,
        data_fingerprint=data.fingerprint,
        backend=backend,
        status="failed",
        error=message.strip().splitlines()[-1][:500] if message.strip() else "failed",
    )


def progress_line(result: TrialResult, done: int, total: int) -> str:
    """One terminal line per finished trial."""
    width = len(str(total))
    head = f"[{done:>{width}}/{total}] {result.config.label()}"
    if result.status == "failed":
        return f"{head} -> FAILED: {result.error}"
    if result.status == "pruned":
        source = "cached" if result.cached else f"trained {result.train_seconds:.1f}s"
        return (f"{head} -> pruned after epoch {len(result.history)}, val "
                f"{result.val_accuracy:.4f} ({source})")
    source = "cached" if result.cached else f"trained in {result.train_seconds:.1f}s"
    return (
        f"{head} -> val {result.val_accuracy:.4f} test {result.test_accuracy:.4f} ({source})"
    )


def unique_configs(configs: Sequence[TrialConfig]) -> list[TrialConfig]:
    """Configs in first-seen order without repeats (a repeated config trains once)."""
    seen: dict[str, TrialConfig] = {}
    for config in configs:
        seen.setdefault(config.canonical_json(), config)
    return list(seen.values())


def run_trials(
    configs: Sequence[TrialConfig],
    data: DataHandle,
    runner: str = "auto",
    workers: int | None = None,
    dask_address: str | None = None,
    backend: str = "compiled",
    data_dir: str | None = None,
    progress_key: str | None = None,
    refresh: bool = False,
) -> list[TrialResult]:
    """Run one cached, retried ``train_trial_task`` per distinct config through the task runner
    ``runner`` (``auto``: chosen by the search's size, :func:`tasks.runners.choose_runner`)
    and return results in the order of ``configs`` (repeats share a result).

    Must be called inside a flow. Prints one line per finished trial, updates a progress
    artifact, and never raises for a failed trial: it comes back with ``status="failed"``.
    ``refresh`` trains even what the cache holds (and stores the new result).
    """
    from prefect.artifacts import create_progress_artifact, update_progress_artifact
    from prefect.futures import as_completed

    from tasks.runners import choose_runner, make_task_runner

    distinct = unique_configs(configs)
    total = len(distinct)
    # the runner is chosen for what is left to train: a rerun from the cache needs no pool
    pending = [c for c in distinct if refresh or not probably_cached(c, data, backend)]
    work = sum(config.epochs for config in pending) * data.train_size
    kind, workers = choose_runner(runner, workers, len(pending), work)
    if total > 1:
        cached = f", {total - len(pending)} of them in the cache" if len(pending) < total else ""
        say(f"{total} trials{cached}: {kind} x {workers}"
            + (" (chosen by --runner auto)" if runner == "auto" else ""))
    task_runner = make_task_runner(kind, workers, dask_address)
    progress_id = create_progress_artifact(
        0.0, key=progress_key, description=f"{total} trials finished, in percent"
    )
    by_config: dict[str, TrialResult] = {}
    trial_task = configured_task(refresh)
    # the costliest first, so that no worker idles at the end while one trains a big network
    schedule = sorted(distinct, key=lambda c: -c.training_cost(data.train_size))
    with task_runner as pool:
        futures = {
            pool.submit(
                trial_task,
                parameters={
                    "config": config,
                    "data": data,
                    "backend": backend,
                    "data_dir": data_dir,
                },
            ): config
            for config in schedule
        }
        for done, future in enumerate(as_completed(list(futures)), start=1):
            config = futures[future]
            result = collect(future, config, data, backend)
            by_config[config.canonical_json()] = result
            say(progress_line(result, done, total))
            update_progress_artifact(progress_id, 100.0 * done / total)
    return [by_config[config.canonical_json()] for config in configs]


def configured_task(refresh: bool = False):
    """``train_trial_task`` with this run's options (concurrency tag, refresh)."""
    tags = concurrency_tags()
    options: dict[str, Any] = {"tags": tags} if tags else {}
    if refresh:
        options["refresh_cache"] = True
    return train_trial_task.with_options(**options) if options else train_trial_task


def collect(future, config: TrialConfig, data: DataHandle, backend: str) -> TrialResult:
    """The TrialResult of a finished trial future: its result (``cached`` when it came from
    the cache), or a failed result naming the error."""
    future.wait()  # records the final state on the future
    state = future.state
    if state.is_completed():
        result = future.result()
        return result.model_copy(update={"cached": state.name == "Cached"})
    error = future.result(raise_on_failure=False)
    if not isinstance(error, BaseException):
        error = state.message or "failed"
    get_run_logger().debug("trial failed: %s", "".join(traceback.format_exception(error))
                           if isinstance(error, BaseException) else error)
    return failed_result(config, data, backend, error)


class Proposer(Protocol):
    """An adaptive search's side of :func:`run_adaptive`: configs one at a time, each told
    its result before the next is asked when workers are busy."""

    #: epochs of every trial it asks for (with the budget, what sizes the runner)
    epochs: int

    def remaining(self) -> int:
        """Trials this run still has to finish (for progress lines)."""

    def ask(self) -> tuple[TrialConfig, TrialLink | None] | None:
        """The next config and the Optuna trial it reports to; None: no more."""

    def tell(self, config: TrialConfig, link: TrialLink | None, result: TrialResult) -> None:
        """A finished trial's result (completed, pruned or failed)."""


def run_adaptive(
    proposer: Proposer,
    data: DataHandle,
    runner: str = "auto",
    workers: int | None = None,
    dask_address: str | None = None,
    backend: str = "compiled",
    data_dir: str | None = None,
    progress_key: str | None = None,
) -> list[TrialResult]:
    """Keep up to ``workers`` cached, retried ``train_trial_task`` runs going, each with a
    config the proposer asks for once a worker is free, and tell it each result: the same
    trial unit, cache and runners as :func:`run_trials`, for a search that learns as it goes.
    A config already finished or in flight in this run is not submitted again: it gets that
    trial's result. Returns the results in the order they finished."""
    from prefect.artifacts import create_progress_artifact, update_progress_artifact
    from prefect.futures import as_completed

    from tasks.runners import choose_runner, make_task_runner

    total = proposer.remaining()
    # an adaptive search's configs are unknown in advance: size the runner by its budget
    work = total * proposer.epochs * data.train_size
    kind, workers = choose_runner(runner, workers, total, work)
    say(f"{total} trials to finish: {kind} x {workers}"
        + (" (chosen by --runner auto)" if runner == "auto" else ""))
    progress_id = create_progress_artifact(
        0.0, key=progress_key, description=f"{total} trials finished, in percent")
    trial_task = configured_task()
    finished: dict[str, TrialResult] = {}
    in_flight: dict[Any, tuple[TrialConfig, TrialLink | None]] = {}
    waiting: dict[str, list[TrialLink | None]] = {}  # repeats of a config in flight
    results: list[TrialResult] = []

    def finish(config: TrialConfig, link: TrialLink | None, result: TrialResult) -> None:
        proposer.tell(config, link, result)
        results.append(result)
        say(progress_line(result, len(results), total))
        update_progress_artifact(progress_id, 100.0 * len(results) / max(total, 1))

    with make_task_runner(kind, workers, dask_address) as pool:
        def fill() -> None:
            while len(in_flight) < workers:
                asked = proposer.ask()
                if asked is None:
                    return
                config, link = asked
                name = config.canonical_json()
                if name in finished and finished[name].status == "completed":
                    finish(config, link, finished[name].model_copy(update={"cached": True}))
                elif name in waiting:
                    waiting[name].append(link)
                else:
                    waiting[name] = []
                    # the worker talks to the study only to be pruned; otherwise the epochs
                    # are told from here (a remote worker need not reach the storage)
                    prunable = link if link is not None and link.pruner != "none" else None
                    future = pool.submit(trial_task, parameters={
                        "config": config, "data": data, "backend": backend,
                        "data_dir": data_dir, "link": prunable})
                    in_flight[future] = (config, link)

        fill()
        while in_flight:
            future = next(as_completed(list(in_flight)))
            config, link = in_flight.pop(future)
            result = collect(future, config, data, backend)
            name = config.canonical_json()
            finished[name] = result
            finish(config, link, result)
            for other in waiting.pop(name, []):
                finish(config, other, result.model_copy(update={"cached": True}))
            fill()
    return results


def check_failures(results: Sequence[TrialResult], report: str, tolerated: int = 0) -> None:
    """Raise :class:`TrialsFailed` (the flow run ends Failed) when more than ``tolerated``
    distinct trials failed; called after the report is written, which it names."""
    from tasks.errors import TrialsFailed

    counts = count_sources(results)
    if counts["failed"] > tolerated:
        allowed = f"; {tolerated} tolerated" if tolerated else ""
        raise TrialsFailed(f"{counts['failed']} of {counts['trials']} trials failed{allowed} "
                           f"(see report {report})")


def count_sources(results: Sequence[TrialResult]) -> dict[str, int]:
    """How many distinct trials were trained now, came from the cache, were pruned, or
    failed."""
    by_key: dict[str, TrialResult] = {}
    for result in results:  # a config trained in this run and then asked again: trained
        known = by_key.get(result.trial_key)
        if known is None or (known.cached and not result.cached):
            by_key[result.trial_key] = result
    distinct = by_key.values()
    return {
        "trials": len(distinct),
        "trained": sum(1 for r in distinct if r.status == "completed" and not r.cached),
        "cached": sum(1 for r in distinct if r.status == "completed" and r.cached),
        "pruned": sum(1 for r in distinct if r.status == "pruned"),
        "failed": sum(1 for r in distinct if r.status == "failed"),
    }
