"""The team stack, for real (PostgreSQL, Redis, the Prefect server on PostgreSQL, a Dask
scheduler and 2 Dask worker processes, the process work pool and worker), used as a team would
use it, and each of its services taken away mid-run:

a. a deployment run and a command-line grid over the same cells at the same time, both on the
   Dask workers: each cell trained once across both (Redis locks);
b. two tunes of one study at once on the Optuna storage in PostgreSQL: every trial finished
   once, none left running;
c. a Dask worker killed with ``kill -9`` while it trains a trial: the run completes, that trial
   trains again (after its Redis lease expires);
d. the Prefect server restarted mid-run, and a Dask worker restarted while it is away: the run
   survives and completes;
e. Redis restarted (away at least 7 s) in the middle of two grids over the same cells: no trial
   fails, each cell is trained once;
f. Redis away longer than the outage bound (``PIPELINE_OUTAGE`` lowered to 3 s): the run ends
   in one line, and its rerun resumes with no finished trial trained again;
g. PostgreSQL restarted in the middle of a grid and a tune: each completes, or ends in one line
   and its rerun resumes; no trial left running in the Optuna storage;
h. the Prefect server away longer than the clients' retry budget (lowered to 2 retries): one
   line, and the rerun resumes;
i. the Dask worker that holds a trial's lease stopped (SIGSTOP) for longer than the lease (3 s
   for the test), then continued, in the middle of two grids over the same cells: no trial
   fails, each cell is trained once;
k. a run stalled past its lease until another run took the key: it stops its training, and
   its retry takes the other run's result (the cell trained once);
j. every port the stack's own processes listen on is on ``MNIST_TEAM_HOST``; a service whose
   process was just killed is started again by ``scripts/up.sh --team``.

The stack: the one whose ``team.env`` answers (``$MNIST_TEAM_ENV``, else the default
``.prefect-local/team/team.env``; ``.ci/run`` starts it), left up and healthy afterwards (the
restart tests start what they stopped with ``scripts/up.sh --team``); where none answers, a
stack of its own in a temporary folder on free ports, stopped at the end. The tests never
install anything: they skip, with the reason, where PostgreSQL, Redis or the ``team`` extra
are missing. Every trial's seed is this session's own, so a long-lived stack's cache never
holds them already.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd
import pytest
from conftest import PROJECT_ROOT, synthetic_mnist, write_npz
from holds import Hold, speed_env, train_samples, wait_for

from tasks.settings import read_env_file

pytestmark = [pytest.mark.team, pytest.mark.slow]

UP = [str(PROJECT_ROOT / "scripts" / "up.sh"), "--team"]
DOWN = [str(PROJECT_ROOT / "scripts" / "down.sh"), "--team"]
#: The running stack to use: its team.env (default: the one `scripts/up.sh --team` writes).
TEAM_ENV = "MNIST_TEAM_ENV"
DEFAULT_TEAM_ENV = PROJECT_ROOT / ".prefect-local" / "team" / "team.env"
#: Trial seeds of this session (one per test, below): keys no earlier session trained.
SESSION_SEED = (int(time.time()) % 100_000) * 100


def seed(offset: int) -> str:
    return str(SESSION_SEED + offset)


def why_not() -> str | None:
    """Why no stack can be started here (None: it can). Nothing is installed by the tests."""
    import importlib.util

    missing = [m for m in ("prefect_redis", "psycopg") if importlib.util.find_spec(m) is None]
    if missing:
        return f"team stack: {', '.join(missing)} not installed (pip install -e '.[team]')"
    if not any(Path("/usr/lib/postgresql").glob("*/bin/postgres")):
        return "team stack: PostgreSQL not installed (apt-get install postgresql)"
    if shutil.which("redis-server") is None:
        return "team stack: redis-server not installed (apt-get install redis-server)"
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


# --------------------------------------------------------------------------------------------
# The stack
# --------------------------------------------------------------------------------------------
@dataclass
class Stack:
    folder: Path
    env: dict[str, str]       # the environment up.sh / down.sh run with
    team: dict[str, str]      # team.env
    own: bool = False         # started by these tests (stopped at the end)

    @property
    def dask(self) -> str:
        return self.team["MNIST_DASK_ADDRESS"]

    @property
    def host(self) -> str:
        return urlsplit(self.team["PREFECT_API_URL"]).hostname

    def client_env(self, home: Path, **settings: str) -> dict[str, str]:
        """A client machine: team.env over this environment, a Prefect home of its own, the
        variant's test settings (tests/holds.py), ``settings`` over all."""
        home.mkdir(parents=True, exist_ok=True)
        return {**self.env, **self.team, "PREFECT_HOME": str(home), **speed_env(), **settings}

    def pid(self, name: str) -> int:
        return int((self.folder / "run" / f"{name}.pid").read_text())

    def redis(self):
        import redis

        url = urlsplit(self.team["PIPELINE_LOCKS"])
        return redis.Redis(host=url.hostname, port=url.port, password=url.password,
                           socket_timeout=5, socket_connect_timeout=5)

    def leases(self) -> list[str]:
        return [key.decode() for key in self.redis().scan_iter("lock:*")]

    def up(self) -> subprocess.CompletedProcess:
        """``scripts/up.sh --team``: starts what is not running."""
        up = subprocess.run(UP, cwd=PROJECT_ROOT, env=self.env, capture_output=True, text=True,
                            timeout=600)
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-3000:]
        return up

    def down(self, *services: str) -> None:
        down = subprocess.run([*DOWN, *services], cwd=PROJECT_ROOT, env=self.env,
                              capture_output=True, text=True, timeout=300)
        assert down.returncode == 0, down.stdout + down.stderr

    def answers(self) -> str | None:
        """None if every service answers, else what does not."""
        return answers(self.team)

    def healthy(self) -> str | None:
        """None if every service answers and every process of the stack runs: the Dask
        workers (as many as it started) and the Prefect worker too; else what is wrong."""
        import psutil

        down = self.answers()
        if down:
            return down
        if not psutil.pid_exists(self.pid("worker")) or \
                psutil.Process(self.pid("worker")).status() in ("zombie", "stopped"):
            return "the Prefect worker is not running"
        expected = int(self.env.get("MNIST_TEAM_DASK_WORKERS", "2"))
        try:
            workers = len(self.dask_workers())
        except Exception as exc:
            return f"Dask workers: {exc}"
        return None if workers >= expected else f"Dask workers: {workers} of {expected}"

    def continue_all(self) -> list[int]:
        """SIGCONT to every stopped process of the stack (scripts/procs.sh counts a stopped
        process as running: up.sh would not restart it); the pids continued."""
        continued = []
        for process in stack_processes(self):
            try:
                if process.status() == "stopped":
                    process.resume()
                    continued.append(process.pid)
            except Exception:
                continue
        return continued

    def dask_workers(self) -> dict[str, dict]:
        """address -> {pid, executing: tasks running now, leases: the trial keys whose Redis
        lease this process holds} of each Dask worker."""
        from distributed import Client

        def state(dask_worker):
            locks = sys.modules.get("tasks.trial.leases")
            managers = list(locks._MANAGERS.values()) if locks is not None else []
            return {"pid": os.getpid(), "executing": len(dask_worker.state.executing),
                    "leases": [key for manager in managers for key in list(manager._leases)]}

        with Client(self.dask, timeout=30) as client:
            return client.run(state, on_error="ignore")  # a worker that just died: left out

    def back_after(self, check, since: float) -> dict[str, float]:
        """Poll ``check()`` in the background from now on; the returned dict gets "away":
        seconds from ``since`` to the first time it succeeded."""
        result: dict[str, float] = {}

        def poll():
            while True:
                try:
                    if check():
                        result["away"] = time.monotonic() - since
                        return
                except Exception:
                    pass
                time.sleep(0.1)

        threading.Thread(target=poll, daemon=True).start()
        return result


