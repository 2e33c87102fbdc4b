"""Kills at any moment (issue 31, docs/faults.md): a pool worker lost at any moment never hangs
a run; nothing a command started outlives its ``kill -9``; a tune killed at any point (holding
a file lock, writing the Optuna SQLite file) leaves a state the next command recovers from.

Every command runs in a session of its own: its processes are the ones in that session and
in its process tree, recorded before the kill (never other processes of the machine). Each
wait polls for the state it needs (a line, a file, a lock in ``/proc/locks``).

CI runs one of each (the pool's shutdown, five points of a grid's life, three tune kills). The
repeated figures quoted in docs/faults.md come from running this file by hand::

    python tests/test_kills.py workers --tries 4      # 5 moments x 4 worker kills
    python tests/test_kills.py commands --tries 1     # 5 points of a grid's life
    python tests/test_kills.py tune --kills 20        # 20 seeded random tune kills
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from holds import Hold, alive, speed_env

PROJECT_ROOT = Path(__file__).resolve().parents[1]

#: A run must end (completed, or one ``error:`` line) this long after a worker is killed.
END_WITHIN = 60.0
#: Nothing a command started may be left this long after its ``kill -9``.
GONE_WITHIN = 10.0


# --------------------------------------------------------------------------------------------
# Commands and their processes
# --------------------------------------------------------------------------------------------
def environment(home: Path, **extra: str) -> dict[str, str]:
    """A user's machine of its own under ``home``: Prefect home, result storage, data."""
    (home / "prefect").mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(home / "prefect"),
               PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(home / "prefect" / "storage"),
               PIPELINE_DATA_DIR=str(home / "data"), PIPELINE_REPORTS_DIR=str(home / "reports"),
               PYTHONPATH=str(PROJECT_ROOT), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PIPELINE_RETRY_DELAYS="0,0", **speed_env(), **extra)
    env.pop("PIPELINE_OPTUNA_STORAGE", None)
    env.pop("PIPELINE_LOCKS", None)
    env.pop("PIPELINE_FAULTS", None)
    return env


def in_session(sid: int) -> set[int]:
    """The live processes of session ``sid`` (a command started with a session of its own)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.getsid(int(entry)) == sid and alive(int(entry)):
                    found.add(int(entry))
    return found


def descendants(pid: int) -> set[int]:
    import psutil

    try:
        return {c.pid for c in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return set()


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class Command:
    """A command in a session of its own; its output lines are read as they come."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self.started = time.monotonic()
        self.process = subprocess.Popen(args, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True,
                                        start_new_session=True)
        self.pid = self.process.pid
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                        for stream, lines in ((self.process.stdout, self.out),
                                              (self.process.stderr, self.err))]
        for reader in self.readers:
            reader.start()
        self.killed_at: float | None = None
        self.family: set[int] = set()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def processes(self) -> set[int]:
        """This command and every process it started: its tree and its session."""
        return ({self.pid} | descendants(self.pid) | in_session(self.pid)) if alive(self.pid) \
            else in_session(self.pid)

    def children(self, word: str) -> list[int]:
        return sorted(p for p in descendants(self.pid) if word in cmdline(p))

    def workers(self) -> list[int]:
        """Its process-pool (or Dask nanny) worker processes."""
        return [p for p in self.children("spawn_main") if "resource_tracker" not in cmdline(p)]

    def lines(self, prefix: str) -> int:
        return sum(line.startswith(prefix) for line in list(self.out))

    def running(self) -> bool:
        return self.process.poll() is None

    def wait_for(self, condition, timeout: float, what: str, poll: float = 0.02):
        """Poll ``condition()`` until it is true (returned); fails if the command ends first
        or ``timeout`` passes."""
        end = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if not self.running():
                raise AssertionError(f"the command ended before {what}:\n{self.transcript()}")
            if time.monotonic() > end:
                raise AssertionError(f"no {what} within {timeout:.0f} s:\n{self.transcript()}")
            time.sleep(poll)

    def kill(self) -> set[int]:
        """``kill -9`` of the command alone (as the OOM killer or a hard cancel would);
        returns its processes, recorded just before."""
        self.family = self.processes()
        self.labels = {pid: label(pid) for pid in self.family}
        os.kill(self.pid, signal.SIGKILL)
        self.killed_at = time.monotonic()
        self.process.wait(timeout=30)
        return self.family

    def left_after_kill(self, within: float = GONE_WITHIN) -> tuple[float, list[str]]:
        """(seconds from the kill until none of its processes ran, those still running
        ``within`` s after it, with their command lines)."""
        assert self.killed_at is not None
        while True:
            left = {p for p in self.family | in_session(self.pid) if alive(p)}
            waited = time.monotonic() - self.killed_at
            if not left or waited > within:
                return waited, [f"{p} {cmdline(p)[:160]}" for p in sorted(left)]
            time.sleep(0.05)

    def finish(self, timeout: float) -> int:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(
                f"still running after {timeout:.0f} s:\n{self.transcript()}") from None
        for reader in self.readers:
            reader.join(10)
        return code

    def stop(self) -> None:
        """Whatever is left of it (a failed test must not leave processes behind)."""
        for pid in self.processes():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.process.wait(timeout=30)

    def transcript(self) -> str:
        return "\n".join(["--- stdout", *self.out[-30:], "--- stderr", *self.err[-30:]])


