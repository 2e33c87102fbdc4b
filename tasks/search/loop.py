"""The one search loop: a *proposer* is asked for a config whenever a worker is free and told
every result; the loop trains each config as the cached, retried trial task.

Every search is a proposer (:class:`Proposer`): the grid, the random search and the best-of-N
study are list proposers (:mod:`tasks.search.proposers`), the tune is Optuna's
(:mod:`tasks.search.tune`). The loop never asks which kind it has. It does what every search
needs, once: size the task runner, keep up to ``workers`` trials in flight, never submit a
config that is in flight or finished in this run (a repeat gets that trial's result), print
one line per finished trial, keep a progress artifact, and count what was trained, came from
the cache, was pruned or failed. What is in flight lives in one :class:`InFlight`; a limit
(a budget) plugs in as an admission hook (:mod:`tasks.search.admission`).
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tasks.config import TrialConfig
from tasks.console import say
from tasks.data.splits import DataHandle
from tasks.errors import ServiceOutage
from tasks.run_options import FanOut, RunOptions
from tasks.search.admission import Admission, Verdict
from tasks.search.progress import Progress
from tasks.trial.faults import TRIAL_RETRIES, is_worker_loss
from tasks.trial.pruning import TrialLink
from tasks.trial.result import TrialResult, count_results, failed_result


@dataclass(frozen=True)
class Ask:
    """One config to train. ``link``: the Optuna trial a pruned worker reports its epochs to
    (None: the worker reports to nobody); ``token``: the proposer's own handle on the ask;
    ``known``: the search held this config's result before the run (a tune asking a trial
    its study holds): nothing is spent on it, a budget neither admits nor charges it."""

    config: TrialConfig
    link: TrialLink | None = None
    token: Any = None
    known: bool = False


@dataclass(frozen=True)
class Plan:
    """What a proposer knows before its first ask: the trials it will finish, their epochs,
    and, for a list search, the configs themselves (so that the runner is sized by what is
    not yet in the cache)."""

    trials: int
    epochs: int
    configs: tuple[TrialConfig, ...] | None = None


class Proposer(Protocol):
    """A search, as the loop sees it (the model: Optuna's ask-and-tell)."""

    #: short name: the progress artifact's key prefix
    name: str
    #: how the terminal calls it ("Grid", "Random search", "Tune")
    title: str

    def plan(self) -> Plan:
        """What will be asked, as far as it is known in advance."""

    def describe(self) -> str:
        """One line saying what is about to be trained."""

    def ask(self) -> Ask | None:
        """The next config to train; None: nothing more."""

    def tell(self, asked: Ask, result: TrialResult) -> None:
        """The result (completed, pruned or failed) of an earlier ask."""

    def results(self) -> list[TrialResult]:
        """Every result told, in the order the search's report wants them."""

    def withdraw(self, asked: Ask) -> None:
        """An ask the loop will not train (the budget ended the search before it)."""


def size_runner(plan: Plan, data: DataHandle, fan_out: FanOut, backend: str,
                refresh: bool = False) -> tuple[str, int, str]:
    """(runner kind, workers, the terminal's line about them) for ``plan``: a list search is
    sized by what the cache does not hold (a rerun from the cache starts no worker pool), an
    adaptive one by its number of trials."""
    from tasks.search.runners import choose_runner
    from tasks.trial.task import probably_cached

    def chosen(limit: str) -> str:
        if fan_out.runner != "auto":
            return ""
        return f" (chosen by --runner auto; {limit})" if limit else " (chosen by --runner auto)"

    if plan.configs is None:
        work = plan.trials * plan.epochs * data.train_size
        kind, workers, limit = choose_runner(fan_out.runner, fan_out.workers, plan.trials, work,
                                             per_worker=fan_out.worker_memory * 1e9)
        return (kind, workers,
                f"{plan.trials} trials to finish: {kind} x {workers}{chosen(limit)}")
    pending = [c for c in plan.configs if refresh or not probably_cached(c, data, backend)]
    work = sum(config.epochs for config in pending) * data.train_size
    kind, workers, limit = choose_runner(fan_out.runner, fan_out.workers, len(pending), work,
                                         per_worker=fan_out.worker_memory * 1e9)
    total = len(plan.configs)
    cached = f", {total - len(pending)} of them in the cache" if len(pending) < total else ""
    line = f"{total} trials{cached}: {kind} x {workers}{chosen(limit)}" if total > 1 else ""
    return kind, workers, line


class InFlight:
    """What one run of the loop holds between asks: the trials in flight (future -> ask), the
    results finished in this run (by config), repeats waiting for a config in flight, the asks
    a lost worker held (submitted first on a fresh pool), the ask the admission hook deferred,
    and whether it ended the search. ``told`` is called after each tell (:class:`Progress`)."""

    def __init__(self, proposer: Proposer, admission: Admission | None,
                 told: Callable[[TrialResult, int], None]):
        self.proposer, self.admission, self.told = proposer, admission, told
        self.futures: dict[Any, Ask] = {}
        self.finished: dict[str, TrialResult] = {}
        self.waiting: dict[str, list[Ask]] = {}
        self.again: list[Ask] = []
        self.losses: dict[str, int] = {}  # config -> times its worker was lost
        self.deferred: Ask | None = None
        self.stopped = False  # the admission hook ended the search: nothing more is asked
        self.done = 0

    def fill(self, workers: int, start: Callable[[Ask], Any]) -> None:
        """Ask until ``workers`` trials are in flight, nothing more is to be asked, or the
        admission hook says wait; ``start`` submits an ask and returns its future."""
        while len(self.futures) < workers:
            asked, gated = self.next_ask()
            if asked is None:
                return
            if self.answered(asked):
                continue
            if gated and not self.admitted(asked):
                return
            self.futures[start(asked)] = asked

    def next_ask(self) -> tuple[Ask | None, bool]:
        """The next ask, and whether the admission hook must admit it (a retried one was
        admitted)."""
        if self.again:
            return self.again.pop(0), False
        if self.deferred is not None:
            asked, self.deferred = self.deferred, None
            return asked, True
        return (None, False) if self.stopped else (self.proposer.ask(), True)

    def answered(self, asked: Ask) -> bool:
        """Whether ``asked`` needs no training: a config completed in this run is told its
        result at once, one in flight waits for it (a repeat is never submitted)."""
        name = asked.config.canonical_json()
        earlier = self.finished.get(name)
        if earlier is not None and earlier.status == "completed":
            self.finish(asked, earlier.model_copy(update={"cached": True}))
            return True
        if name in {a.config.canonical_json() for a in self.futures.values()}:
            self.waiting.setdefault(name, []).append(asked)
            return True
        return False

    def admitted(self, asked: Ask) -> bool:
        """Whether the admission hook lets ``asked`` start now (a config the search held is
        not asked: nothing is spent on it). Not yet: deferred until a trial in flight is told;
        never: withdrawn from the proposer, and the search asks nothing more."""
        if self.admission is None or asked.known:
            return True
        verdict = self.admission.admit(asked.config)
        if verdict is Verdict.WAIT:
            self.deferred = asked
            return False
        if verdict is Verdict.STOP:
            self.proposer.withdraw(asked)
            self.stopped = True
            return False
        self.admission.started(asked.config)
        return True

    def settle(self, asked: Ask, result: TrialResult) -> None:
        """A trial's result: kept for repeats, charged, told, and told to the repeats waiting
        for it (as from the cache)."""
        name = asked.config.canonical_json()
        self.finished[name] = result
        if self.admission is not None:
            self.admission.charge(result)
        self.finish(asked, result)
        for repeat in self.waiting.pop(name, []):
            self.finish(repeat, result.model_copy(update={"cached": True}))

    def finish(self, asked: Ask, result: TrialResult) -> None:
        self.proposer.tell(asked, result)
        self.done += 1
        self.told(result, self.done)

    def requeue(self, held: list[Ask]) -> list[tuple[Ask, int]]:
        """The asks a lost worker held, submitted first on the next pool; returns those lost
        more than :data:`TRIAL_RETRIES` times (with their losses), which are not."""
        retried, given_up = [], []
        for asked in held:
            name = asked.config.canonical_json()
            self.losses[name] = self.losses.get(name, 0) + 1
            if self.losses[name] > TRIAL_RETRIES:
                given_up.append((asked, self.losses[name]))
            else:
                retried.append(asked)
        self.again[:0] = retried
        return given_up


def run_trials(proposer: Proposer, data: DataHandle, run: RunOptions = RunOptions(),
               fan_out: FanOut = FanOut(), refresh: bool = False,
               spending: Admission | None = None) -> list[TrialResult]:
    """Ask ``proposer`` for configs, train each as ``train_trial_task`` through the task runner
    ``fan_out`` names, tell it every result; return ``proposer.results()``.

    Must be called inside a flow. Never raises for a failed trial: it comes back with
    ``status="failed"``. ``refresh`` trains even what the cache holds (and stores the new
    result). ``spending``: the admission hook (:mod:`tasks.search.admission`), e.g. a budget
    of training minutes: no config starts that it cannot finish
    (:mod:`tasks.search.spending`), and the search ends at the first that does not fit with
    nothing in flight."""
    from prefect.futures import as_completed

    from tasks.search.runners import make_task_runner

    plan = proposer.plan()
    say(proposer.describe())
    kind, workers, line = size_runner(plan, data, fan_out, run.backend, refresh)
    if spending is not None:
        line = spending.describe(f"{kind} x {workers}")
    if line:
        say(line)
    progress = Progress(f"{proposer.name}-progress",
                        plan.trials if spending is None else None, spending)
    state = InFlight(proposer, spending, progress.told)
    trial_task = configured_task(refresh)
    while True:
        with make_task_runner(kind, workers, fan_out.dask_address) as pool:
            start = functools.partial(submit, pool, trial_task, data, run)
            state.fill(workers, start)
            lost: BaseException | None = None
            while state.futures and lost is None:
                future = next(as_completed(list(state.futures)))
                lost = lost_worker(future)
                if lost is None:
                    asked = state.futures.pop(future)
                    state.settle(asked, collect(future, asked.config, data, run.backend))
                    state.fill(workers, start)
        if lost is None:
            break
        retry_lost(state, lost, kind, data, run.backend)
    results = proposer.results()
    say(f"{proposer.title} done: {count_results(results).summary()}")
    if spending is not None:
        say(spending.closing_line())
    return results


def submit(pool, trial_task, data: DataHandle, run: RunOptions, asked: Ask):
    """Submit ``asked`` to ``pool`` as ``trial_task``; returns its future."""
    return pool.submit(trial_task, parameters={
        "config": asked.config, "data": data, "backend": run.backend,
        "data_dir": run.data_dir, "link": asked.link})


def retry_lost(state: InFlight, lost: BaseException, kind: str, data: DataHandle,
               backend: str) -> None:
    """A worker process died (the OOM killer, kill -9): the pool is gone with every trial it
    held; they are retried on a fresh pool, within the trial's retry budget (a trial that
    finished before the loss is told)."""
    held = []
    for future, asked in list(state.futures.items()):
        wrapped = getattr(future, "wrapped_future", None)
        if wrapped is not None and wrapped.done() and lost_worker(future) is None:
            try:
                result = collect(future, asked.config, data, backend)  # it finished
            except ServiceOutage:
                raise
            except Exception:  # its outcome went with the pool: retried like the others
                held.append(asked)
                continue
            state.settle(asked, result)
        else:
            held.append(asked)
    state.futures.clear()
    given_up = state.requeue(held)
    for asked, times in given_up:
        state.settle(asked, failed_result(asked.config, data, backend,
                                          f"worker lost {times} times: {lost}"))
    retried = len(held) - len(given_up)
    say(f"worker lost ({describe_loss(lost)}); retrying {retried} trial(s) on a "
        f"fresh {kind} pool" + (f", {len(given_up)} failed after "
                                 f"{TRIAL_RETRIES} retries" if given_up else ""))


def lost_worker(future) -> BaseException | None:
    """The error of a trial future whose worker process died (a process pool broken by a
    killed worker, a Dask worker lost too often), else None: a failed *trial* is not this."""
    wrapped = getattr(future, "wrapped_future", None)  # the runner's own future
    if wrapped is None:
        return None
    try:
        error = wrapped.exception(timeout=0)
    except Exception as exc:  # a future that cannot say is treated as its error
        error = exc
    return error if is_worker_loss(error) else None


def describe_loss(error: BaseException) -> str:
    return f"{type(error).__name__}: killed by signal 9 or the OOM killer?"


def configured_task(refresh: bool = False):
    """``train_trial_task`` with this run's options (concurrency tag, refresh)."""
    from tasks.trial.task import concurrency_tags, train_trial_task

    tags = concurrency_tags()
    options: dict[str, Any] = {"tags": tags} if tags else {}
    if refresh:
        options["refresh_cache"] = True
    return train_trial_task.with_options(**options) if options else train_trial_task


def collect(future, config: TrialConfig, data: DataHandle, backend: str) -> TrialResult:
    """The TrialResult of a finished trial future: its result (``cached`` when it came from
    the cache), or a failed result naming the error."""
    from prefect import get_run_logger

    future.wait()  # records the final state on the future
    state = future.state
    if state.is_completed():
        result = future.result()
        return result.model_copy(update={"cached": state.name == "Cached"})
    error = future.result(raise_on_failure=False)
    if isinstance(error, ServiceOutage):
        raise error  # a shared service away past its bound: the run ends in one line
    if not isinstance(error, BaseException):
        error = state.message or "failed"
    # the whole story for the log file and the UI; the terminal gets the trial's one line
    get_run_logger().warning("trial %s failed: %s", config.label(),
                             "".join(traceback.format_exception(error))
                             if isinstance(error, BaseException) else error)
    return failed_result(config, data, backend, error)


def finish_run(results: Sequence[TrialResult], report: str, tolerated: int | None = 0) -> str:
    """Say where the report is, then raise :class:`TrialsFailed` (the flow run ends Failed)
    when more than ``tolerated`` distinct trials failed (None: the caller counts, e.g. the
    exercise over its parts). Returns ``report``."""
    from tasks.errors import TrialsFailed

    say(f"Report: {report}")
    counts = count_results(results)
    if tolerated is not None and counts.failed > tolerated:
        allowed = f"; {tolerated} tolerated" if tolerated else ""
        raise TrialsFailed(f"{counts.failed} of {counts.trials} trials failed{allowed} "
                           f"(see report {report})")
    return report
