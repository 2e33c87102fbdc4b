"""The team stack, for real: ``scripts/up.sh --team`` in a temporary folder (PostgreSQL, Redis,
the Prefect server on PostgreSQL, a Dask scheduler and 2 Dask worker processes, the process
work pool and worker), then runs against it as a team would make them:

a. a deployment run and a command-line grid over the same cells at the same time, both on the
   Dask workers: each cell trained once across both (Redis locks);
b. two tunes of one study at once on the Optuna storage in PostgreSQL: every trial finished
   once, none left running;
c. a Dask worker killed with ``kill -9`` mid-run: the run completes, the killed worker's trial
   trains again (after its Redis lease expires);
d. the Prefect server restarted mid-run (``scripts/up.sh --team`` starts it again): the run
   survives (Prefect's client retries while the server is away) and completes.

``scripts/down.sh --team`` at the end, whatever happened. Skipped, with the reason, where
PostgreSQL or Redis are missing and cannot be installed (no apt-get), or the ``team`` extra is
not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from conftest import PROJECT_ROOT, synthetic_mnist, write_npz

from tasks.settings import read_env_file

pytestmark = [pytest.mark.team, pytest.mark.slow]

UP = [str(PROJECT_ROOT / "scripts" / "up.sh"), "--team"]
DOWN = [str(PROJECT_ROOT / "scripts" / "down.sh"), "--team"]


def why_not() -> str | None:
    """Why the stack cannot start here (None: it can)."""
    import importlib.util

    missing = [m for m in ("prefect_redis", "psycopg") if importlib.util.find_spec(m) is None]
    if missing:
        return f"team stack: {', '.join(missing)} not installed (pip install -e '.[team]')"
    have_pg = any(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    have_redis = shutil.which("redis-server") is not None
    if have_pg and have_redis:
        return None
    if shutil.which("apt-get") is None:
        return ("team stack: PostgreSQL / redis-server not installed and no apt-get to install "
                "them")
    if os.geteuid() != 0 and subprocess.run(["sudo", "-n", "true"],
                                            capture_output=True).returncode != 0:
        return "team stack: PostgreSQL / redis-server not installed; installing needs root"
    return None


def free_ports(count: int) -> list[int]:
    """``count`` free TCP ports on 127.0.0.1; the last two consecutive (Dask's scheduler and
    its dashboard)."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        wanted = [port] if len(ports) < count - 2 else [port, port + 1]
        if all(_free(p) for p in wanted) and not set(wanted) & set(ports):
            ports.extend(wanted)
    return ports[:count]


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class Stack:
    folder: Path
    env: dict[str, str]       # the environment up.sh ran with
    team: dict[str, str]      # team.env

    @property
    def dask(self) -> str:
        return self.team["MNIST_DASK_ADDRESS"]

    def client_env(self, home: Path) -> dict[str, str]:
        """A client machine: team.env over this environment, a Prefect home of its own."""
        home.mkdir(parents=True, exist_ok=True)
        env = {**self.env, **self.team, "PREFECT_HOME": str(home)}
        return env

    def pid(self, name: str) -> int:
        return int((self.folder / "run" / f"{name}.pid").read_text())

    def redis(self):
        import redis

        secret = (self.folder / "secret").read_text().strip()
        return redis.Redis(host="127.0.0.1", port=int(self.env["MNIST_TEAM_REDIS_PORT"]),
                           password=secret)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    reason = why_not()
    if reason:
        pytest.skip(reason)
    # PostgreSQL runs as the `postgres` user when started as root: a folder it can reach
    folder = Path(tempfile.mkdtemp(prefix="mnist-team-")) / "team"
    folder.parent.chmod(0o755)
    pg, redis_port, prefect_port, dask_port, _ = free_ports(5)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(MNIST_TEAM_DIR=str(folder), MNIST_TEAM_PG_PORT=str(pg),
               MNIST_TEAM_REDIS_PORT=str(redis_port), MNIST_TEAM_PREFECT_PORT=str(prefect_port),
               MNIST_TEAM_DASK_PORT=str(dask_port), MNIST_TEAM_DASK_WORKERS="2",
               PREFECT_WORKER_QUERY_SECONDS="2", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=str(PROJECT_ROOT))
    started = time.monotonic()
    try:
        up = subprocess.run(UP, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-3000:]
        print(f"\nteam stack up in {time.monotonic() - started:.0f} s")
        team_env = folder / "team.env"
        assert team_env.stat().st_mode & 0o777 == 0o600
        assert (folder / "secret").stat().st_mode & 0o777 == 0o600
        yield Stack(folder, env, read_env_file(team_env))
    finally:
        down = subprocess.run(DOWN, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
        print(down.stdout)
        shutil.rmtree(folder.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def mnist_big(tmp_path_factory) -> Path:
    """A synthetic MNIST with room for --train-samples 4000 (trials of a few seconds)."""
    return write_npz(tmp_path_factory.mktemp("mnist-big") / "mnist.npz",
                     synthetic_mnist(n_train=4000, n_test=10000, seed=1))


def grid_command(mnist: Path, reports: Path, stack: Stack, cells: list[str]) -> list[str]:
    return [sys.executable, "flows/grid.py", "--data", str(mnist), "--reports-dir", str(reports),
            *cells, "--runner", "dask", "--dask-address", stack.dask]


def report_table(reports: Path) -> pd.DataFrame:
    [folder] = [p for p in reports.iterdir() if not p.name.startswith(".")]
    return pd.read_parquet(folder / "trials.parquet")


def trainings_per_cell(*tables: pd.DataFrame) -> dict[str, int]:
    trained = pd.concat(tables).groupby("trial_key")["cached"].apply(lambda c: int((~c).sum()))
    return trained.to_dict()


def test_the_stack_is_loopback_only_and_asks_for_the_secret(stack):
    team = stack.team
    for name in ("PREFECT_API_URL", "PIPELINE_LOCKS", "PIPELINE_OPTUNA_STORAGE",
                 "MNIST_DASK_ADDRESS"):
        assert "127.0.0.1" in team[name], name
    secret = (stack.folder / "secret").read_text().strip()
    assert len(secret) >= 32 and secret in team["PIPELINE_LOCKS"]
    assert team["PIPELINE_OPTUNA_STORAGE"].startswith("postgresql+psycopg://")
    import redis

    with pytest.raises(redis.AuthenticationError):  # no password, no Redis
        redis.Redis(host="127.0.0.1", port=int(stack.env["MNIST_TEAM_REDIS_PORT"])).ping()
    assert stack.redis().ping()
    import httpx

    api = stack.team["PREFECT_API_URL"]
    assert httpx.post(f"{api}/flows/count", timeout=10).status_code == 401  # no password
    user, _, password = stack.team["PREFECT_API_AUTH_STRING"].partition(":")
    assert httpx.post(f"{api}/flows/count", auth=(user, password), timeout=10).status_code == 200
    # idempotent: a second up.sh starts nothing new
    pids = {name: stack.pid(name) for name in ("server", "redis", "dask-scheduler", "worker")}
    again = subprocess.run(UP, cwd=PROJECT_ROOT, env=stack.env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "postgres: already running" in again.stdout
    assert {name: stack.pid(name) for name in pids} == pids


def test_a_deployment_run_and_a_cli_grid_train_each_cell_once(stack, mnist_big, tmp_path):
    env = stack.client_env(tmp_path / "client")
    units, dropout = [24, 40, 56], [0.0, 0.2]
    space = {"units": units, "dropout": dropout, "batch_size": [32], "epochs": 2}
    run = {"data": str(mnist_big), "train_samples": 3000,
           "reports_dir": str(tmp_path / "deployment")}
    fan_out = {"runner": "dask", "dask_address": stack.dask}
    locks_before = stack.redis().info("commandstats").get("cmdstat_set", {}).get("calls", 0)
    deployment = subprocess.Popen(
        ["prefect", "deployment", "run", "grid-search/mnist", "--param",
         f"space={json.dumps(space)}", "--param", f"run={json.dumps(run)}", "--param",
         f"fan_out={json.dumps(fan_out)}", "--watch", "--watch-timeout", "480"],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cli = subprocess.run(
        grid_command(mnist_big, tmp_path / "cli", stack,
                     ["--units", *map(str, units), "--dropout", *map(str, dropout),
                      "--batch-size", "32", "--epochs", "2", "--train-samples", "3000"]),
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=480)
    deployed = deployment.communicate(timeout=480)[0]
    assert cli.returncode == 0, cli.stdout[-2000:] + cli.stderr[-3000:]
    assert deployment.returncode == 0, deployed[-3000:]
    assert "COMPLETED" in deployed.upper()
    tables = [report_table(tmp_path / "deployment"), report_table(tmp_path / "cli")]
    for table in tables:
        assert len(table) == 6 and (table["status"] == "completed").all()
    trained = trainings_per_cell(*tables)
    print(f"\n(a) trainings per cell across both runs: {trained}; "
          f"deployment trained {int((~tables[0]['cached']).sum())}, "
          f"CLI trained {int((~tables[1]['cached']).sum())}")
    assert len(trained) == 6 and set(trained.values()) == {1}, trained
    # the locks were Redis': one SET (the lock taken) per trial run at least
    locks = stack.redis().info("commandstats")["cmdstat_set"]["calls"] - locks_before
    assert locks >= 6, locks
    columns = ["trial_key", "test_accuracy"]
    a, b = (t[columns].sort_values("trial_key").reset_index(drop=True) for t in tables)
    pd.testing.assert_frame_equal(a, b)


def test_two_tunes_of_one_study_on_postgresql(stack, mnist_file, tmp_path):
    import optuna
    from optuna.trial import TrialState

    from tasks.search.tune.heartbeats import HEARTBEAT_ATTR

    storage = stack.team["PIPELINE_OPTUNA_STORAGE"]
    command = [sys.executable, "flows/tune.py", "--data", str(mnist_file), "--trials", "3",
               "--study-name", "team-two-tunes", "--epochs", "1", "--no-warm-start",
               "--units", "choice:8,12,16,24", "--dropout", "choice:0,0.1,0.2",
               "--batch-size", "choice:50,100", "--learning-rate", "choice:0.001,0.01",
               "--activation", "choice:relu", "--runner", "dask", "--dask-address", stack.dask]
    tunes = [subprocess.Popen([*command, "--reports-dir", str(tmp_path / f"reports{i}")],
                              cwd=PROJECT_ROOT, env=stack.client_env(tmp_path / f"machine{i}"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in (1, 2)]
    outputs = [tune.communicate(timeout=480) for tune in tunes]
    for tune, (out, err) in zip(tunes, outputs, strict=True):
        assert tune.returncode == 0, out[-2000:] + err[-3000:]
        assert "Tune done" in out, out[-2000:]
    study = optuna.load_study(study_name="team-two-tunes", storage=storage)
    trials = study.get_trials(deepcopy=False)
    states = [t.state.name for t in trials]
    print(f"\n(b) two tunes of --trials 3 each: {len(trials)} trials in the study, "
          f"states {sorted(set(states))}, numbers {sorted(t.number for t in trials)}")
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len({t.number for t in trials}) == len(trials)
    own = [t for t in trials if not t.user_attrs.get("imported")]
    assert len(own) == 6 and all(t.state == TrialState.COMPLETE for t in own), states
    # each trial was held with heartbeats on PostgreSQL
    assert all(t.system_attrs.get(HEARTBEAT_ATTR) for t in own)


def dask_worker_processes(stack: Stack) -> list:
    """The Dask worker processes (the nannies' children) of the stack's worker machines."""
    import psutil

    workers = []
    for i in (1, 2):
        nanny = psutil.Process(stack.pid(f"dask-worker-{i}"))
        workers += nanny.children(recursive=True)
    return workers


def test_a_killed_dask_worker_trial_is_trained_again(stack, mnist_big, tmp_path):
    import psutil

    env = stack.client_env(tmp_path / "client")
    cells = ["--units", "64", "96", "128", "--dropout", "0", "0.3", "--batch-size", "16",
             "--epochs", "3", "--train-samples", "4000"]
    started = time.time()
    process = subprocess.Popen(grid_command(mnist_big, tmp_path / "reports", stack, cells),
                               cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    lines, killed, killed_at = [], None, None
    for line in process.stdout:
        lines.append(line)
        if killed is None and line.startswith("[1/6]"):
            busy = max(dask_worker_processes(stack), key=lambda p: p.cpu_percent(interval=0.5))
            killed, killed_at = busy.pid, time.monotonic()
            os.kill(killed, signal.SIGKILL)
    err = process.stderr.read()
    assert process.wait(timeout=60) == 0, "".join(lines)[-2000:] + err[-3000:]
    after_kill = time.monotonic() - killed_at
    assert killed is not None and not psutil.pid_exists(killed)
    table = report_table(tmp_path / "reports")
    assert len(table) == 6 and (table["status"] == "completed").all()
    assert int((~table["cached"]).sum()) == 6  # all trained, the killed one's too
    restarted = [p for p in (stack.folder / "logs").glob("dask-worker-*.log")
                 if "Restarting worker" in p.read_text()]
    assert restarted, "no nanny restarted a worker"
    runs = killed_trial_runs(stack, started)
    print(f"\n(c) worker {killed} killed after the first result; run completed "
          f"{after_kill:.0f} s later; {int((~table['cached']).sum())} of 6 trained; "
          f"trials that ran twice: {runs}")
    assert runs, "no trial ran again after the kill"


def killed_trial_runs(stack: Stack, since: float) -> list[str]:
    """Names of training task runs started after ``since`` that entered Running more than
    once (a killed worker's trial, run again)."""
    import asyncio
    import datetime

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterStartTime
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    async def read():
        after = datetime.datetime.fromtimestamp(since, datetime.UTC)
        async with get_client() as client:
            runs = await client.read_task_runs(task_run_filter=TaskRunFilter(
                start_time=TaskRunFilterStartTime(after_=after)))
            twice = []
            for run in runs:
                if not run.name.startswith("train "):
                    continue
                states = await client.read_task_run_states(run.id)
                if sum(s.type.value == "RUNNING" for s in states) > 1:
                    twice.append(run.name)
            return twice

    with temporary_settings(updates={PREFECT_API_URL: stack.team["PREFECT_API_URL"],
                                     PREFECT_API_AUTH_STRING: stack.team[
                                         "PREFECT_API_AUTH_STRING"]}):
        return asyncio.run(read())


def test_a_prefect_server_restart_mid_run(stack, mnist_big, tmp_path):
    """The server stopped after the first trial and started again by ``scripts/up.sh
    --team``: the run carries on (Prefect's client retries a lost connection, with backoff,
    for about 4 minutes: PREFECT_CLIENT_MAX_RETRIES in team.env) and completes."""
    import psutil

    env = stack.client_env(tmp_path / "client")
    cells = ["--units", "24", "40", "56", "--dropout", "0", "0.2", "--batch-size", "32",
             "--epochs", "2", "--train-samples", "4000"]
    process = subprocess.Popen(grid_command(mnist_big, tmp_path / "reports", stack, cells),
                               cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    lines, down_for = [], None
    for line in process.stdout:
        lines.append(line)
        if down_for is None and line.startswith("[1/6]"):
            server = stack.pid("server")
            os.killpg(server, signal.SIGTERM)
            psutil.wait_procs([psutil.Process(server)], timeout=60)
            stopped = time.monotonic()
            up = subprocess.run(UP, cwd=PROJECT_ROOT, env=stack.env, capture_output=True,
                                text=True, timeout=300)
            assert up.returncode == 0, up.stderr[-3000:]
            assert stack.pid("server") != server
            down_for = time.monotonic() - stopped
    err = process.stderr.read()
    out = "".join(lines)
    assert down_for is not None, out[-2000:]
    print(f"\n(d) server restarted mid-run (away {down_for:.0f} s, up.sh included): "
          f"exit {process.wait(timeout=60)}; {out.strip().splitlines()[-2]}")
    assert process.returncode == 0, out[-2000:] + err[-3000:]
    table = report_table(tmp_path / "reports")
    assert len(table) == 6 and (table["status"] == "completed").all()


HOLDER = """
import sys, time
from tasks.trial.locks import redis_lease_lock_manager
manager = redis_lease_lock_manager(sys.argv[1], lease=float(sys.argv[2]))
assert manager.acquire_lock("trial-lease-test", "killed holder")
print("held", flush=True)
time.sleep(600)
"""


def test_redis_locks_are_leases_renewed_while_held_and_freed_when_the_holder_dies(stack):
    from tasks.trial.locks import redis_lease_lock_manager

    url, lease = stack.team["PIPELINE_LOCKS"], 2.0
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, url, str(lease)], cwd=PROJECT_ROOT,
                              env=stack.client_env(Path(stack.folder) / "lease-test"),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        waiting = redis_lease_lock_manager(url, lease=lease)
        # renewed by its live holder: still held after more than two leases
        assert not waiting.acquire_lock("trial-lease-test", "waiting run", acquire_timeout=5)
        os.kill(holder.pid, signal.SIGKILL)
        killed = time.monotonic()
        assert waiting.acquire_lock("trial-lease-test", "waiting run", acquire_timeout=30)
        took = time.monotonic() - killed
        assert took <= lease + 1.5, took  # free once the lease ran out, not for ever
        waiting.release_lock("trial-lease-test", "waiting run")
        assert not waiting.is_locked("trial-lease-test")
    finally:
        holder.kill()
        holder.wait()