@contextlib.contextmanager
def command(args: list[str], env: dict[str, str]):
    run = Command(args, env)
    try:
        yield run
    finally:
        if run.running():
            run.stop()


def grid_args(mnist_file: Path, home: Path, *options: str) -> list[str]:
    return [sys.executable, "flows/grid.py", "--data", str(mnist_file), "--reports-dir",
            str(home / "reports"), *options]


def ended_well(run: Command, code: int, trials: int, done: str = "Grid done: ") -> str:
    """``completed`` (exit 0, every trial completed) or ``one error line`` (exit 1 or 2, one
    ``error:`` line on stderr and no traceback); anything else fails."""
    text = "\n".join(run.out + run.err)
    assert "Traceback" not in text, run.transcript()
    if code == 0:
        [summary] = [line for line in run.out if line.startswith(done)]
        assert summary.startswith(f"{done}") and ", 0 failed" in summary, run.transcript()
        assert run.lines("[") == trials, run.transcript()
        return "completed"
    errors = [line for line in run.err if line.strip()]
    assert code in (1, 2) and len(errors) == 1 and errors[0].startswith("error: "), \
        run.transcript()
    return "one error line"


# --------------------------------------------------------------------------------------------
# 0. A pool worker lost at any moment never hangs the run
# --------------------------------------------------------------------------------------------
#: Python's hook (``sitecustomize``, on the command's PYTHONPATH) that kills a pool worker
#: after the pool's shutdown has begun, in the state that hung runs (issue 31): the worker
#: killed holds the call queue's read lock (an idle worker waits for work holding it, in
#: ``read()``), so the other one can never read the sentinel that tells it to exit. The worker
#: is stopped first, the shutdown begun, and the worker killed once the pool's manager thread
#: has sent its sentinels and joins the workers. Writes ``pid time`` to $KILL_HOOK_OUT.
SHUTDOWN_HOOK = '''
import os

if os.environ.get("KILL_HOOK_OUT"):
    import concurrent.futures.process as _process
    import signal as _signal
    import time as _time

    _real_shutdown = _process.ProcessPoolExecutor.shutdown
    _READ = {"x86_64": "0", "aarch64": "63"}.get(os.uname().machine)

    def _reading(pid):
        try:
            with open(f"/proc/{pid}/syscall") as f:
                return f.read().split()[0] == _READ
        except (OSError, IndexError):
            return False

    def _shutdown(self, wait=True, *, cancel_futures=False):
        out = os.environ.pop("KILL_HOOK_OUT", None)  # the first pool's shutdown only
        manager, wakeup = self._executor_manager_thread, self._executor_manager_thread_wakeup
        alive = [p for p in (self._processes or {}).values() if p.is_alive()]
        if out is None or manager is None or len(alive) < 2:
            return _real_shutdown(self, wait, cancel_futures=cancel_futures)
        end = _time.monotonic() + 60
        readers = []
        while len(readers) != 1 and _time.monotonic() < end:
            readers = [p for p in alive if _reading(p.pid)]
            _time.sleep(0.01)
        if len(readers) != 1:
            with open(out, "w") as f:
                f.write("no worker waits in read()\\n")
            return _real_shutdown(self, wait, cancel_futures=cancel_futures)
        [reader] = readers
        os.kill(reader.pid, _signal.SIGSTOP)
        _real_shutdown(self, False, cancel_futures=cancel_futures)
        while not wakeup._closed and _time.monotonic() < end:
            _time.sleep(0.005)
        os.kill(reader.pid, _signal.SIGKILL)
        with open(out, "w") as f:
            f.write(f"{reader.pid} {_time.monotonic()}\\n")
        if wait:
            manager.join()

    _process.ProcessPoolExecutor.shutdown = _shutdown
'''