def answers(team: dict[str, str]) -> str | None:
    """None if the stack of this team.env answers (Redis, PostgreSQL, the Prefect server,
    the Dask scheduler), else what does not."""
    import httpx
    import psycopg
    import redis

    try:
        url = urlsplit(team["PIPELINE_LOCKS"])
        redis.Redis(host=url.hostname, port=url.port, password=url.password,
                    socket_timeout=5, socket_connect_timeout=5).ping()
    except Exception as exc:
        return f"Redis: {exc}"
    try:
        storage = team["PIPELINE_OPTUNA_STORAGE"].replace("postgresql+psycopg://", "postgresql://")
        psycopg.connect(storage, connect_timeout=5).close()
    except Exception as exc:
        return f"PostgreSQL: {exc}"
    try:
        user, _, password = team["PREFECT_API_AUTH_STRING"].partition(":")
        health = httpx.get(f"{team['PREFECT_API_URL']}/health", auth=(user, password),
                           timeout=10)
        health.raise_for_status()
    except Exception as exc:
        return f"Prefect server: {exc}"
    try:
        dask = urlsplit(team["MNIST_DASK_ADDRESS"])
        socket.create_connection((dask.hostname, dask.port), timeout=5).close()
    except Exception as exc:
        return f"Dask scheduler: {exc}"
    return None


def running_stack() -> Stack | None:
    """The stack whose team.env answers ($MNIST_TEAM_ENV, else the default), or None."""
    path = Path(os.environ.get(TEAM_ENV) or DEFAULT_TEAM_ENV)
    if not path.is_file():
        return None
    team = read_env_file(path)
    if answers(team) is not None:
        return None
    folder = path.parent
    ports = {name: str(urlsplit(team[key]).port) for name, key in (
        ("MNIST_TEAM_PG_PORT", "PIPELINE_OPTUNA_STORAGE"), ("MNIST_TEAM_REDIS_PORT",
         "PIPELINE_LOCKS"), ("MNIST_TEAM_PREFECT_PORT", "PREFECT_API_URL"),
        ("MNIST_TEAM_DASK_PORT", "MNIST_DASK_ADDRESS"))}
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(ports, MNIST_TEAM_DIR=str(folder), MNIST_TEAM_INSTALL="0",
               MNIST_TEAM_HOST=urlsplit(team["PREFECT_API_URL"]).hostname,
               MNIST_TEAM_DASK_WORKERS=str(len(list((folder / "run").glob("dask-worker-*.pid")))),
               TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(PROJECT_ROOT))
    return Stack(folder, env, team)


