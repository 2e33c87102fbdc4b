"""The Dask worker plugin that sets TensorFlow's threads on every worker.

A module of its own so that only a Dask run imports ``distributed``; workers unpickle the
plugin by this module's name.
"""

from __future__ import annotations

import asyncio
import os

from distributed.diagnostics.plugin import WorkerPlugin

from tasks.search.workers import init_worker, threads_per_worker


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
        from tasks.settings import current

        self.intra_op_threads = intra_op_threads
        self.slots_by_host = slots_by_host or {}
        self.tf_logs = current().tf_logs  # the parent's -v

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
        await asyncio.get_running_loop().run_in_executor(None, init_worker, threads,
                                                       self.tf_logs)