#: 6 trials of 1 to 3 s on 2 worker processes.
WORKER_GRID = ("--dropout", "0", "0.2", "0.4", "--units", "32", "64", "--batch-size", "32",
               "--epochs", "2", "--runner", "processes", "--workers", "2")
WORKER_TRIALS = 6
#: The shutdown moment needs no trial in flight: 4 short trials (both workers used).
SHUTDOWN_GRID = ("--dropout", "0", "0.2", "--units", "8", "16", "--batch-size", "100",
                 "--epochs", "1", "--runner", "processes", "--workers", "2")
MOMENTS = ("before the first trial", "mid-trial", "between trials", "after the last result",
           "during the pool's shutdown")
_READ_SYSCALL = {"x86_64": "0", "aarch64": "63"}.get(os.uname().machine)


def waits_for_work(pid: int) -> bool:
    """Whether the worker ``pid`` is idle, reading the pool's call queue (``read()``)."""
    try:
        with open(f"/proc/{pid}/syscall") as f:
            return f.read().split()[0] == _READ_SYSCALL
    except (OSError, IndexError):
        return False


def kill_a_worker(moment: str, mnist_file: Path, home: Path) -> dict:
    """A grid on 2 worker processes, one killed at ``moment`` (:data:`MOMENTS`); returns the
    outcome (``missed`` when the moment passed before it could be hit), seconds from the kill
    to the command's end, and what was left of it."""
    hook_out = home / "hook.txt"
    env = environment(home)
    if moment == "during the pool's shutdown":
        hooks = home / "hooks"
        hooks.mkdir(parents=True, exist_ok=True)
        (hooks / "sitecustomize.py").write_text(SHUTDOWN_HOOK)
        env.update(PYTHONPATH=f"{hooks}{os.pathsep}{PROJECT_ROOT}", KILL_HOOK_OUT=str(hook_out))
    shutdown = moment == "during the pool's shutdown"
    trials = 4 if shutdown else WORKER_TRIALS
    grid = SHUTDOWN_GRID if shutdown else WORKER_GRID
    hold = Hold(home / "hold")
    if moment == "mid-trial":  # a trial in flight is one the test holds (after an epoch)
        hold.arm("epoch")
        env.update(hold.env)
    with command(grid_args(mnist_file, home, *grid), env) as run:
        killed = None
        if moment == "before the first trial":
            workers = run.wait_for(run.workers, 180, "a worker process")
            if run.lines("[") == 0:
                killed = workers[0]
        elif moment == "mid-trial":  # after the first result, a worker holding a trial
            held = hold.let_through("epoch", lambda: run.lines("[1/"), what="a first result",
                                    timeout=300, why="a new Prefect home's server starts first")
            killed = held["pid"]
            assert killed in run.workers(), (held, run.workers())
        elif moment == "between trials":  # idle, waiting for the grid's next trial
            run.wait_for(lambda: run.lines("[1/"), 300, "a first result")
            pool = run.workers()

            def idle():
                if run.lines("[") > WORKER_TRIALS - 2:  # nothing left to submit
                    return "missed"
                return next((p for p in pool if waits_for_work(p)), None)

            found = run.wait_for(idle, 300, "a worker between trials", poll=0.002)
            killed = found if found != "missed" else None
        elif moment == "after the last result":
            run.wait_for(lambda: run.lines(f"[{WORKER_TRIALS}/"), 300, "the last result")
            killed = next(iter(run.workers()), None)
        if killed is not None:
            os.kill(killed, signal.SIGKILL)
            killed_at = time.monotonic()
        hold.release_all()
        code = run.finish(timeout=300)
        ended = time.monotonic()
        outcome = ended_well(run, code, trials)
        if moment == "during the pool's shutdown":
            text = hook_out.read_text() if hook_out.exists() else "the hook never ran"
            match = re.fullmatch(r"(\d+) ([\d.]+)\n", text)
            assert match, text
            killed, killed_at = int(match.group(1)), float(match.group(2))
        family = {run.pid} | in_session(run.pid)
        end = time.monotonic() + GONE_WITHIN
        while {p for p in family | in_session(run.pid) if alive(p)} and time.monotonic() < end:
            time.sleep(0.05)
        left = sorted(p for p in family | in_session(run.pid) if alive(p))
    if killed is None:
        return {"moment": moment, "outcome": "missed", "code": code}
    return {"moment": moment, "outcome": outcome, "code": code,
            "seconds": round(ended - killed_at, 1), "left": left,
            "loss lines": sum("worker lost" in line for line in run.out),
            "error": next((line for line in run.err if line.strip()), "")}