@pytest.fixture(scope="module")
def stack():
    reason = why_not()
    if reason:
        pytest.skip(reason)
    existing = running_stack()
    if existing is not None:
        print(f"\nteam stack: the running one ({existing.folder})")
        yield existing
        if existing.answers() is not None:  # a restart test failed half-way: start it again
            existing.up()
        return
    # PostgreSQL runs as the `postgres` user when started as root: a folder it can reach
    folder = Path(tempfile.mkdtemp(prefix="mnist-team-")) / "team"
    folder.parent.chmod(0o755)
    pg, redis_port, prefect_port, dask_port, _ = free_ports(5)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(MNIST_TEAM_DIR=str(folder), MNIST_TEAM_PG_PORT=str(pg),
               MNIST_TEAM_REDIS_PORT=str(redis_port), MNIST_TEAM_PREFECT_PORT=str(prefect_port),
               MNIST_TEAM_DASK_PORT=str(dask_port), MNIST_TEAM_DASK_WORKERS="2",
               MNIST_TEAM_INSTALL="0", PREFECT_WORKER_QUERY_SECONDS="2",
               TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(PROJECT_ROOT))
    started = time.monotonic()
    own = Stack(folder, env, {}, own=True)
    try:
        own.up()
        print(f"\nteam stack: its own, up in {time.monotonic() - started:.0f} s ({folder})")
        team_env = folder / "team.env"
        assert team_env.stat().st_mode & 0o777 == 0o600
        assert (folder / "secret").stat().st_mode & 0o777 == 0o600
        own.team = read_env_file(team_env)
        yield own
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


@pytest.fixture
def hold(tmp_path) -> Hold:
    """The test hold of this test's runs (give them ``**hold.env``): a trial in flight is one
    the test holds (tests/holds.py). Everything released at the test's end."""
    test_hold = Hold(tmp_path / "hold")
    try:
        yield test_hold
    finally:
        test_hold.release_all()


@pytest.fixture(autouse=True)
def heal_after_each_test(request):
    """After each test that uses the stack: its background commands ended, its holds released
    (the ``hold`` fixture), every stopped process of the stack continued (SIGCONT), and every
    service checked (the Prefect server, PostgreSQL, Redis, the Dask scheduler and workers, the
    Prefect worker); what is down is started again (``scripts/up.sh --team``). The test that
    left the stack so fails here, saying what it left; the next one starts on a healthy
    stack."""
    if "stack" not in request.fixturenames:
        yield
        return
    stack = request.getfixturevalue("stack")
    STARTED.clear()
    yield
    left = []
    for run in STARTED:
        if run.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                run.process.wait(timeout=30)
            left.append(f"ended a command still running ({' '.join(run.command[1:2])})")
    STARTED.clear()
    continued = stack.continue_all()
    if continued:
        left.append(f"continued stopped processes of the stack {continued}")
    wrong = stack.healthy()
    deadline = time.monotonic() + 30  # a killed Dask worker's nanny starts a new one in seconds
    while wrong and wrong.startswith("Dask workers") and time.monotonic() < deadline:
        time.sleep(1)
        wrong = stack.healthy()
    if wrong:
        stack.up()
        left.append(f"the stack was broken ({wrong}): started again by scripts/up.sh --team, "
                    f"now {stack.healthy() or 'healthy'}")
    if left:
        pytest.fail("this test left the stack unclean: " + "; ".join(left))


# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------
PROGRESS = re.compile(r"^\[\s*\d+(?:/\d+)?\] (?P<label>.+?) -> (?P<outcome>.+)$")
#: The background commands the running test started (ended by :func:`heal_after_each_test`).
STARTED: list[Run] = []


@dataclass
class Run:
    """A command started in the background; its stdout lines read as they come, its stderr by
    a second thread (``communicate`` would read stdout too, and take lines from the first)."""

    command: list[str]
    env: dict[str, str]
    lines: list[str] = field(default_factory=list)
    stderr: str = ""

    def __post_init__(self):
        self.process = subprocess.Popen(self.command, cwd=PROJECT_ROOT, env=self.env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, start_new_session=True)
        STARTED.append(self)
        self._errors: list[str] = []
        self._readers = [threading.Thread(target=self._read, daemon=True),
                         threading.Thread(target=self._read_errors, daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def _read_errors(self) -> None:
        self._errors.append(self.process.stderr.read())

    def wait(self, timeout: float = 600) -> int:
        self.process.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=30)
        self.stderr = "".join(self._errors)
        return self.process.returncode

    @property
    def output(self) -> str:
        return "\n".join(self.lines) + "\n" + self.stderr

    def results(self) -> dict[str, str]:
        """label -> "trained", "cached" or "failed", from the progress lines."""
        found = {}
        for line in self.lines:
            match = PROGRESS.match(line)
            if match:
                outcome = match["outcome"]
                found[match["label"]] = ("failed" if "FAILED" in outcome else
                                         "cached" if "(cached)" in outcome else "trained")
        return found

    def finished(self) -> int:
        return sum(1 for line in self.lines if PROGRESS.match(line))

    def summary(self) -> str:
        """The run's "... done: N trained, ..." line (empty if it did not get there)."""
        return next((line for line in self.lines if " done: " in line), "")


def grid_command(mnist: Path, reports: Path, stack: Stack, cells: list[str]) -> list[str]:
    return [sys.executable, "flows/grid.py", "--data", str(mnist), "--reports-dir", str(reports),
            *cells, "--runner", "dask", "--dask-address", stack.dask]


def tune_command(mnist: Path, reports: Path, stack: Stack, study: str, trials: int,
                 train_seed: str) -> list[str]:
    return [sys.executable, "flows/tune.py", "--data", str(mnist), "--trials", str(trials),
            "--study-name", study, "--epochs", "2", "--no-warm-start", "--train-seed",
            train_seed, "--units", "choice:8,12,16,24", "--dropout", "choice:0,0.1,0.2",
            "--batch-size", "choice:50,100", "--learning-rate", "choice:0.001,0.01",
            "--activation", "choice:relu", "--reports-dir", str(reports),
            "--runner", "dask", "--dask-address", stack.dask]


def report_table(reports: Path) -> pd.DataFrame:
    """The trials table of the newest run that wrote one in ``reports``."""
    tables = sorted((p for p in reports.glob("*/trials.parquet")), key=lambda p: p.stat().st_mtime)
    assert tables, f"no trials table in {reports}"
    return pd.read_parquet(tables[-1])


def trainings_per_cell(*tables: pd.DataFrame) -> dict[str, int]:
    trained = pd.concat(tables).groupby("trial_key")["cached"].apply(lambda c: int((~c).sum()))
    return trained.to_dict()


def assert_clean(run: Run) -> None:
    """Nothing but progress lines and, at most, one error line: no traceback."""
    assert "Traceback" not in run.output, run.output[-3000:]


#: What Prefect's log sender writes to stderr when it gives up on the server (a failed
#: batch: this header and the error, no newline), besides the command's own line.
LOG_SENDER = re.compile(r"--- Error logging to API ---\n(All connection attempts failed)?")


def assert_one_line(run: Run, names: str) -> str:
    """The run ended (exit 1) with one ``error:`` line that matches ``names``; returns it.
    Prefect's log sender's own complaints (:data:`LOG_SENDER`) are left aside: they are
    reported, not counted."""
    errors = re.findall(r"error: [^\n]*", LOG_SENDER.sub("\n", run.stderr))
    assert run.process.returncode == 1 and len(errors) == 1, run.output[-3000:]
    assert re.search(names, errors[0]), errors[0]
    assert_clean(run)
    return errors[0]


def assert_resumed(first: Run, rerun: Run) -> None:
    """The rerun finished every trial, and trained none that the first run had finished."""
    assert rerun.wait() == 0, rerun.output[-3000:]
    assert_clean(rerun)
    finished = {label for label, outcome in first.results().items() if outcome != "failed"}
    again = {label for label, outcome in rerun.results().items() if outcome == "trained"}
    assert not finished & again, f"trained again: {sorted(finished & again)}"
    assert "failed" not in rerun.results().values(), rerun.output[-3000:]


def running_optuna_trials(stack: Stack, study: str) -> list[int]:
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name=study, storage=stack.team[
        "PIPELINE_OPTUNA_STORAGE"]).get_trials(deepcopy=False)
    return [t.number for t in trials if t.state == TrialState.RUNNING]


