"""Task runners for the fan-out: a choice, not a rewrite.

``threads`` (default) trains in this process; ``processes`` spawns worker processes on this
machine (Prefect's ProcessPoolTaskRunner); ``dask`` uses prefect-dask's DaskTaskRunner, with a
local cluster of N worker processes or an existing scheduler (``tcp://host:8786``).

Two things every worker process gets, whatever the runner:

* TensorFlow thread counts set before TensorFlow starts, so that workers x intra-op threads
  ~ cores (:func:`init_worker`; on Dask through the ``TensorFlowThreads`` worker plugin);
* the parent's Prefect API. Without ``PREFECT_API_URL`` Prefect starts a temporary server
  per *process*: every worker process would start its own (~5 s each, and a killed run
  leaves them behind). The runners here hand the parent's temporary server to the workers
  they start (:func:`shared_api_url`), so one run is one server, as with threads. An
  existing Dask cluster needs a real server (:func:`check_api_for_cluster`).
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from typing import NamedTuple, get_args

from tasks.errors import UserError
from tasks.run_options import RunnerKind
from tasks.search.workers import (
    available_cores,
    init_worker,
    threads_per_worker,
    worker_environment,
)
from tasks.settings import current

RUNNERS: tuple[str, ...] = get_args(RunnerKind)
#: ``auto`` starts worker processes once a search has at least this much training (trials x
#: epochs x training images): below it, their start-up (~5 s) costs more than they save.
AUTO_PROCESSES_MIN_WORK = 1_000_000
#: Memory of its own (bytes) one worker process needs, for ``auto`` to count how many fit in
#: the available memory (the default of ``--worker-memory``, tasks.run_options.FanOut).
#: Measured by benchmarks/memory.py (a 2 x 2 grid at 256/512 units on
#: the full MNIST, processes x 2, two runs): a worker's peak USS (Private_Clean + Private_Dirty
#: from /proc/PID/smaps_rollup) was 780-989 MiB (0.82-1.04 GB; the higher while it alone
#: mapped the splits), its anonymous memory 780 MiB; rounded up to 1.1 GB. The splits are one
#: copy in the page cache (0.23 GB) shared by all workers (tasks.data.splits.read_split).
WORKER_MEMORY = 1_100_000_000


# --------------------------------------------------------------------------------------------
# One Prefect API for the parent and its workers
# --------------------------------------------------------------------------------------------
def shared_api_url() -> str | None:
    """The URL of this process's temporary Prefect server, for worker processes to use.

    ``None`` where ``PREFECT_API_URL`` is set (the workers inherit it through Prefect's
    settings) or where no temporary server applies. Inside a flow run this is the server the
    run already uses; outside one it is the one Prefect starts for this process anyway.
    """
    from prefect.client.base import ServerType
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return None
    client = get_client(sync_client=True)
    if client.server_type != ServerType.EPHEMERAL or client.api_url.host not in (
            "127.0.0.1", "localhost"):  # an in-process app has no address to share
        return None
    return str(client.api_url).rstrip("/")


class _SharesPrefectAPI:
    """Mixin for runners whose workers are other processes: while the runner is entered,
    Prefect's settings (which travel with every submitted task, and into the environment of
    process-pool workers) carry the parent's temporary server as ``PREFECT_API_URL``."""

    def __enter__(self):
        self._api_settings = contextlib.ExitStack()
        url = shared_api_url()
        if url:
            from prefect.settings import PREFECT_API_URL, temporary_settings

            self._api_settings.enter_context(temporary_settings(updates={PREFECT_API_URL: url}))
        try:
            return super().__enter__()
        except BaseException:
            self._api_settings.close()
            raise

    def __exit__(self, *exc_info) -> None:
        try:
            super().__exit__(*exc_info)
        finally:
            self._api_settings.close()


#: Seconds a process pool's shutdown waits for its workers to exit before it terminates the
#: ones still alive (see :func:`shutdown_pool`). At the end of a fan-out every result is in:
#: a worker still alive is either stuck or still tearing its interpreter down (TensorFlow's:
#: 7.6 and 9.5 s measured on the busy 2-core machine), and terminating either loses nothing.
POOL_SHUTDOWN_GRACE = 5.0