@pytest.mark.slow
def test_a_worker_killed_during_the_pools_shutdown_does_not_hang_the_run(mnist_file, tmp_path):
    """The hang of issue 31, made deterministic: after the last result, the pool's shutdown
    begins and the idle worker holding the call queue's lock is killed. Python's shutdown
    would wait for ever for the other worker; the bounded shutdown terminates it, and the
    run completes. (Measured without the bound: still hung after 150 s.)"""
    result = kill_a_worker("during the pool's shutdown", mnist_file, tmp_path)
    print(result)
    assert result["outcome"] == "completed"
    # a hang, not a speed: without the bound it was still hung after 150 s; here 5 s of grace,
    # then the report and the model's export (32.7 s once with every epoch slowed and both
    # cores loaded)
    assert result["seconds"] < END_WITHIN
    assert result["left"] == []
    logs = "".join(p.read_text() for p in (tmp_path / "prefect" / "logs").glob("*.log"))
    assert "still alive 5 s after the pool's shutdown began were terminated" in logs


# --------------------------------------------------------------------------------------------
# 1. Nothing outlives its command
# --------------------------------------------------------------------------------------------
POINTS = ("the server's start", "data preparation", "training", "the report", "a Dask run")


def server_answers(pid: int) -> bool:
    """Whether the temporary server ``pid`` accepts connections on its port yet."""
    match = re.search(r"--port (\d+)", cmdline(pid))
    if not match:
        return False
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", int(match.group(1)))) == 0


def locks_of(pid: int) -> list[tuple[bool, int]]:
    """The ``flock``s of process ``pid`` in /proc/locks, as (waiting for it, inode)."""
    found = []
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            waiting = fields[1] == "->"
            if waiting:
                fields = fields[1:]
            if len(fields) >= 6 and fields[1] == "FLOCK" and fields[4] == str(pid):
                found.append((waiting, int(fields[5].rsplit(":", 1)[1])))
    return found