def stop_service(stack: Stack, name: str) -> float:
    """Stop one service of the stack (``scripts/down.sh --team NAME``); when it stopped."""
    stack.down(name)
    return time.monotonic()


# --------------------------------------------------------------------------------------------
# j. the stack itself
# --------------------------------------------------------------------------------------------
def test_the_stack_is_loopback_only_and_asks_for_the_secret(stack):
    team = stack.team
    for name in ("PREFECT_API_URL", "PIPELINE_LOCKS", "PIPELINE_OPTUNA_STORAGE",
                 "MNIST_DASK_ADDRESS"):
        assert stack.host in team[name], name
    secret = (stack.folder / "secret").read_text().strip()
    assert len(secret) >= 32 and secret in team["PIPELINE_LOCKS"]
    assert team["PIPELINE_OPTUNA_STORAGE"].startswith("postgresql+psycopg://")
    import redis

    port = urlsplit(team["PIPELINE_LOCKS"]).port
    with pytest.raises(redis.AuthenticationError):  # no password, no Redis
        redis.Redis(host=stack.host, port=port).ping()
    assert stack.redis().ping()
    import httpx

    api = stack.team["PREFECT_API_URL"]
    assert httpx.post(f"{api}/flows/count", timeout=10).status_code == 401  # no password
    user, _, password = stack.team["PREFECT_API_AUTH_STRING"].partition(":")
    assert httpx.post(f"{api}/flows/count", auth=(user, password), timeout=10).status_code == 200
    # idempotent: a second up.sh starts nothing new
    pids = {name: stack.pid(name) for name in ("server", "redis", "dask-scheduler", "worker")}
    again = stack.up()
    assert "postgres: already running" in again.stdout
    assert {name: stack.pid(name) for name in pids} == pids


def stack_processes(stack: Stack) -> list:
    """The stack's own processes: each pid file's process and its descendants, and
    PostgreSQL's postmaster and its children."""
    import psutil

    roots = [int(p.read_text()) for p in (stack.folder / "run").glob("*.pid")]
    postgres_dir = Path((stack.folder / "postgres-dir").read_text().strip())
    roots.append(int((postgres_dir / "data" / "postmaster.pid").read_text().split()[0]))
    processes = []
    for pid in roots:
        try:
            root = psutil.Process(pid)
            processes += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return processes


def test_every_port_the_stack_opens_is_on_its_host(stack):
    """Issue: the Dask workers (started with --no-dashboard) still served HTTP on 0.0.0.0."""
    import psutil

    listening = []
    for process in stack_processes(stack):
        try:
            connections = process.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        listening += [(process.pid, process.name(), c.laddr.ip, c.laddr.port)
                      for c in connections if c.status == psutil.CONN_LISTEN]
    names = {name for _, name, _, _ in listening}
    print(f"\n(j) {len(listening)} listening sockets of {len(names)} kinds of process: "
          f"{sorted(names)}")
    assert any(port == urlsplit(stack.team["PIPELINE_LOCKS"]).port
               for *_, port in listening)  # the sockets of the stack were found
    assert len(listening) >= 8, listening  # PostgreSQL, Redis, Prefect, Dask x 2+, workers
    elsewhere = [entry for entry in listening if entry[2] != stack.host]
    assert not elsewhere, f"listening beyond {stack.host}: {elsewhere}"


