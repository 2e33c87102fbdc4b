"""Reliability: kill and resume, concurrent runs on one cache, damaged cache entries, locks
whose holder died."""

import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import PROJECT_ROOT
from holds import Hold, speed_env

GRID = ["--dropout", "0", "0.2", "0.4", "--units", "8", "16", "--batch-size", "100",
        "--epochs", "1"]


def grid_command(mnist_file, reports):
    return [sys.executable, "flows/grid.py", "--data", str(mnist_file),
            "--reports-dir", str(reports), *GRID]


def environment(home: Path) -> dict[str, str]:
    """A separate Prefect home, result storage and data dir: a user's machine."""
    (home / "prefect").mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(home / "prefect"),
               PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(home / "prefect" / "storage"),
               PIPELINE_DATA_DIR=str(home / "data"), PYTHONPATH=str(PROJECT_ROOT),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", **speed_env())
    return env


def read_lines(process: subprocess.Popen):
    """The process's stdout lines, read as they come by a thread of their own (returned too:
    joined, it has read them all)."""
    import threading

    lines: list[str] = []

    def read():
        for line in process.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return lines, reader


def run(command, env, timeout=300):
    done = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def report_folder(stdout: str) -> Path:
    [line] = [line for line in stdout.splitlines() if line.startswith("Report: ")]
    return Path(line.removeprefix("Report: "))


def counts(stdout: str) -> str:
    [line] = [line for line in stdout.splitlines() if line.startswith("Grid done: ")]
    return line