def holds_a_lock_in(pid: int, folder: Path) -> bool:
    """Whether process ``pid`` holds a ``flock`` on a file under ``folder``."""
    held = {inode for waiting, inode in locks_of(pid) if not waiting}
    if not held or not folder.exists():
        return False
    inodes = set()
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            inodes.add(path.stat().st_ino)
    return bool(held & inodes)


def kill_a_command(point: str, mnist_file: Path, home: Path) -> dict:
    """``kill -9`` of a grid at ``point`` (:data:`POINTS`); returns what it had started, the
    seconds until none of it ran, and what was left after :data:`GONE_WITHIN` s."""
    env = environment(home)
    training = {"training": ("--units", "8", "16", "--runner", "processes"),
                "a Dask run": ("--units", "24", "48", "--runner", "dask")}.get(point)
    args = grid_args(mnist_file, home, "--dropout", "0", "0.2", *(
        (*training, "--workers", "2", "--batch-size", "16", "--epochs", "3") if training else
        ("--units", "8", "16", "--batch-size", "100", "--epochs", "1")))
    evidence = ""
    staged = staging_folders(home / "reports")  # left by an earlier kill
    hold = Hold(home / "hold")
    if training:  # a trial in flight: held before training on a worker
        hold.arm("train")
        env.update(hold.env)
    with command(args, env) as run:
        if point == "the server's start":
            [server] = run.wait_for(lambda: run.children("uvicorn"), 120, "the server process",
                                    poll=0.005)
            evidence = f"server answering: {server_answers(server)}"
        elif point == "data preparation":  # writing the processed splits, under their lock
            run.wait_for(lambda: holds_a_lock_in(run.pid, home / "data" / "processed"), 180,
                         "the command holding the data lock", poll=0.001)
            evidence = "holding the data lock"
        elif point in ("training", "a Dask run"):  # a worker holds a trial (and its lock)
            held = hold.wait("train", what="a worker holding a trial", timeout=300,
                             why="a new Prefect home's server and the workers start first")[0]
            assert held["pid"] in run.workers(), (held, run.workers())
            evidence = f"{len(run.workers())} worker processes, one holding a trial"
        elif point == "the report":
            run.wait_for(lambda: staging_folders(home / "reports") - staged, 300,
                         "the report's staging folder", poll=0.005)
            evidence = "report being written"
        family = run.kill()
        hold.release_all()
        kinds = sorted(run.labels.values())
        seconds, left = run.left_after_kill()
    return {"point": point, "processes": len(family), "kinds": kinds, "evidence": evidence,
            "at": round(run.killed_at - run.started, 1), "seconds": round(seconds, 1),
            "left": left}


def staging_folders(reports: Path) -> set[str]:
    """The report folders being written (tasks.reports.folder stages them under a hidden
    name), and those a kill left behind."""
    try:
        return {p.name for p in reports.iterdir() if p.name.startswith(".staging-")}
    except OSError:
        return set()


def label(pid: int) -> str:
    """A short name for one of a command's processes."""
    line = cmdline(pid)
    for word in ("uvicorn", "resource_tracker", "distributed", "spawn_main", "flows/"):
        if word in line:
            return "server" if word == "uvicorn" else \
                "command" if word == "flows/" else word
    return line.split(" ")[0].rsplit("/", 1)[-1] or "?"


@pytest.mark.slow
def test_a_killed_command_leaves_no_process(mnist_file, tmp_path):
    """``kill -9`` of a grid at 5 points of its life (one Prefect home, as one user's
    commands): each time, its temporary server, pool workers, Dask nannies and workers and
    the multiprocessing resource tracker are all gone within 10 s."""
    results = []
    for point in POINTS:
        result = kill_a_command(point, mnist_file, tmp_path)
        print(result)
        results.append(result)
    for result in results:
        assert result["left"] == [], result
        assert result["processes"] >= 2, result  # the command and at least its server
    assert results[0]["evidence"] == "server answering: False"
    assert int(results[2]["evidence"].split()[0]) >= 2
    assert int(results[4]["evidence"].split()[0]) >= 2


