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

import asyncio
import contextlib
import os
from collections import Counter
from typing import Any, Literal

from tasks.errors import UserError

RunnerKind = Literal["auto", "threads", "processes", "dask"]
RUNNERS: tuple[str, ...] = ("auto", "threads", "processes", "dask")
#: ``auto`` starts worker processes once a search has at least this much training (trials x
#: epochs x training images): below it, their start-up (~5 s) costs more than they save.
AUTO_PROCESSES_MIN_WORK = 1_000_000


# --------------------------------------------------------------------------------------------
# TensorFlow threads per worker
# --------------------------------------------------------------------------------------------
def available_cores() -> int:
    """CPU cores this process may use (the affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # pragma: no cover (macOS, Windows)
        return os.cpu_count() or 1


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """TensorFlow intra-op threads for each of ``workers`` so the cores are not
    oversubscribed."""
    cores = cores or available_cores()
    return max(1, cores // max(1, workers))


def worker_environment(intra_op_threads: int) -> dict[str, str]:
    """Environment for a worker process that trains with ``intra_op_threads`` threads."""
    return {
        "TF_NUM_INTRAOP_THREADS": str(intra_op_threads),
        "TF_NUM_INTEROP_THREADS": "1",
        "OMP_NUM_THREADS": str(intra_op_threads),
    }


def init_worker(intra_op_threads: int | None = None) -> None:
    """Worker-process initializer: thread counts and quiet logs, then TensorFlow, once.

    ``None`` takes the count from ``$TF_NUM_INTRAOP_THREADS`` (how a remote ``dask worker``
    is told). TensorFlow is imported here so that its runtime setters apply before the
    first op; the first trial would pay for the import anyway.
    """
    import signal
    import threading

    from tasks.tf_runtime import configure_tensorflow
    from tasks.tf_runtime import tensorflow as _tf

    # Ctrl-C reaches the whole process group: the command that started this worker handles
    # it (and ends the worker); a worker of its own would only print a traceback
    if threading.current_thread() is threading.main_thread():  # (a Dask plugin is not)
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    if intra_op_threads is None:
        intra_op_threads = int(os.environ.get("TF_NUM_INTRAOP_THREADS") or 0) or None
    inter_op_threads = 1 if intra_op_threads else None
    configure_tensorflow(intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads)
    _tf()
    configure_tensorflow(intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads)


def thread_report() -> dict[str, Any]:
    """What TensorFlow runs with in this process (a probe: ``client.run(thread_report)``)."""
    from tasks.tf_runtime import tensorflow as _tf

    tf = _tf()
    return {
        "pid": os.getpid(),
        "cores": available_cores(),
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        **{name: os.environ.get(name) for name in (
            "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS",
            "PREFECT_API_URL")},
    }


def _make_tensorflow_threads_class():
    from distributed.diagnostics.plugin import WorkerPlugin

    class TensorFlowThreads(WorkerPlugin):
        """Dask worker plugin: runs :func:`init_worker` on every worker, now and on later ones.

        Intra-op threads: ``intra_op_threads`` if given (a local cluster), else the worker's
        ``$TF_NUM_INTRAOP_THREADS``, else the worker's cores divided by the Dask threads of
        all workers on its host (known when the plugin was registered), else its cores
        divided by its own Dask threads.
        """

        name = "mnist-search-tensorflow-threads"

        def __init__(self, intra_op_threads: int | None = None,
                     slots_by_host: dict[str, int] | None = None):
            self.intra_op_threads = intra_op_threads
            self.slots_by_host = slots_by_host or {}

        def threads_for(self, worker) -> int:
            if self.intra_op_threads:
                return self.intra_op_threads
            if os.environ.get("TF_NUM_INTRAOP_THREADS"):
                return int(os.environ["TF_NUM_INTRAOP_THREADS"])
            from distributed.comm import get_address_host

            host = get_address_host(worker.address)
            return threads_per_worker(self.slots_by_host.get(host, worker.state.nthreads))

        async def setup(self, worker) -> None:
            threads = self.threads_for(worker)
            await asyncio.get_running_loop().run_in_executor(None, init_worker, threads)

    TensorFlowThreads.__module__ = __name__
    TensorFlowThreads.__qualname__ = "TensorFlowThreads"
    return TensorFlowThreads


def __getattr__(name: str):
    """``TensorFlowThreads`` is built on first use: the command line imports this module and
    should not pay for importing ``distributed`` (pickled by name: workers import it here)."""
    if name == "TensorFlowThreads":
        globals()[name] = cls = _make_tensorflow_threads_class()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


def _process_pool_runner_class():
    from prefect.task_runners import ProcessPoolTaskRunner

    class ProcessRunner(_SharesPrefectAPI, ProcessPoolTaskRunner):
        """ProcessPoolTaskRunner whose workers use the parent's Prefect API."""

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
                plugin = __getattr__("TensorFlowThreads")(self.intra_op_threads, dict(slots))
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


def choose_runner(kind: str, workers: int | None, trials: int, work: int,
                  cores: int | None = None) -> tuple[str, int]:
    """Resolve ``auto`` and a missing worker count for a search with ``trials`` distinct
    trials left to train and ``work`` = their epochs x training images.

    ``auto``: one worker process per core for a large search (at least two trials per core
    and :data:`AUTO_PROCESSES_MIN_WORK`; on the project's 2-core machine the default grid
    trains 1.8x as fast so), else one thread in this process (no start-up). A missing
    ``workers`` is one per core for ``processes`` and ``dask``, one for ``threads``.
    """
    cores = cores or available_cores()
    if kind == "auto":
        large = cores >= 2 and trials >= 2 * cores and work >= AUTO_PROCESSES_MIN_WORK
        kind = "processes" if large else "threads"
        if workers is None:
            workers = cores if large else 1
    if workers is None:
        workers = 1 if kind == "threads" else cores
    return kind, max(1, min(workers, max(trials, 1)))


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
            max_workers=workers, initializer=init_worker, initargs=(threads,)
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