def shutdown_pool(executor, grace: float = POOL_SHUTDOWN_GRACE) -> list[int]:
    """Shut the ProcessPoolExecutor ``executor`` down (work not started is cancelled) and wait
    at most ``grace`` seconds for its workers to exit; terminate those still alive (SIGTERM,
    SIGKILL 2 s later). Returns the pids terminated.

    Python's own ``shutdown(wait=True)`` can wait for ever: once it has begun, the executor no
    longer watches for dead workers, and a worker killed while it held the call queue's read
    lock (an idle worker holds it while it waits for work) leaves the others blocked on that
    lock, never reading the sentinels that tell them to exit (issue 31: 1 hang in 11 runs with
    a worker killed as the run ended).
    """
    manager = getattr(executor, "_executor_manager_thread", None)
    executor.shutdown(wait=False, cancel_futures=True)
    if manager is None:  # no worker was ever started
        return []
    manager.join(grace)
    if not manager.is_alive():
        return []
    try:
        stuck = [p for p in list(getattr(manager, "processes", {}).values()) if p.is_alive()]
    except RuntimeError:  # pragma: no cover (the dict changed while it was read)
        stuck = []
    for process in stuck:
        process.terminate()
    manager.join(2.0)
    for process in stuck:
        if process.is_alive():
            process.kill()
    manager.join(5.0)
    _run_log(logging.INFO, f"process pool: {len(stuck)} worker(s) still alive {grace:g} s after "
             "the pool's shutdown began were terminated (pids "
             f"{', '.join(str(p.pid) for p in stuck)})")
    if manager.is_alive():  # pragma: no cover (nothing left for it to wait for)
        _run_log(logging.WARNING, "process pool: its manager thread did not end")
    return [p.pid for p in stuck]


def _run_log(level: int, message: str) -> None:
    """To the flow run's log (the log file and the UI), else this module's logger."""
    try:
        from prefect import get_run_logger

        logger = get_run_logger()
    except Exception:  # outside a run
        logger = logging.getLogger(__name__)
    logger.log(level, message)


def _process_pool_runner_class():
    from prefect.task_runners import ProcessPoolTaskRunner

    class ProcessRunner(_SharesPrefectAPI, ProcessPoolTaskRunner):
        """ProcessPoolTaskRunner whose workers use the parent's Prefect API, and whose
        shutdown is bounded: a worker lost at any moment, the shutdown included, never hangs
        the run (:func:`shutdown_pool`)."""

        def cancel_all(self) -> None:
            # the parent puts only the stop sentinel on the workers' message queue; a worker
            # killed while it wrote a log record there holds the queue's write lock for
            # ever, and joining the parent's feeder thread (now, or at exit) would wait on it
            queue = self._subprocess_message_queue
            if queue is not None:
                queue.cancel_join_thread()
            try:
                # trials still being handed to the pool (Prefect pickles and submits them from
                # threads of its own) reach it first: a broken pool gives them its
                # BrokenProcessPool, a worker loss, not an error about a pool already gone
                if self._resolver_executor is not None:
                    self._resolver_executor.shutdown(wait=True)
                if self._executor is not None:
                    shutdown_pool(self._executor)
            finally:
                super().cancel_all()  # its own shutdown(wait=True) has nothing left to wait for

    return ProcessRunner