@pytest.mark.slow
def test_the_server_ends_with_the_process_that_started_it(tmp_path):
    """The temporary server's watch (tasks.prefect_server), on a stand-in server
    (``python -m http.server`` started as Prefect starts uvicorn)."""
    parent = ("import subprocess, sys, time\n"
              "from tasks.prefect_server import watched_command\n"
              "args = watched_command([sys.executable, '-m', 'uvicorn'])\n"
              "assert args[2:4] == [str(__import__('os').getpid()), '-m'], args\n"
              "args[4] = 'http.server'\n"
              "child = subprocess.Popen([*args, '--bind', '127.0.0.1', '0'])\n"
              "print(child.pid, flush=True)\n"
              "time.sleep(120)\n")
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    with command([sys.executable, "-c", parent], env) as run:
        child = int(run.wait_for(lambda: run.out[:1], 60, "the server's pid")[0])
        run.wait_for(lambda: "http.server" in cmdline(child), 30, "the server running")
        assert alive(child)
        run.kill()
        seconds, left = run.left_after_kill()
    assert left == [] and not alive(child)
    assert seconds < 5


# --------------------------------------------------------------------------------------------
# 4. A tune killed at any point leaves a state the next command recovers from
# --------------------------------------------------------------------------------------------
#: Heartbeats every second and a dead tune's trials failed after this many seconds without
#: one (60 s by default, ``PIPELINE_TUNE_GRACE``): set on the tune by :data:`TUNE_WRAPPER`. A
#: killed tune's trials are failed at once by the next all the same: their owner is gone.
TUNE_GRACE = 4
#: ``python -c`` code that runs flows/tune.py with :data:`TUNE_GRACE` and heartbeats every
#: second (the interval has no setting; TuneProposer's keyword defaults are the flow's values).
TUNE_WRAPPER = ("import runpy, sys\n"
                "from tasks.search.tune.proposer import TuneProposer\n"
                "TuneProposer.__init__.__kwdefaults__.update(heartbeat_interval=1, "
                "grace_period={grace})\n"
                "sys.argv[0] = {script!r}\n"
                "runpy.run_path(sys.argv[0], run_name='__main__')\n")
TUNE_SPACE = ("--epochs", "1", "--units", "int_log:8:64", "--dropout", "uniform:0:0.5:2",
              "--activation", "choice:relu", "--learning-rate", "choice:0.001",
              "--batch-size", "choice:100", "--study-name", "kills")
#: What a tune can be killed during: ``time`` (seconds after its start), ``line`` (after its
#: k-th finished trial), the n-th time it holds a lock or has the SQLite journal, the report.
KILL_KINDS = ("storage lock", "trial lock", "sqlite journal", "data lock", "line", "time",
              "report")


def tune_args(mnist_file: Path, home: Path, trials: int) -> list[str]:
    code = TUNE_WRAPPER.format(grace=TUNE_GRACE, script=str(PROJECT_ROOT / "flows" / "tune.py"))
    return [sys.executable, "-c", code, "--data", str(mnist_file), "--reports-dir",
            str(home / "reports"), "--trials", str(trials), *TUNE_SPACE]


def kill_points(seed: int, count: int) -> list[tuple[str, float]]:
    """``count`` seeded kill points (kind, parameter): the kinds in a seeded order, each used
    as often as the others; the parameter: which occurrence (1 to 3; the data is written
    and the report staged once), line (1 to 2) or seconds (1 to 15)."""
    rng = random.Random(seed)
    kinds: list[str] = []
    while len(kinds) < count:
        kinds += rng.sample(KILL_KINDS, len(KILL_KINDS))
    points = []
    for kind in kinds[:count]:
        parameter = {"time": round(rng.uniform(1, 15), 1), "line": rng.randint(1, 2),
                     "data lock": 1, "report": 1}.get(kind, rng.randint(1, 3))
        points.append((kind, parameter))
    return points