def test_up_restarts_a_service_whose_process_was_just_killed(stack):
    """Issue: a second after Redis was killed, up.sh said `redis: already running` (its
    zombie's pid) and then `Redis did not answer`."""
    redis_pid = stack.pid("redis")
    os.kill(redis_pid, signal.SIGKILL)
    up = stack.up()  # at once: the killed process may still be a zombie
    assert "redis: starting" in up.stdout, up.stdout
    assert stack.pid("redis") != redis_pid and stack.redis().ping()
    assert stack.answers() is None


# --------------------------------------------------------------------------------------------
# a, b: overlapping runs
# --------------------------------------------------------------------------------------------
def test_a_deployment_run_and_a_cli_grid_train_each_cell_once(stack, mnist_big, tmp_path):
    env = stack.client_env(tmp_path / "client")
    units, dropout = [24, 40, 56], [0.0, 0.2]
    space = {"units": units, "dropout": dropout, "batch_size": [32], "epochs": 2,
             "seed": int(seed(1))}
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
                      "--batch-size", "32", "--epochs", "2", "--train-samples", "3000",
                      "--train-seed", seed(1)]),
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
    # the locks were Redis': one SET (the lease taken) per trial run at least
    locks = stack.redis().info("commandstats")["cmdstat_set"]["calls"] - locks_before
    assert locks >= 6, locks
    columns = ["trial_key", "test_accuracy"]
    a, b = (t[columns].sort_values("trial_key").reset_index(drop=True) for t in tables)
    pd.testing.assert_frame_equal(a, b)


def test_two_tunes_of_one_study_on_postgresql(stack, mnist_file, tmp_path, hold):
    """Two tunes of one study at once, each --trials 3: each counts the study's finished
    trials when it starts (docs/tune.md), so both are started, and have counted 0, before any
    trial may finish (every trial held before training until then): 6 trials complete."""
    import optuna
    from optuna.trial import TrialState

    from tasks.search.tune.heartbeats import HEARTBEAT_ATTR

    study_name = f"team-two-tunes-{seed(2)}"
    hold.arm("train")
    tunes = [Run([*tune_command(mnist_file, tmp_path / f"reports{i}", stack, study_name, 3,
                                seed(2))], stack.client_env(tmp_path / f"machine{i}",
                                                            **hold.env))
             for i in (1, 2)]
    wait_for(lambda: all(any("0 of its own finished trials" in line for line in tune.lines)
                         for tune in tunes) or any(t.process.poll() is not None for t in tunes),
             "both tunes started, each counting 0 finished trials", timeout=180, why=STARTUP)
    hold.release_all()
    for tune in tunes:
        assert tune.wait(timeout=480) == 0, tune.output[-3000:]
        assert any(line.startswith("Tune done") for line in tune.lines), tune.output[-2000:]
    study = optuna.load_study(study_name=study_name,
                              storage=stack.team["PIPELINE_OPTUNA_STORAGE"])
    trials = study.get_trials(deepcopy=False)
    states = [t.state.name for t in trials]
    print(f"\n(b) two tunes of --trials 3 each: {len(trials)} trials in the study, "
          f"states {sorted(set(states))}, numbers {sorted(t.number for t in trials)}, "
          f"repeats replaced: {sum(t.state == TrialState.FAIL for t in trials)}")
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len({t.number for t in trials}) == len(trials)
    own = [t for t in trials if not t.user_attrs.get("imported")]
    complete = [t for t in own if t.state == TrialState.COMPLETE]
    # a config one tune proposed while the other held it is failed and another asked
    # (docs/tune.md, "Repeats"): the only other state a trial may end in
    replaced = [t for t in own if t.state == TrialState.FAIL and t.user_attrs.get("repeat_of")]
    assert len(complete) == 6 and len(complete) + len(replaced) == len(own), states
    # each trial was held with heartbeats on PostgreSQL
    assert all(t.system_attrs.get(HEARTBEAT_ATTR) for t in own)


# --------------------------------------------------------------------------------------------
# c, d: a lost worker, a restarted server
# --------------------------------------------------------------------------------------------
#: The wait for a command's first trial to reach a hold may exceed the usual bound: why.
STARTUP = ("the command's start-up before its first trial: imports, the data step, the Dask "
           "client (about 15 s on an idle 2-core machine, more on a loaded one)")


def dask_pids(stack: Stack) -> set[int]:
    return {worker["pid"] for worker in stack.dask_workers().values()}


def first_result_then_held(run: Run, hold: Hold) -> dict:
    """With ``train`` armed: let the first trial that holds go, wait for its result, and
    return a second trial held before training. The run then has a result and a trial in
    flight, however fast the machine."""
    first = hold.wait("train", what="a first trial held before training", timeout=180,
                      why=STARTUP)[0]
    hold.release("train", first["key"])
    wait_for(lambda: run.finished() >= 1 or run.process.poll() is not None,
             "the first trial's result")
    assert run.process.poll() is None, run.output[-3000:]
    second = hold.wait("train", where=lambda h: h["key"] != first["key"],
                       what="a second trial held before training")[0]
    return second


