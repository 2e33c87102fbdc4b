"""The grid on Dask (prefect-dask, a LocalCluster of 2 worker processes): the same trials and
metrics as sequential training, one cache shared with the threads runner, data read once per
worker, TensorFlow threads set per worker, one Prefect API for the parent and its workers."""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import PROJECT_ROOT

from flows.grid import grid_search
from tasks.config import SplitSpec, trial_key
from tasks.data.prepare import prepare_data
from tasks.run_options import FanOut, RunOptions
from tasks.search.runners import make_task_runner
from tasks.search.space import expand_grid, make_space
from tasks.search.workers import thread_report, threads_per_worker
from tasks.trial.task import train_trial

pytest.importorskip("prefect_dask")
with_prefect_api = pytest.mark.usefixtures("prefect_harness")

# Metrics of a trial trained on a Dask worker vs the same trial trained here. Same seeds,
# same data, same graph; only the intra-op thread count differs (1 on a worker vs all cores
# here), which may reorder float sums inside TensorFlow's kernels. Measured: accuracies
# identical, one loss off by 2e-10 (float32 rounding); allowed: a float32 rounding in the
# loss, and a flipped borderline prediction or two (1e-3 = 2 of 2000 validation images).
LOSS_TOLERANCE = 1e-6  # relative
ACCURACY_TOLERANCE = 1e-3  # absolute

METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss",
           "test_accuracy")


def space(units, dropout=(0.0, 0.5), seed=7):
    # seed 7: no other test trains these cells, so the cache starts empty for them
    return make_space(units=list(units), dropout=list(dropout), batch_size=[100], epochs=1,
                      seed=seed)


def grid(mnist_file, tmp_path, grid_space, **runner):
    folder = grid_search(space=grid_space, fan_out=FanOut(**runner),
                         run=RunOptions(data=str(mnist_file),
                                        reports_dir=str(tmp_path / "reports")))
    return pd.read_parquet(Path(folder) / "trials.parquet")


def test_auto_runner_starts_worker_processes_only_for_a_large_search():
    from tasks.search.runners import choose_runner

    full_epoch = 60_000
    plenty = 10**12  # bytes of memory available: cores are the limit
    # the default study or grid on 2 cores: one worker process per core
    assert choose_runner("auto", None, 400, 400 * 10 * full_epoch, cores=2,
                         available=plenty) == ("processes", 2, "")
    assert choose_runner("auto", None, 25, 25 * 10 * full_epoch, cores=2,
                         available=plenty) == ("processes", 2, "")
    # a quick look, a rerun with 1 trial left, one core: one thread, no start-up
    assert choose_runner("auto", None, 4, 4 * 2000, cores=2) == ("threads", 1, "")
    assert choose_runner("auto", None, 1, 10 * full_epoch, cores=2) == ("threads", 1, "")
    assert choose_runner("auto", None, 400, 400 * 10 * full_epoch, cores=1) == ("threads", 1, "")
    # explicit choices are kept; workers never exceed the trials
    assert choose_runner("processes", None, 3, 0, cores=8) == ("processes", 3, "")
    assert choose_runner("threads", 4, 10, 0, cores=2) == ("threads", 4, "")


