"""The one search loop: a *proposer* is asked for a config whenever a worker is free and told
every result; the loop trains each config as the cached, retried trial task.

Every search is a proposer (:class:`Proposer`): the grid, the random search and the best-of-N
study are list proposers (:mod:`tasks.search.proposers`), the tune is Optuna's
(:mod:`tasks.search.tune`). The loop never asks which kind it has. It does what every search
needs, once: size the task runner, keep up to ``workers`` trials in flight, never submit a
config that is in flight or finished in this run (a repeat gets that trial's result), print
one line per finished trial, keep a progress artifact, and count what was trained, came from
the cache, was pruned or failed.
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tasks.config import TrialConfig
from tasks.console import say
from tasks.data.mnist import DataHandle
from tasks.errors import ServiceOutage
from tasks.run_options import FanOut, RunOptions
from tasks.search.spending import Spending, Verdict, minutes_text
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


def progress_line(result: TrialResult, done: int, total: int | None, note: str = "") -> str:
    """One terminal line per finished trial (``total`` None: not known in advance, as with a
    budget; ``note`` is added in brackets)."""
    width = len(str(total))
    head = (f"[{done:>{width}}/{total}]" if total is not None else f"[{done}]") + \
        f" {result.config.label()}"
    tail = f" [{note}]" if note else ""
    return _progress_body(result, head) + tail


def _progress_body(result: TrialResult, head: str) -> str:
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


def run_trials(proposer: Proposer, data: DataHandle, run: RunOptions = RunOptions(),
               fan_out: FanOut = FanOut(), refresh: bool = False,
               spending: Spending | None = None) -> list[TrialResult]:
    """Ask ``proposer`` for configs, train each as ``train_trial_task`` through the task runner
    ``fan_out`` names, tell it every result; return ``proposer.results()``.

    Must be called inside a flow. Never raises for a failed trial: it comes back with
    ``status="failed"``. ``refresh`` trains even what the cache holds (and stores the new
    result). ``spending``: a budget of training minutes; no config starts that it cannot
    finish (:mod:`tasks.search.spending`), and the search ends at the first that does not
    fit with nothing in flight."""
    from prefect.artifacts import create_progress_artifact, update_progress_artifact
    from prefect.futures import as_completed

    from tasks.search.runners import make_task_runner

    plan = proposer.plan()
    say(proposer.describe())
    kind, workers, line = size_runner(plan, data, fan_out, run.backend, refresh)
    if spending is not None:
        line = (f"Budget: {minutes_text(spending.minutes)} of training, {kind} x {workers}; "
                f"no trial starts that the rest cannot finish")
    if line:
        say(line)
    total = plan.trials if spending is None else None
    progress_id = create_progress_artifact(
        0.0, key=f"{proposer.name}-progress",
        description=(f"{total} trials finished, in percent" if total is not None else
                     "training budget spent, in percent"))
    trial_task = configured_task(refresh)
    finished: dict[str, TrialResult] = {}
    in_flight: dict[Any, Ask] = {}
    running: set[str] = set()  # configs in flight
    waiting: dict[str, list[Ask]] = {}  # repeats of a config in flight
    again: list[Ask] = []  # trials a lost worker held, to submit first on a fresh pool
    losses: dict[str, int] = {}  # config -> times its worker was lost
    deferred: list[Ask] = []  # an ask the budget could not start yet (trials in flight)
    stopped = False  # the budget ended the search: nothing more is asked
    done = 0

    def finish(asked: Ask, result: TrialResult) -> None:
        nonlocal done
        proposer.tell(asked, result)
        done += 1
        say(progress_line(result, done, total,
                          spending.status() if spending is not None else ""))
        share = (done / max(total, 1) if total is not None
                 else spending.spent_seconds / spending.budget_seconds)
        update_progress_artifact(progress_id, min(100.0, 100.0 * share))

    def settle(asked: Ask, result: TrialResult) -> None:
        name = asked.config.canonical_json()
        running.discard(name)
        finished[name] = result
        if spending is not None:
            spending.charge(result)
        finish(asked, result)
        for repeat in waiting.pop(name, []):
            finish(repeat, result.model_copy(update={"cached": True}))

    def next_ask() -> tuple[Ask | None, bool]:
        """The next ask, and whether the budget must admit it (a retried one was admitted)."""
        if again:
            return again.pop(0), False
        if deferred:
            return deferred.pop(), True
        return (None, False) if stopped else (proposer.ask(), True)

    while True:
        with make_task_runner(kind, workers, fan_out.dask_address) as pool:
            def fill() -> None:
                nonlocal stopped
                while len(in_flight) < workers:
                    asked, gated = next_ask()
                    if asked is None:
                        return
                    name = asked.config.canonical_json()
                    if name in finished and finished[name].status == "completed":
                        finish(asked, finished[name].model_copy(update={"cached": True}))
                    elif name in running:
                        waiting.setdefault(name, []).append(asked)
                    else:
                        if gated and spending is not None and not asked.known:
                            verdict = spending.admit(asked.config)
                            if verdict is Verdict.WAIT:
                                deferred.append(asked)
                                return
                            if verdict is Verdict.STOP:
                                proposer.withdraw(asked)
                                stopped = True
                                return
                            spending.started(asked.config)
                        running.add(name)
                        future = pool.submit(trial_task, parameters={
                            "config": asked.config, "data": data, "backend": run.backend,
                            "data_dir": run.data_dir, "link": asked.link})
                        in_flight[future] = asked

            fill()
            lost: BaseException | None = None
            while in_flight and lost is None:
                future = next(as_completed(list(in_flight)))
                lost = lost_worker(future)
                if lost is None:
                    asked = in_flight.pop(future)
                    settle(asked, collect(future, asked.config, data, run.backend))
                    fill()
        if lost is None:
            break
        # a worker process died (the OOM killer, kill -9): the pool is gone with every trial
        # it held; they are retried on a fresh pool, within the trial's retry budget
        held = []
        for future, asked in list(in_flight.items()):
            wrapped = getattr(future, "wrapped_future", None)
            if wrapped is not None and wrapped.done() and lost_worker(future) is None:
                settle(asked, collect(future, asked.config, data, run.backend))  # it finished
            else:
                held.append(asked)
        in_flight.clear()
        running.difference_update(asked.config.canonical_json() for asked in held)
        retried = []
        for asked in held:
            name = asked.config.canonical_json()
            losses[name] = losses.get(name, 0) + 1
            if losses[name] > TRIAL_RETRIES:
                settle(asked, failed_result(asked.config, data, run.backend,
                                            f"worker lost {losses[name]} times: {lost}"))
            else:
                retried.append(asked)
        again[:0] = retried
        say(f"worker lost ({describe_loss(lost)}); retrying {len(retried)} trial(s) on a "
            f"fresh {kind} pool" + (f", {len(held) - len(retried)} failed after "
                                     f"{TRIAL_RETRIES} retries" if len(retried) < len(held)
                                     else ""))
    results = proposer.results()
    say(f"{proposer.title} done: {count_results(results).summary()}")
    if spending is not None:
        say(spending.summary().line())
    return results


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