@pytest.mark.slow
def test_kill_and_resume_trains_only_the_unfinished_cells(mnist_file, tmp_path):
    """Killed (kill -9) with 2 results in and a trial held before training (the test hold):
    the rerun trains only what was not finished, and gives the table of an uninterrupted run."""
    env = environment(tmp_path / "home")
    hold = Hold(tmp_path / "hold")
    hold.arm("train")
    reports = tmp_path / "reports"
    process = subprocess.Popen(grid_command(mnist_file, reports), cwd=PROJECT_ROOT,
                               env={**env, **hold.env}, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    lines, _ = read_lines(process)

    def results() -> int:
        return sum(line.startswith("[") and "trained in" in line for line in list(lines))

    try:
        hold.let_through("train", lambda: results() >= 2, what="2 results", timeout=240,
                         why="a new Prefect home's temporary server starts first")
        finished = results()
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the flow, its temporary server, everything
        process.wait(timeout=30)
    assert finished >= 2
    assert not reports.exists() or not [p for p in reports.iterdir() if not p.name.startswith(".")]

    resumed = run(grid_command(mnist_file, reports), env)
    done = counts(resumed)
    match = re.match(r"Grid done: (\d+) trained, (\d+) from cache", done)
    trained, cached = map(int, match.groups())
    assert cached >= finished and trained + cached == 6, done
    trials = pd.read_parquet(report_folder(resumed) / "trials.parquet")
    assert len(trials) == 6 and (trials["status"] == "completed").all()
    assert not any(p.name.startswith(".") for p in reports.iterdir()
                   if p.name not in (".write-test",))

    # an uninterrupted run on a fresh machine gives the same table
    fresh = run(grid_command(mnist_file, tmp_path / "reports2"), environment(tmp_path / "h2"))
    reference = pd.read_parquet(report_folder(fresh) / "trials.parquet")
    columns = ["trial_key", "val_accuracy", "test_accuracy", "test_loss"]
    pd.testing.assert_frame_equal(trials[columns], reference[columns], rtol=1e-5)


@pytest.mark.slow
def test_two_concurrent_runs_of_the_same_grid(mnist_file, tmp_path):
    env = environment(tmp_path / "home")
    reports = tmp_path / "reports"
    processes = [subprocess.Popen(grid_command(mnist_file, reports), cwd=PROJECT_ROOT,
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=400) for p in processes]
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err[-3000:]
    tables = [pd.read_parquet(report_folder(out) / "trials.parquet") for out, _ in outputs]
    assert report_folder(outputs[0][0]) != report_folder(outputs[1][0])
    for table in tables:
        assert len(table) == 6 and (table["status"] == "completed").all()
    # each cell trained exactly once: the other run waited for it and took it from the cache
    trained = pd.concat(tables).groupby("trial_key")["cached"].apply(lambda c: (~c).sum())
    assert (trained == 1).all(), trained.to_dict()
    columns = ["trial_key", "test_accuracy"]
    pd.testing.assert_frame_equal(tables[0][columns], tables[1][columns], rtol=1e-5)
    # afterwards the cache is sound: a third run trains nothing
    assert "Grid done: 0 trained, 6 from cache" in run(grid_command(mnist_file, reports), env)


def hold_lock(directory: Path, key: str, ready) -> None:
    """A run that takes a trial's lock and is then killed (kill -9) while training."""
    from tasks.trial.locks import FlockLockManager

    FlockLockManager(directory).acquire_lock(key, "another run")
    ready.set()
    time.sleep(600)


def test_a_killed_lock_holder_does_not_block_the_next_run(tmp_path):
    from tasks.trial.locks import FlockLockManager

    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    holder = context.Process(target=hold_lock, args=(tmp_path, "trial-abc", ready))
    holder.start()
    assert ready.wait(60)
    manager = FlockLockManager(tmp_path)
    assert manager.is_locked("trial-abc")
    assert not manager.acquire_lock("trial-abc", "this run", acquire_timeout=0.5)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(30)
    started = time.monotonic()
    assert manager.acquire_lock("trial-abc", "this run", acquire_timeout=30)
    assert time.monotonic() - started < 2  # the kernel released it: no expiry to wait for
    assert manager.is_lock_holder("trial-abc", "this run")
    assert not manager.is_lock_holder("trial-abc", "another run")
    # another thread of this process is excluded too, until the lock is released
    other = FlockLockManager(tmp_path)
    assert not other.acquire_lock("trial-abc", "a thread", acquire_timeout=0.3)
    manager.release_lock("trial-abc", "this run")
    assert not manager.is_locked("trial-abc")
    assert other.acquire_lock("trial-abc", "a thread", acquire_timeout=1)
    other.release_lock("trial-abc", "a thread")


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["processes", "dask"])
def test_a_killed_worker_is_a_transient_fault(runner, mnist_file, tmp_path):
    """kill -9 on a worker process mid-run (as the OOM killer would): every trial completes,
    exit 0, no traceback; the process pool says so in one line."""
    import psutil

    command = [sys.executable, "flows/grid.py", "--data", str(mnist_file), "--reports-dir",
               str(tmp_path / "reports"), "--dropout", "0", "0.2", "0.4", "--units", "96", "128",
               "--batch-size", "16", "--epochs", "12", "--runner", runner, "--workers", "2"]
    hold = Hold(tmp_path / "hold")
    hold.arm("epoch")
    process = subprocess.Popen(command, cwd=PROJECT_ROOT,
                               env={**environment(tmp_path / "home"), **hold.env},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines, reader = read_lines(process)
    # the first result in, then a worker holding a trial after an epoch: that worker is
    # killed, with its trial in flight, however fast the machine
    held = hold.let_through("epoch", lambda: any(line.startswith("[1/6]") for line in lines),
                            what="the first result", timeout=240,
                            why="a new Prefect home's temporary server and the workers start")
    killed = held["pid"]
    workers = [c.pid for c in psutil.Process(process.pid).children(recursive=True)]
    assert killed in workers, (held, workers)
    os.kill(killed, signal.SIGKILL)
    hold.release_all()
    err = process.stderr.read()
    assert process.wait(timeout=120) == 0, err[-3000:]
    reader.join(30)
    out = "".join(lines)
    assert "Traceback" not in err and "Traceback" not in out
    if runner == "processes":
        assert "worker lost (BrokenProcessPool" in out
    else:
        assert "worker lost (a Dask worker died" in out
    trials = pd.read_parquet(report_folder(out) / "trials.parquet")
    assert len(trials) == 6 and (trials["status"] == "completed").all()


@pytest.mark.slow
def test_a_failed_run_ends_with_one_line_that_names_its_log(mnist_file, tmp_path):
    """A trial that fails for good: the terminal has the progress lines and one error line;
    Prefect's records and the traceback are in the log file that line names."""
    env = environment(tmp_path / "home")
    env["PIPELINE_FAULTS"] = '[{"units": 9, "times": -1, "error": "deterministic"}]'
    command = [sys.executable, "flows/grid.py", "--data", str(mnist_file), "--reports-dir",
               str(tmp_path / "reports"), "--dropout", "0", "--units", "8", "9",
               "--batch-size", "100", "--epochs", "1"]
    done = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    [line] = done.stderr.strip().splitlines()
    match = re.fullmatch(r"error: 1 of 2 trials failed \(see report (.+)\) \(details: (.+)\)",
                         line)
    assert match, line
    assert "-> FAILED: ValueError: injected deterministic fault" in done.stdout
    log = Path(match.group(2)).read_text()
    assert log and "Traceback" in log and "injected deterministic fault" in log
    assert Path(match.group(2)).parent == tmp_path / "home" / "prefect" / "logs"


@pytest.mark.slow
def test_a_full_disk_under_the_reports_ends_with_one_line(mnist_file, tmp_path):
    """The report folder on a 64 kB filesystem: the figures do not fit. One error line names
    the failed step, the safe trials.parquet and the log; no traceback on the terminal."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        env = environment(tmp_path / "home")
        command = [sys.executable, "flows/grid.py", "--data", str(mnist_file), "--reports-dir",
                   str(disk), "--dropout", "0", "0.3", "--units", "8", "--batch-size", "100",
                   "--epochs", "1"]
        done = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True,
                              text=True, timeout=300)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stdout + done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: report step '") and "trials.parquet" in line, line
    assert "(details: " in line and str(tmp_path / "home" / "prefect" / "logs") in line


def test_a_worker_ends_when_the_process_that_started_it_is_killed(tmp_path):
    """A training worker whose flow process is killed with ``kill -9`` does not train on as an
    orphan (it would hold a core for minutes): it exits within about a poll interval."""
    import psutil

    ready = tmp_path / "ready"
    worker = ("import pathlib, sys, time\n"
              "from tasks.search.workers import watch_parent\n"
              "watch_parent(0.1)\n"
              f"pathlib.Path({str(ready)!r}).write_text('ok')\n"
              "time.sleep(120)\n")
    parent_code = ("import subprocess, sys, time\n"
                   f"child = subprocess.Popen([sys.executable, '-c', {worker!r}])\n"
                   "print(child.pid, flush=True)\n"
                   "time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE,
                              text=True, cwd=PROJECT_ROOT)
    try:
        child = psutil.Process(int(parent.stdout.readline()))
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert time.monotonic() < deadline, "the worker did not start"
            time.sleep(0.05)
        assert child.is_running()
        parent.kill()
        parent.wait()
        child.wait(timeout=15)  # psutil.TimeoutExpired if it lives on (not our child: no code)
        assert not child.is_running()
    finally:
        parent.kill()


def test_a_worker_whose_parent_died_while_it_started_exits_before_taking_work(monkeypatch):
    """A pool worker still importing when its flow process was killed must not run the work
    items left in the pool's queue: it compares its parent with the pid spawn gave it."""
    from tasks.search import workers

    class Gone:
        pid = os.getppid() + 1_000_000  # not this process's parent any more

    exits = []
    monkeypatch.setattr("multiprocessing.parent_process", lambda: Gone())
    monkeypatch.setattr(workers.os, "_exit", lambda code: exits.append(code))
    workers.watch_parent(poll=0.01)
    assert exits == [70]
    # and it watches nothing more (a watch thread would end the test process itself)
    time.sleep(0.1)
    assert exits == [70]
    assert not any(t.name == "watch-parent" for t in __import__("threading").enumerate())