def test_auto_runner_starts_no_more_workers_than_fit_in_memory():
    from tasks.search.runners import WORKER_MEMORY, choose_runner, workers_that_fit

    work = 400 * 10 * 60_000
    # 16 cores, memory for 3 workers (and a bit): 3 worker processes, and the reason
    assert choose_runner("auto", None, 400, work, cores=16,
                         available=int(3.5 * WORKER_MEMORY)) == (
        "processes", 3, "memory for 3 workers")
    # memory for one: one thread in this process, no worker process
    assert choose_runner("auto", None, 400, work, cores=16,
                         available=WORKER_MEMORY + 1) == ("threads", 1, "memory for 1 worker")
    assert workers_that_fit(WORKER_MEMORY // 2) == 1  # never none
    # memory for all cores: the cores are the limit, no reason given
    assert choose_runner("auto", None, 400, work, cores=16,
                         available=16 * WORKER_MEMORY) == ("processes", 16, "")
    # an explicit worker count is kept whatever the memory; so is an explicit runner
    assert choose_runner("auto", 8, 400, work, cores=16,
                         available=WORKER_MEMORY) == ("processes", 8, "")
    assert choose_runner("processes", None, 400, work, cores=16,
                         available=WORKER_MEMORY) == ("processes", 16, "")
    # --worker-memory: workers that need 4 GB each, in 10 GB
    assert choose_runner("auto", None, 400, work, cores=16, available=10 * 10**9,
                         per_worker=4e9) == ("processes", 2, "memory for 2 workers")


def test_make_task_runner_builds_each_kind_with_its_share_of_cores():
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from tasks.errors import UserError
    from tasks.search.workers import init_worker

    assert threads_per_worker(2, cores=16) == 8 and threads_per_worker(4, cores=2) == 1
    threads = make_task_runner("threads", workers=3)
    assert isinstance(threads, ThreadPoolTaskRunner) and threads._max_workers == 3
    processes = make_task_runner("processes", workers=2)
    assert isinstance(processes, ProcessPoolTaskRunner) and processes._max_workers == 2
    assert processes._initializer is init_worker
    # threads, no TF logs, and the worker ends with the flow process that started it
    assert processes._initargs == (threads_per_worker(2), False, True)
    local = make_task_runner("dask", workers=2)
    assert isinstance(local, DaskTaskRunner) and local.address is None
    assert local.cluster_kwargs["n_workers"] == 2
    assert local.cluster_kwargs["threads_per_worker"] == 1
    assert local.cluster_kwargs["env"]["TF_NUM_INTRAOP_THREADS"] == str(threads_per_worker(2))
    assert local.intra_op_threads == threads_per_worker(2)
    # an existing cluster outlives the command: it needs a real Prefect server
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        with pytest.raises(UserError, match="set PREFECT_API_URL"):
            make_task_runner("dask", dask_address="tcp://10.1.2.3:8786")
    with temporary_settings(updates={PREFECT_API_URL: "http://10.1.2.1:4200/api"}):
        remote = make_task_runner("dask", dask_address="tcp://10.1.2.3:8786")
    assert remote.address == "tcp://10.1.2.3:8786"
    assert remote.intra_op_threads is None  # taken from each worker's environment
    with pytest.raises(ValueError, match="runner='ray'"):
        make_task_runner("ray")


def test_the_command_line_checks_dask_address_before_prefect_starts():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.errors import UserError
    from tasks.search.runners import check_api_for_cluster

    with pytest.raises(UserError, match="needs --runner dask"):
        FanOut(runner="threads", workers=1, dask_address="tcp://127.0.0.1:8786")
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        with pytest.raises(UserError, match="set PREFECT_API_URL"):
            check_api_for_cluster("tcp://127.0.0.1:8786")
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
        check_api_for_cluster("tcp://127.0.0.1:8786")
    FanOut(runner="dask", workers=2)  # a local cluster needs nothing


def test_the_worker_plugin_picks_threads_for_each_worker(monkeypatch):
    from types import SimpleNamespace

    from tasks.search.dask_plugin import TensorFlowThreads

    def worker(address, nthreads=1):
        return SimpleNamespace(address=address, state=SimpleNamespace(nthreads=nthreads))

    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS", raising=False)
    assert TensorFlowThreads(3).threads_for(worker("tcp://10.0.0.1:1")) == 3  # local cluster
    plugin = TensorFlowThreads(None, {"10.0.0.1": 4, "10.0.0.2": 1})
    assert plugin.threads_for(worker("tcp://10.0.0.1:1")) == threads_per_worker(4)
    assert plugin.threads_for(worker("tcp://10.0.0.2:1")) == threads_per_worker(1)
    assert plugin.threads_for(worker("tcp://10.0.0.3:1", nthreads=2)) == threads_per_worker(2)
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "5")  # a remote worker's own setting wins
    assert plugin.threads_for(worker("tcp://10.0.0.1:1")) == 5