def test_a_killed_dask_worker_trial_is_trained_again(stack, mnist_big, tmp_path, hold):
    """The Dask worker training a trial (held after its first epoch: it has stored nothing)
    killed with ``kill -9``: the run completes, and that trial is trained again by another
    worker once its lease (5 s for this run) expires."""
    import psutil

    # a short lease for this run (it travels with its trials): the killed worker's key is
    # free 5 s after the kill
    env = stack.client_env(tmp_path / "client", PIPELINE_LOCK_LEASE="5", **hold.env)
    cells = ["--units", "64", "96", "128", "--dropout", "0", "0.3", "--batch-size", "16",
             "--epochs", "3", "--train-samples", train_samples(4000), "--train-seed", seed(3)]
    workers = len(stack.dask_workers())
    storage = Path(stack.team["PREFECT_RESULTS_LOCAL_STORAGE_PATH"])
    started = time.time()
    hold.arm("epoch")
    run = Run(grid_command(mnist_big, tmp_path / "reports", stack, cells), env)
    held = hold.wait("epoch", what="a Dask worker training a trial", timeout=180,
                     why=STARTUP)[0]
    assert held["pid"] in dask_pids(stack), (held, dask_pids(stack))
    killed, key, killed_at, killed_time = held["pid"], held["key"], time.monotonic(), time.time()
    os.kill(killed, signal.SIGKILL)
    hold.release_all()
    finished = run.finished()
    assert run.wait() == 0, run.output[-3000:]
    assert_clean(run)
    after_kill = time.monotonic() - killed_at
    assert not psutil.pid_exists(killed) or psutil.Process(killed).status() == "zombie"
    table = report_table(tmp_path / "reports")
    assert len(table) == 6 and (table["status"] == "completed").all()
    assert int((~table["cached"]).sum()) == 6  # all trained, the killed one's too
    # the trial the killed worker was training was trained again, by another worker: its
    # result was stored after the kill
    stored = storage / f"trial-{key}"
    assert key in set(table["trial_key"]) and stored.stat().st_mtime > killed_time
    runs = killed_trial_runs(stack, started)
    print(f"\n(c) worker {killed} killed while it held {key} after an epoch ({finished} "
          f"results before); run completed {after_kill:.0f} s later; "
          f"{int((~table['cached']).sum())} of 6 trained, {key} stored "
          f"{stored.stat().st_mtime - killed_time:.0f} s after the kill; task runs that "
          f"Prefect saw enter Running twice: {runs}")
    wait_for(lambda: len(stack.dask_workers()) == workers, "the nanny's new worker")


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


def test_a_prefect_server_restart_mid_run(stack, mnist_big, tmp_path, hold):
    """Every Dask worker killed while one holds a trial after an epoch, and the server
    stopped: a new worker that its nanny starts takes the trial and trains it with no server
    (held again after an epoch while the server is away: this ended the run with
    `RuntimeError: Failed to reach API` before team.env turned Prefect's version check off: a
    new worker's first trial checked it with a new client, which does not retry a refused
    connection). ``scripts/up.sh --team`` starts the server again; the run completes (its
    client retries for about 4 minutes: PREFECT_CLIENT_MAX_RETRIES=7 in team.env)."""
    env = stack.client_env(tmp_path / "client", PIPELINE_LOCK_LEASE="5", **hold.env)
    cells = ["--units", "24", "40", "56", "--dropout", "0", "0.2", "--batch-size", "16",
             "--epochs", "6", "--train-samples", train_samples(4000), "--train-seed", seed(4)]
    hold.arm("epoch")
    run = Run(grid_command(mnist_big, tmp_path / "reports", stack, cells), env)
    hold.wait("epoch", what="a Dask worker holding a trial after an epoch", timeout=180,
              why=STARTUP)
    # every worker killed, the server stopped: the trial in flight goes to a new worker
    before = dask_pids(stack)
    for pid in before:
        os.kill(pid, signal.SIGKILL)
    stopped = stop_service(stack, "server")
    try:
        again = hold.wait(
            "epoch", where=lambda h: h["pid"] not in before,
            what="a new Dask worker training a trial while the server is away", timeout=120,
            why="a nanny starts a new worker (seconds), which takes the killed trial once its "
                "lease (5 s) expires and trains an epoch")[0]
        assert stack.answers() is not None  # the server is still away
    finally:
        hold.release_all()
        stack.up()
    away = time.monotonic() - stopped
    code = run.wait()
    print(f"\n(d) server away {away:.0f} s (up.sh included); {len(before)} worker(s) killed "
          f"meanwhile, a new one ({again['pid']}, attempt {again['attempt']}) trained "
          f"{again['key']} with no server: exit {code}; {run.summary()!r}")
    assert code == 0, run.output[-3000:]
    assert_clean(run)
    table = report_table(tmp_path / "reports")
    assert len(table) == 6 and (table["status"] == "completed").all()


def test_the_prefect_server_away_past_the_retry_budget_ends_in_one_line(stack, mnist_big,
                                                                        tmp_path, hold):
    """With the client's budget lowered to 2 retries (2 + 4 s), a server away for longer
    (stopped while the run has a result and a trial in flight, held): the run ends with one
    line; its rerun resumes, training no finished trial again."""
    env = stack.client_env(tmp_path / "client", PREFECT_CLIENT_MAX_RETRIES="2", **hold.env)
    cells = ["--units", "24", "40", "56", "--dropout", "0", "0.2", "--batch-size", "32",
             "--epochs", "2", "--train-samples", train_samples(4000), "--train-seed", seed(5)]
    command = grid_command(mnist_big, tmp_path / "reports", stack, cells)
    hold.arm("train")
    run = Run(command, env)
    first_result_then_held(run, hold)
    finished = run.finished()
    stopped = stop_service(stack, "server")
    try:
        hold.release_all()
        code = run.wait(timeout=300)  # the server stays away until the run has given up
        ended = time.monotonic() - stopped
    finally:
        stack.up()
    line = assert_one_line(run, "ConnectError|Failed to reach API|connect")
    others = len(LOG_SENDER.findall(run.stderr))
    rerun = Run(command, stack.client_env(tmp_path / "client"))
    assert_resumed(run, rerun)
    print(f"\n(h) server stopped after {finished} results: the run ended {ended:.0f} s "
          f"later, exit {code}: {line!r} (and {others} complaint(s) of Prefect's log sender "
          f"on stderr); the rerun: {rerun.summary()!r}")