def _dask_runner_class():
    from prefect_dask import DaskTaskRunner

    class DaskRunner(_SharesPrefectAPI, DaskTaskRunner):
        """DaskTaskRunner that sets TensorFlow's threads on every worker and hands the
        workers of its local cluster the parent's Prefect API."""

        def __init__(self, *args, intra_op_threads: int | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.intra_op_threads = intra_op_threads

        def duplicate(self):
            twin = super().duplicate()
            twin.intra_op_threads = self.intra_op_threads
            return twin

        def __enter__(self):
            super().__enter__()
            try:
                client = self.client  # starts the local cluster, or connects
                slots: Counter[str] = Counter()
                if not self.intra_op_threads:
                    from distributed.comm import get_address_host

                    for address, info in client.scheduler_info()["workers"].items():
                        slots[get_address_host(address)] += int(info.get("nthreads", 1))
                from tasks.search.dask_plugin import TensorFlowThreads

                plugin = TensorFlowThreads(self.intra_op_threads, dict(slots))
                client.register_plugin(plugin)
            except BaseException as exc:
                self.__exit__(type(exc), exc, exc.__traceback__)
                raise
            return self

    return DaskRunner


def check_api_for_cluster(address: str) -> None:
    """An existing cluster needs ``PREFECT_API_URL``: its workers outlive this command, and a
    worker keeps Prefect clients (e.g. for tag concurrency slots) bound to the first API it
    used, so with a temporary server per command every run after the first fails
    (measured while training tasks carried a concurrency tag: ``Unable to acquire concurrency
    slots on ['tag:tf-train']``)."""
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise UserError(
            f"--dask-address {address}: set PREFECT_API_URL to a Prefect server that every "
            "worker reaches (`prefect server start`, then PREFECT_API_URL=http://HOST:4200/api)"
            "; the cluster's workers outlive this command's temporary server")


class RunnerChoice(NamedTuple):
    """What :func:`choose_runner` decided; ``limit``: why ``auto`` started fewer workers than
    it would have (e.g. ``memory for 3 workers``), else empty."""

    kind: str
    workers: int
    limit: str = ""


def workers_that_fit(available: int | None = None, per_worker: float = WORKER_MEMORY) -> int:
    """Worker processes of ``per_worker`` bytes that fit in ``available`` bytes (default: what
    the machine has available now, ``psutil.virtual_memory().available``), at least one."""
    if available is None:
        import psutil

        available = psutil.virtual_memory().available
    return max(1, int(available // per_worker))


def choose_runner(kind: str, workers: int | None, trials: int, work: int,
                  cores: int | None = None, available: int | None = None,
                  per_worker: float = WORKER_MEMORY) -> RunnerChoice:
    """Resolve ``auto`` and a missing worker count for a search with ``trials`` distinct
    trials left to train and ``work`` = their epochs x training images.

    ``auto``: one worker process per core for a large search (at least two trials per core
    and :data:`AUTO_PROCESSES_MIN_WORK`; on the project's 2-core machine the default grid
    trains 1.8x as fast so), else one thread in this process (no start-up); with no more
    workers than fit in the available memory (``available`` bytes, default: the machine's
    now; ``per_worker`` bytes each), and one thread if only one fits. A missing ``workers``
    is one per core for ``processes`` and ``dask``, one for ``threads``. A given ``workers``
    is kept (at most one per trial).
    """
    cores = cores or available_cores()
    limit = ""
    if kind == "auto":
        large = cores >= 2 and trials >= 2 * cores and work >= AUTO_PROCESSES_MIN_WORK
        if workers is None:
            workers = cores if large else 1
            if large:
                fit = workers_that_fit(available, per_worker)
                if fit < min(workers, trials):
                    workers = fit
                    limit = f"memory for {fit} worker{'s' if fit > 1 else ''}"
                    large = fit >= 2
        kind = "processes" if large else "threads"
    if workers is None:
        workers = 1 if kind == "threads" else cores
    return RunnerChoice(kind, max(1, min(workers, max(trials, 1))), limit)


def make_task_runner(kind: str = "threads", workers: int = 1, dask_address: str | None = None):
    """Build the task runner named ``kind`` (not ``auto``: see :func:`choose_runner`) with
    ``workers`` workers.

    ``dask`` with ``dask_address`` connects to that scheduler (``workers`` is then the
    cluster's business: ``dask worker ADDRESS --nworkers N --nthreads 1``); without it, a
    local cluster of ``workers`` processes with one Dask thread each is started and closed.
    """
    threads = threads_per_worker(workers)
    if kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "processes":
        return _process_pool_runner_class()(
            max_workers=workers, initializer=init_worker,
            initargs=(threads, current().tf_logs, True)
        )
    if kind == "dask":
        if dask_address:
            check_api_for_cluster(dask_address)
            return _dask_runner_class()(address=dask_address)
        return _dask_runner_class()(
            intra_op_threads=threads,
            cluster_kwargs={
                "n_workers": workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": ":0",  # a free port: runs side by side never collide
                "env": worker_environment(threads),  # set in each worker before it starts
            },
        )
    raise ValueError(f"runner={kind!r}: allowed {', '.join(RUNNERS)}")