def finished_results(storage: Path) -> dict[str, bytes]:
    """The trial results in the result storage that are complete (readable), by file name."""
    found = {}
    for path in storage.glob("trial-*"):
        with contextlib.suppress(OSError, ValueError):
            content = path.read_bytes()
            json.loads(content)
            found[path.name] = content
    return found


def retrained(before: dict[str, bytes], storage: Path) -> list[str]:
    """The results finished before that were written again (trained again)."""
    now = {p.name: p.read_bytes() for p in storage.glob("trial-*") if p.name in before}
    return sorted(name for name, content in before.items() if now.get(name) != content)


def running_trials(home: Path) -> int:
    import optuna

    storage = home / "data" / "optuna.db"
    if not storage.exists():
        return 0
    study = optuna.load_study(study_name="kills", storage=f"sqlite:///{storage}")
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))


class Watch:
    """Polls the state a kill point names; ``hit()`` true at the n-th occurrence."""

    def __init__(self, run: Command, home: Path, kind: str, parameter: float):
        self.run, self.home, self.kind, self.parameter = run, home, kind, parameter
        self.seen, self.was = 0, False
        self.data = home / "data"
        self.locks = home / "prefect" / "storage-locks"
        self.staged = staging_folders(home / "reports")  # left by an earlier kill

    def state(self) -> bool:
        run = self.run
        if self.kind == "time":
            return time.monotonic() - run.started >= self.parameter
        if self.kind == "line":
            return run.lines("[") >= self.parameter
        if self.kind == "report":
            return bool(staging_folders(self.home / "reports") - self.staged)
        if self.kind == "sqlite journal":
            return (self.data / "optuna.db-journal").exists()
        held = {inode for waiting, inode in locks_of(run.pid) if not waiting}
        if not held:
            return False
        if self.kind == "storage lock":
            files = [self.data / "optuna.db.lock"]
        elif self.kind == "data lock":
            files = list((self.data / "processed").glob(".*.lock"))
        else:  # trial lock: the files beside the result storage (tasks.trial.locks)
            files = [p for p in self.locks.rglob("*") if p.is_file()] if \
                self.locks.exists() else []
        inodes = set()
        for path in files:
            with contextlib.suppress(OSError):
                inodes.add(os.stat(path).st_ino)
        return bool(held & inodes)

    def hit(self) -> bool:
        now = self.state()
        if now and not self.was:
            self.seen += 1
        self.was = now
        occurrences = 1 if self.kind in ("time", "line") else int(self.parameter)
        return now and self.seen >= occurrences


def kill_a_tune(mnist_file: Path, home: Path, trials: int, point: tuple[str, float]) -> dict:
    """Start a tune of the study to ``trials`` and kill it at ``point`` (if it gets there);
    returns when it was killed, what was left of it, and the finished trials it trained
    again (its own files written anew)."""
    env = environment(home)
    storage = home / "prefect" / "storage"
    kind, parameter = point
    if kind == "data lock":  # the data must be written by this tune
        for folder in (home / "data" / "processed").glob("*"):
            if folder.is_dir():
                subprocess.run(["rm", "-rf", str(folder)], check=True)
    before = finished_results(storage)
    with command(tune_args(mnist_file, home, trials), env) as run:
        watch = Watch(run, home, kind, parameter)
        poll = 0.01 if kind in ("time", "line") else 0.0005
        while run.running() and not watch.hit():
            time.sleep(poll)
        killed = run.running()
        if killed:
            run.kill()
            at = round(run.killed_at - run.started, 1)
            _, left = run.left_after_kill()
        else:
            run.finish(60)
            at, left = None, []
    # no waiting out the grace period: the rerun, started at once, fails the killed tune's
    # running trials since their owner (this host's process) is gone
    return {"kill": f"{kind} {parameter:g}", "killed": killed, "at": at, "left": left,
            "trained again": retrained(before, storage)}