# --------------------------------------------------------------------------------------------
# e, f, i: the locks' Redis away, a holder stalled
# --------------------------------------------------------------------------------------------
def two_grids(stack: Stack, mnist: Path, tmp_path: Path, cells: list[str], **settings: str):
    return [Run(grid_command(mnist, tmp_path / f"reports{i}", stack, cells),
                stack.client_env(tmp_path / f"client{i}", **settings)) for i in (1, 2)]


def test_a_redis_restart_mid_run_fails_no_trial_and_trains_each_cell_once(stack, mnist_big,
                                                                         tmp_path, hold):
    """Redis stopped while two grids over the same cells train (a trial held after an epoch,
    its lease held, the other run waiting), started again by ``scripts/up.sh --team`` at least
    7 s later: every trial waits it out (PIPELINE_OUTAGE, 120 s), and the leases come back from
    Redis' append-only file."""
    cells = ["--units", "24", "40", "--dropout", "0", "0.2", "--batch-size", "32",
             "--epochs", "6", "--train-samples", train_samples(4000), "--train-seed", seed(6)]
    hold.arm("epoch")
    runs = two_grids(stack, mnist_big, tmp_path, cells, **hold.env)
    held = hold.wait("epoch", what="a trial training, its lease held", timeout=180,
                     why=STARTUP)
    leases = stack.leases()
    stopped = stop_service(stack, "redis")
    try:
        hold.release_all()  # the trials go on, and need Redis to finish
        time.sleep(7.5)
        back = stack.back_after(stack.redis().ping, stopped)
    finally:
        stack.up()
    away = wait_for(lambda: back.get("away"), "Redis to answer")
    for run in runs:
        assert run.wait() == 0, run.output[-3000:]
        assert_clean(run)
    tables = [report_table(tmp_path / f"reports{i}") for i in (1, 2)]
    trained = trainings_per_cell(*tables)
    failed = sum(int((table["status"] != "completed").sum()) for table in tables)
    print(f"\n(e) Redis stopped with {len(leases)} lease(s) held ({len(held)} trial(s) held "
          f"after an epoch), answering again {away:.1f} s later: {failed} failed, trainings "
          f"per cell {sorted(trained.values())}")
    assert leases and failed == 0 and len(trained) == 4 and set(trained.values()) == {1}, \
        trained


def test_redis_away_past_the_outage_bound_ends_the_run_in_one_line(stack, mnist_big, tmp_path,
                                                                   hold):
    """PIPELINE_OUTAGE=3 for this run (it travels with its trials): Redis away longer (stopped
    while the run has a result and a trial in flight, held) ends the run with one line naming
    it; once Redis is back the rerun resumes."""
    cells = ["--units", "24", "40", "56", "72", "--dropout", "0", "0.2", "--batch-size", "32",
             "--epochs", "4", "--train-samples", train_samples(4000), "--train-seed", seed(7)]
    command = grid_command(mnist_big, tmp_path / "reports", stack, cells)
    hold.arm("train")
    run = Run(command, stack.client_env(tmp_path / "client", PIPELINE_OUTAGE="3", **hold.env))
    first_result_then_held(run, hold)
    finished = run.finished()
    stopped = stop_service(stack, "redis")
    try:
        hold.release_all()
        code = run.wait(timeout=300)  # Redis stays away until the run has given up
        ended = time.monotonic() - stopped
    finally:
        stack.up()
    line = assert_one_line(run, r"LockServiceDown: the trial locks' Redis .* did not answer "
                                r"for 3 s")
    rerun = Run(command, stack.client_env(tmp_path / "client"))
    assert_resumed(run, rerun)
    print(f"\n(f) Redis stopped after {finished} results: the run ended {ended:.1f} s "
          f"later, exit {code}: {line!r}; the rerun: {rerun.summary()!r}")


def test_a_worker_stalled_past_its_lease_then_continued(stack, mnist_big, tmp_path, hold):
    """The Dask worker training a trial (held after an epoch) stopped (SIGSTOP) for 8 s, past
    its 3-s lease (this run's PIPELINE_LOCK_LEASE), while another grid asks the same cells:
    when it continues its renewal finds the lease lapsed (taken again if free) or another
    run's (the trial stops and its retry takes that run's result); no trial fails, each cell
    is trained once."""
    cells = ["--units", "48", "80", "--dropout", "0", "0.2", "--batch-size", "16",
             "--epochs", "5", "--train-samples", train_samples(4000), "--train-seed", seed(8)]
    logs = {path: path.stat().st_size for path in (stack.folder / "logs").glob("dask-*.log")}
    hold.arm("epoch")
    runs = two_grids(stack, mnist_big, tmp_path, cells, PIPELINE_LOCK_LEASE="3", **hold.env)
    held = hold.wait("epoch", what="a Dask worker training a trial", timeout=180,
                     why=STARTUP)[0]
    os.kill(held["pid"], signal.SIGSTOP)
    try:
        hold.release_all()  # it goes on when continued; the other run's trials do not wait
        time.sleep(8)
    finally:
        os.kill(held["pid"], signal.SIGCONT)
    for run in runs:
        assert run.wait() == 0, run.output[-3000:]
        assert_clean(run)
    tables = [report_table(tmp_path / f"reports{i}") for i in (1, 2)]
    trained = trainings_per_cell(*tables)
    said = "".join(path.read_text()[size:] for path, size in logs.items())  # meanwhile
    print(f"\n(i) worker {held['pid']} stopped 8 s while it held {held['key']} (lease 3 s): "
          f"trainings per cell {sorted(trained.values())}; leases that lapsed and were taken "
          f"again: {said.count('had lapsed')}, lost to another run: {said.count('was lost to')}")
    assert len(trained) == 4 and set(trained.values()) == {1}, trained