@pytest.mark.slow  # a local Dask cluster: worker processes of its own
@with_prefect_api
def test_dask_grid_matches_sequential_training_and_shares_the_threads_cache(
        mnist_file, tmp_path, capsys):
    # 2 of the 4 cells are trained on threads first ...
    first = grid(mnist_file, tmp_path, space(units=[10, 14], dropout=[0.0]),
                 runner="threads", workers=1)
    assert "Grid done: 2 trained, 0 from cache" in capsys.readouterr().out
    # ... so the 4-cell grid on a local Dask cluster of 2 worker processes trains only 2
    trials = grid(mnist_file, tmp_path, space(units=[10, 14]), runner="dask", workers=2)
    out = capsys.readouterr().out
    assert "Grid done: 2 trained, 2 from cache" in out
    assert (trials["status"] == "completed").all()
    assert list(trials["cached"]) == [True, True, False, False]  # dropout 0.0 first
    cached = trials[trials["cached"]].set_index("trial_key")
    assert set(cached.index) == set(first["trial_key"])
    for column in METRICS:
        assert (cached[column] == first.set_index("trial_key").loc[cached.index, column]).all()

    # The reference: the same 4 configs trained one after the other in this process.
    handle, _ = prepare_data(mnist_file, SplitSpec(), data_dir=tmp_path / "reference")
    configs = expand_grid(space(units=[10, 14]))
    assert list(trials["trial_key"]) == [trial_key(c, handle.fingerprint) for c in configs]
    for config, row in zip(configs, trials.itertuples(), strict=True):
        if row.cached:
            continue  # trained by the threads run above, compared already
        reference = train_trial(config, handle, data_dir=str(tmp_path / "reference"))
        assert reference.trial_key == row.trial_key
        assert reference.best_epoch == row.best_epoch
        for name in METRICS:
            expected, got = getattr(reference, name), getattr(row, name)
            if name.endswith("loss"):
                assert got == pytest.approx(expected, rel=LOSS_TOLERANCE), name
            else:
                assert got == pytest.approx(expected, abs=ACCURACY_TOLERANCE), name


@pytest.mark.slow
@with_prefect_api
def test_dask_workers_read_the_data_once_and_run_tensorflow_with_their_share_of_cores(
        mnist_file, tmp_path, capsys):
    def count_data_reads():  # runs on each worker: wrap the disk read of load_splits
        import tasks.data.splits

        if not hasattr(tasks.data.splits, "reads_by_test"):
            tasks.data.splits.reads_by_test = []
            read_split = tasks.data.splits.read_split

            def counted(path):
                tasks.data.splits.reads_by_test.append(str(path))
                return read_split(path)

            tasks.data.splits.read_split = counted

    def data_reads():
        import tasks.data.splits

        return len(tasks.data.splits.reads_by_test)

    # A local cluster as make_task_runner builds it, used by the grid through its address.
    with make_task_runner("dask", workers=2) as cluster:
        client = cluster.client
        reports = client.run(thread_report)
        assert len(reports) == 2 and len({r["pid"] for r in reports.values()}) == 2
        expected = threads_per_worker(2)  # cores // 2
        for report in reports.values():
            assert report["intra_op_threads"] == expected
            assert report["inter_op_threads"] == 1
            assert report["TF_NUM_INTRAOP_THREADS"] == str(expected)
            assert report["OMP_NUM_THREADS"] == str(expected)
        client.run(count_data_reads)
        trials = grid(mnist_file, tmp_path, space(units=[11, 13], dropout=[0.0, 0.25]),
                      runner="dask", dask_address=client.scheduler.address)
        assert "Grid done: 4 trained, 0 from cache" in capsys.readouterr().out
        assert (trials["status"] == "completed").all()
        reads = client.run(data_reads)
    # load_splits reads 3 splits (train, validation, test) once per worker process: 4 trials
    # on 2 workers, so at least one worker trained twice from one read
    assert sorted(reads.values()) in ([3, 3], [0, 3]), reads


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["dask", "processes"])
def test_worker_processes_share_the_parents_temporary_prefect_server(mnist_file, runner):
    """Without PREFECT_API_URL a run starts one temporary Prefect server, not one per worker
    process (which took ~5 s each and outlived an interrupted run)."""
    import psutil

    home = Path(tempfile.mkdtemp(prefix="one-server-"))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(home / "prefect"), PIPELINE_DATA_DIR=str(home / "data"),
               PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(home / "prefect" / "storage"),
               PYTHONPATH=str(PROJECT_ROOT), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    command = [sys.executable, "flows/grid.py", "--data", str(mnist_file), "--reports-dir",
               str(home / "reports"), "--units", "8", "12", "--dropout", "0",
               "--batch-size", "100", "--epochs", "1", "--runner", runner, "--workers", "2"]
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    servers: set[int] = set()
    root = psutil.Process(process.pid)
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        try:
            for child in root.children(recursive=True):
                try:
                    if "create_app" in " ".join(child.cmdline()):
                        servers.add(child.pid)
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        time.sleep(0.1)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 0, output[-3000:]
    assert "Grid done: 2 trained, 0 from cache" in output
    assert len(servers) == 1, f"{len(servers)} temporary Prefect servers: {sorted(servers)}"
