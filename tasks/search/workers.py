"""Worker processes: TensorFlow threads per worker, set before TensorFlow starts.

Used by every runner whose workers are other processes (:mod:`tasks.search.runners`), and by
the Dask worker plugin (:mod:`tasks.search.dask_plugin`).
"""

from __future__ import annotations

import os
from typing import Any


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


#: How often a worker checks that the process that started it is alive (seconds).
PARENT_POLL_SECONDS = 1.0


def watch_parent(poll: float = PARENT_POLL_SECONDS) -> None:
    """End this worker process when the process that started it dies (``kill -9`` of a flow
    run, the OOM killer): nobody is left to take its result, and it would train on for
    minutes, holding a core. A daemon thread compares the parent's pid with the one at start
    (an orphan is re-parented); ``prctl(PR_SET_PDEATHSIG)`` is not used, because it fires
    when the parent's *thread* that started the worker ends, which a pool's threads do."""
    import multiprocessing
    import threading

    # a pool's worker knows its parent's pid from the start (spawn passes it): a worker still
    # importing when its parent was killed finds itself orphaned already, and must not take
    # the work items left in the pool's queue
    started_by = multiprocessing.parent_process()
    parent = started_by.pid if started_by is not None else os.getppid()
    if os.getppid() != parent:
        os._exit(70)
    elif parent > 1:
        threading.Thread(target=_watch, args=(parent, poll), name="watch-parent",
                         daemon=True).start()


def _watch(parent: int, poll: float) -> None:
    import time

    while True:
        time.sleep(poll)
        if os.getppid() != parent:
            os._exit(70)  # EX_SOFTWARE; no cleanup: the parent is gone


def init_worker(intra_op_threads: int | None = None, tf_logs: bool = False,
                end_with_parent: bool = False) -> None:
    """Worker-process initializer: thread counts and quiet logs, then TensorFlow, once.

    ``None`` takes the count from ``$TF_NUM_INTRAOP_THREADS`` (how a remote ``dask worker``
    is told). ``tf_logs``: the parent's ``-v`` (TensorFlow's own logs shown). TensorFlow is
    imported here so that its runtime setters apply before the first op; the first trial
    would pay for the import anyway. ``end_with_parent``: a process-pool worker ends when the
    flow process that started it dies (:func:`watch_parent`); not for Dask, whose nanny
    restarts its workers and whose ``--no-nanny`` workers outlive the shell that started them.
    """
    import signal
    import threading

    from tasks.engine.tf_runtime import configure_tensorflow
    from tasks.engine.tf_runtime import tensorflow as _tf

    # Ctrl-C reaches the whole process group: the command that started this worker handles
    # it (and ends the worker); a worker of its own would only print a traceback
    if threading.current_thread() is threading.main_thread():  # (a Dask plugin is not)
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    if end_with_parent:
        watch_parent()
    if tf_logs:
        from tasks.settings import override

        override(tf_logs=True)
    if intra_op_threads is None:
        intra_op_threads = int(os.environ.get("TF_NUM_INTRAOP_THREADS") or 0) or None
    inter_op_threads = 1 if intra_op_threads else None
    configure_tensorflow(intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads)
    _tf()
    configure_tensorflow(intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads)


def thread_report() -> dict[str, Any]:
    """What TensorFlow runs with in this process (a probe: ``client.run(thread_report)``)."""
    from tasks.engine.tf_runtime import tensorflow as _tf

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