def test_a_run_stalled_past_its_lease_stops_and_takes_the_result_of_the_run_that_took_it(
        stack, mnist_big, tmp_path, hold):
    """Two grids of the same cell training in their own processes (threads), with the team's
    Redis locks and a 3-s lease: the holder, held after its first epoch, stopped (SIGSTOP);
    the second run, started then, takes the lapsed lease and trains; the holder continued: its
    renewal finds the lease another's, the training stops at its next epoch (LeaseLost,
    retried), and the retry takes the other run's result from the cache. The cell is trained
    once."""
    command = [sys.executable, "flows/grid.py", "--data", str(mnist_big), "--units", "256",
               "--dropout", "0.1", "--batch-size", "16", "--epochs", "12",
               "--train-samples", train_samples(4000), "--train-seed", seed(10),
               "--runner", "threads"]

    def start(i: int, **settings: str) -> Run:
        return Run([*command, "--reports-dir", str(tmp_path / f"reports{i}")],
                   stack.client_env(tmp_path / f"client{i}", PIPELINE_LOCK_LEASE="3",
                                    **settings))

    hold.arm("epoch")
    runs = [start(1, **hold.env)]
    held = hold.wait("epoch", what="the first run's trial after an epoch", timeout=180,
                     why=STARTUP)[0]
    assert held["pid"] == runs[0].process.pid
    [lease] = stack.leases()
    holder = stack.redis().get(lease)
    os.kill(held["pid"], signal.SIGSTOP)
    try:
        hold.release_all()  # it goes on when continued
        runs.append(start(2))
        wait_for(lambda: stack.redis().get(lease) not in (None, holder),
                 "the second run taking the lapsed lease", timeout=180, why=STARTUP)
    finally:
        os.kill(held["pid"], signal.SIGCONT)
    for run in runs:
        assert run.wait() == 0, run.output[-3000:]
        assert_clean(run)
    first, second = (list(run.results().values()) for run in runs)
    log = "".join(path.read_text() for path in (tmp_path / "client1" / "logs").glob("*.log"))
    print(f"\n(k) the stalled run: {first}, the run that took its lease: {second}; "
          f"LeaseLost in the stalled run's log: {log.count('LeaseLost')}")
    assert first == ["cached"] and second == ["trained"], runs[0].output[-3000:]
    assert "was lost to another holder" in log and "LeaseLost" in log


# --------------------------------------------------------------------------------------------
# g: PostgreSQL
# --------------------------------------------------------------------------------------------
def test_postgresql_restarted_mid_grid_and_mid_tune(stack, mnist_big, tmp_path):
    """PostgreSQL (the Prefect server's database and the Optuna storage) stopped and started
    again while a grid and a tune run, each with a result and a trial in flight (held before
    training; each run trains in its own process, so neither waits for the other's held
    trials): the Prefect clients retry the server's 500s (PREFECT_CLIENT_RETRY_EXTRA_CODES=500
    in team.env), the Optuna storage's connections wait for PostgreSQL (PIPELINE_OUTAGE). Each
    run completes, or ends with one line and its rerun, started at once, resumes; no trial is
    left running in the Optuna storage (a run's own exit fails the trials it held, and a rerun
    fails those of a run whose process is gone at once)."""
    samples = train_samples(4000)
    local = ["--runner", "threads", "--workers", "1"]
    grid_cells = ["--units", "24", "40", "56", "--dropout", "0", "0.2", "--batch-size", "32",
                  "--epochs", "3", "--train-samples", samples, "--train-seed", seed(9)]
    study = f"team-pg-restart-{seed(9)}"
    commands = {
        "grid": [*grid_command(mnist_big, tmp_path / "grid", stack, grid_cells)[:-4], *local],
        "tune": [*tune_command(mnist_big, tmp_path / "tune", stack, study, 5, seed(9))[:-4],
                 "--train-samples", samples, *local],
    }
    holds = {name: Hold(tmp_path / f"hold-{name}") for name in commands}
    runs = {}
    try:
        for name, command in commands.items():
            holds[name].arm("train")
            runs[name] = Run(command, stack.client_env(tmp_path / name, **holds[name].env))
        for name, run in runs.items():
            first_result_then_held(run, holds[name])
        stopped = stop_service(stack, "postgres")
        try:
            for name in runs:
                holds[name].release_all()
            time.sleep(3)
            back = stack.back_after(lambda: answers(stack.team) is None, stopped)
        finally:
            stack.up()
    finally:
        for test_hold in holds.values():
            test_hold.release_all()
    away = wait_for(lambda: back.get("away"), "PostgreSQL to answer")
    outcomes = {}
    for name, run in runs.items():
        if run.wait() == 0:
            assert_clean(run)
            outcomes[name] = "completed"
            continue
        line = assert_one_line(run, r"\w+")  # one line, whatever PostgreSQL's error said
        rerun = Run(commands[name], stack.client_env(tmp_path / f"{name}-rerun"))  # at once
        assert_resumed(run, rerun)
        outcomes[name] = f"ended with {line!r}, rerun resumed"
    assert running_optuna_trials(stack, study) == []
    grid = report_table(tmp_path / "grid")
    assert len(grid) == 6 and (grid["status"] == "completed").all()
    print(f"\n(g) PostgreSQL stopped after a result of each run, answering again {away:.1f} s "
          f"later: {outcomes}")
