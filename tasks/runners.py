"""Task runners for the fan-out: a choice, not a rewrite.

``threads`` (default) trains in this process; ``processes`` spawns worker processes on this
machine; ``dask`` uses prefect-dask, with a local cluster of N worker processes or an existing
scheduler. Each worker sets its TensorFlow thread counts so that workers x threads ~ cores.
"""

from __future__ import annotations

import os
from typing import Literal

RunnerKind = Literal["threads", "processes", "dask"]
RUNNERS: tuple[str, ...] = ("threads", "processes", "dask")


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """TensorFlow intra-op threads for each of ``workers`` so the cores are not
    oversubscribed."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, workers))


def init_worker(intra_op_threads: int) -> None:
    """Worker-process initializer: thread counts and quiet logs before TensorFlow starts."""
    from tasks.engine import configure_tensorflow

    configure_tensorflow(intra_op_threads=intra_op_threads, inter_op_threads=1)


def make_task_runner(kind: str = "threads", workers: int = 1, dask_address: str | None = None):
    """Build the task runner named ``kind`` with ``workers`` workers."""
    threads = threads_per_worker(workers)
    if kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "processes":
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(
            max_workers=workers, initializer=init_worker, initargs=(threads,)
        )
    if kind == "dask":
        from prefect_dask import DaskTaskRunner

        if dask_address:
            return DaskTaskRunner(address=dask_address)
        # Local worker processes inherit the environment: set their TF threads through it.
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        os.environ["TF_NUM_INTEROP_THREADS"] = "1"
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
            }
        )
    raise ValueError(f"runner={kind!r}: allowed {', '.join(RUNNERS)}")