def rerun_tune(mnist_file: Path, home: Path, trials: int) -> dict:
    """The tune to ``trials`` run to its end: whether it completed, the finished trials it
    trained again, and the trials left RUNNING in the study after it."""
    storage = home / "prefect" / "storage"
    before = finished_results(storage)
    with command(tune_args(mnist_file, home, trials), environment(home)) as rerun:
        code = rerun.finish(600)
    [done] = [line for line in rerun.out if line.startswith("Tune done: ")] or [""]
    result = {"rerun": "completed" if code == 0 else f"exit {code}", "rerun says": done,
              "rerun trained again": retrained(before, storage), "running": running_trials(home)}
    if code != 0:
        result["transcript"] = rerun.transcript()
    return result


def recovered(result: dict) -> bool:
    return (result["rerun"] == "completed" and not result["rerun trained again"]
            and not result["trained again"] and result["running"] == 0 and result["left"] == [])


@pytest.mark.slow
def test_a_tune_killed_at_seeded_points_is_recovered_by_the_next(mnist_file, tmp_path):
    """3 tunes of one study, each killed at a seeded point (holding a lock, writing the SQLite
    file, ...) and each starting from what the one before left, then one run to the end: it
    completes, no run trained a trial finished before it again, and no trial is left RUNNING
    in the study. (By hand, each kill is followed by its own rerun: docs/faults.md.)"""
    kills = []
    for round_, point in enumerate(kill_points(seed=4, count=3), start=1):
        kills.append(kill_a_tune(mnist_file, tmp_path, 3 * round_, point))
        print(kills[-1])
    final = rerun_tune(mnist_file, tmp_path, 9)
    print(final)
    assert all(k["killed"] and k["left"] == [] and not k["trained again"] for k in kills), kills
    assert final["rerun"] == "completed", final.get("transcript")
    assert not final["rerun trained again"] and final["running"] == 0, final


# --------------------------------------------------------------------------------------------
# By hand: the repeated figures of docs/faults.md
# --------------------------------------------------------------------------------------------
def _by_hand(argv: list[str]) -> None:  # pragma: no cover
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("workers", "commands", "tune"))
    parser.add_argument("--tries", type=int, default=4, help="per moment or point")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--moments", nargs="*", default=None, help="workers: only these")
    parser.add_argument("--kind", choices=KILL_KINDS, help="tune: every kill of this kind")
    args = parser.parse_args(argv)
    sys.path[:0] = [str(Path(__file__).parent), str(PROJECT_ROOT)]
    from conftest import synthetic_mnist, write_npz

    root = Path(tempfile.mkdtemp(prefix="kills-"))
    mnist_file = write_npz(root / "mnist.npz", synthetic_mnist(n_train=600, n_test=10000))
    print(f"# {args.what}: {root}", flush=True)
    if args.what == "workers":
        for moment in args.moments or MOMENTS:
            hits, attempts = 0, 0
            while hits < args.tries and attempts < 3 * args.tries:
                attempts += 1
                result = kill_a_worker(moment, mnist_file, root / f"w{attempts}-{hits}-"
                                       f"{MOMENTS.index(moment)}")
                hits += result["outcome"] != "missed"
                print(json.dumps(result), flush=True)
    elif args.what == "commands":
        for attempt in range(args.tries):
            for point in POINTS:
                print(json.dumps(kill_a_command(point, mnist_file, root / f"c{attempt}")),
                      flush=True)
    else:
        home = root / "tune"
        for round_, point in enumerate(kill_points(args.seed, args.kills), start=1):
            point = (args.kind, 1.0) if args.kind else point
            result = kill_a_tune(mnist_file, home, 3 * round_, point)
            result.update(rerun_tune(mnist_file, home, 3 * round_))
            result["recovered"] = recovered(result)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":  # pragma: no cover
    _by_hand(sys.argv[1:])
