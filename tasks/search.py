"""The search core: a *strategy* proposes trial configs, the core runs them.

The core does what every search needs, once: prepare the data, drop repeated configs, fan
the trials out through the chosen task runner (cached, retried ``train_trial_task`` tasks), count
what was trained, came from the cache or failed, let the strategy write its report, and end
the run Failed when more trials failed than it tolerates. A strategy only says which configs
to train and how to report them (:class:`Strategy`); the grid, the random search and the
best-of-N study are strategies (``tasks/strategy_*.py``), each with a thin flow in ``flows/``.

An *adaptive* strategy (the Optuna tune, :mod:`tasks.strategy_tpe`) has no list up front: it
gives a ``proposer`` instead of ``configs``, asked for one config whenever a worker is free and
told every result (:func:`tasks.training.run_adaptive`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

from tasks.config import SplitSpec, TrialConfig, with_epochs
from tasks.console import say
from tasks.search_space import SearchSpace
from tasks.training import (
    TrialResult,
    check_failures,
    count_sources,
    run_adaptive,
    run_trials,
)


class Strategy(Protocol):
    """What a search strategy provides to the core."""

    #: short name: the report folder's prefix and the progress artifact's key
    name: str
    #: how the terminal calls it ("Grid", "Random search")
    title: str
    space: SearchSpace

    def with_space(self, space: SearchSpace) -> Strategy:
        """The same strategy over another space (the flows' top-level ``epochs``)."""

    def configs(self) -> list[TrialConfig]:
        """The configs to train, in order (repeats allowed: they train once)."""

    def announce(self, configs: Sequence[TrialConfig]) -> str:
        """One line saying what is about to be trained."""

    def report(self, results: list[TrialResult], configs: Sequence[TrialConfig],
               reports_dir: str | None, wall_seconds: float) -> str:
        """Write the run's report folder (a Prefect task); return its path."""


def run_search(
    strategy: Strategy,
    epochs: int | None = None,
    data: str | None = None,
    train_samples: int | None = None,
    reports_dir: str | None = None,
    data_dir: str | None = None,
    backend: str = "compiled",
    runner: str = "auto",
    workers: int | None = None,
    dask_address: str | None = None,
    max_failures: int | None = 0,
    **_ignored,
) -> str:
    """Run ``strategy``'s configs and report them; returns the report folder. Call inside a
    flow. ``epochs`` replaces the epochs of the strategy's space; ``max_failures`` None leaves
    the failure check to the caller (the exercise counts over its parts)."""
    from tasks.data import prepare_data_task

    started = time.perf_counter()
    strategy = strategy.with_space(with_epochs(strategy.space, epochs))
    handle = prepare_data_task(data, SplitSpec(train_samples=train_samples), data_dir)
    if hasattr(strategy, "proposer"):
        proposer = strategy.proposer(handle, backend)
        say(strategy.announce(proposer))
        results = run_adaptive(proposer, handle, runner, workers, dask_address, backend,
                               data_dir, progress_key=f"{strategy.name}-progress")
        configs = [result.config for result in results]
    else:
        configs = strategy.configs()
        say(strategy.announce(configs))
        results = run_trials(configs, handle, runner, workers, dask_address, backend, data_dir,
                             progress_key=f"{strategy.name}-progress")
    counts = count_sources(results)
    pruned = f", {counts['pruned']} pruned" if counts["pruned"] else ""
    say(f"{strategy.title} done: {counts['trained']} trained, {counts['cached']} from cache"
        f"{pruned}, {counts['failed']} failed")
    folder = strategy.report(results, configs, reports_dir, time.perf_counter() - started)
    say(f"Report: {folder}")
    if max_failures is not None:
        check_failures(results, folder, max_failures)
    return folder
