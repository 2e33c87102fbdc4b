"""End to end with real components: `prefect server start` (its own PREFECT_HOME, a free port),
the process work pool, `prefect deploy --all` from prefect.yaml, a worker, and
`prefect deployment run 'grid-search/mnist'` with a tiny 2 x 1 grid on synthetic MNIST. The
run's artifacts are read back through the Prefect client; everything is stopped at the end
and no process of the stack may be left behind.

About 1.5 minutes on 2 cores; `-m "not slow"` leaves it out.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
POOL = "local-process"  # the work pool named in prefect.yaml
GRID = "grid-search/mnist"
DEPLOYMENTS = {"baseline/mnist", "grid-search/mnist", "random-search/mnist",
               "random-search/best-of-n", "exercise/mnist", "tune/mnist", "predict/inbox"}

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """The processes of a local Prefect stack, each in its own process group, with logs."""

    def __init__(self, home: Path, port: int):
        self.home, self.port = home, port
        self.api_url = f"http://127.0.0.1:{port}/api"
        self.logs = home / "logs"
        self.logs.mkdir(parents=True)
        self.processes: dict[str, subprocess.Popen] = {}
        # Explicit environment: nothing from the test process's Prefect settings leaks in.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_HOME=str(home / "prefect"),
            PREFECT_API_URL=self.api_url,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_SERVER_UI_ENABLED="false",  # the API is all this test needs
            PREFECT_WORKER_QUERY_SECONDS="1",  # the worker polls every second
            PREFECT_CLI_COLORS="false",
            PREFECT_CLI_WRAP_LINES="false",
            PREFECT_TASKS_DEFAULT_RETRY_DELAY_SECONDS="0",
            TF_CPP_MIN_LOG_LEVEL="3",
        )
        env.pop("PIPELINE_FAULTS", None)
        self.env = env

    def prefect(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        """A `prefect` command against this stack's server, run in the repository root."""
        return subprocess.run([sys.executable, "-m", "prefect", *args], cwd=PROJECT_ROOT,
                              env=self.env, capture_output=True, text=True, timeout=timeout)

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen([sys.executable, "-m", "prefect", *args], cwd=PROJECT_ROOT,
                                   env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.processes[name] = process
        return process

    def log(self, name: str, lines: int = 60) -> str:
        path = self.logs / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return f"--- {name} log (last {lines} lines) ---\n" + "\n".join(
            text.splitlines()[-lines:])

    def wait_healthy(self, timeout: float = 150) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.processes["server"].poll() is not None:
                pytest.fail("the Prefect server exited\n" + self.log("server"))
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        pytest.fail(f"the Prefect server was not healthy after {timeout} s\n"
                    + self.log("server"))

    def ours(self) -> list[psutil.Process]:
        """Every live process of this stack: the ones started here, their descendants, and
        anything else running with this stack's PREFECT_HOME (a flow run in its own session)."""
        found: dict[int, psutil.Process] = {}
        for process in self.processes.values():
            found.update((p.pid, p) for p in _tree(process.pid))
        for p in psutil.process_iter():
            try:
                if p.environ().get("PREFECT_HOME") == self.env["PREFECT_HOME"]:
                    found[p.pid] = p
            except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
                pass
        return [p for p in found.values() if _alive(p)]

    def stop(self, timeout: float = 20) -> list[psutil.Process]:
        """Stop the stack, the worker before the server: SIGTERM to each process group and
        every descendant, SIGKILL what is left after ``timeout``. Returns what survived even
        that (should be nothing)."""
        for name in reversed(list(self.processes)):
            process = self.processes[name]
            victims = _tree(process.pid)
            with _suppress_gone():  # one SIGTERM each: a second one makes Prefect kill -9
                os.killpg(process.pid, signal.SIGTERM)
            for p in victims:  # descendants in process groups of their own (flow runs)
                with _suppress_gone():
                    if os.getpgid(p.pid) != process.pid:
                        p.terminate()
            _, alive = psutil.wait_procs(victims, timeout=timeout)
            for p in alive:
                with _suppress_gone():
                    p.kill()
            psutil.wait_procs(alive, timeout=10)
            with _suppress_gone():
                process.wait(timeout=10)
        stray = self.ours()  # e.g. a flow run in its own session
        for p in stray:
            with _suppress_gone():
                p.kill()
        psutil.wait_procs(stray, timeout=10)
        return self.ours()


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class _suppress_gone:
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        return exc_type is not None and issubclass(
            exc_type, (ProcessLookupError, psutil.NoSuchProcess, subprocess.TimeoutExpired))


@pytest.fixture
def stack(tmp_path):
    stack = Stack(tmp_path / "stack", free_port())
    try:
        yield stack
    finally:
        left = stack.stop()
        assert not left, f"processes left behind: {[(p.pid, p.cmdline()) for p in left]}"


def api_client(stack: Stack):
    """A synchronous Prefect client pointed at the stack's server."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    class _Client:
        def __enter__(self):
            self._settings = temporary_settings({PREFECT_API_URL: stack.api_url})
            self._settings.__enter__()
            self._client = get_client(sync_client=True)
            return self._client.__enter__()

        def __exit__(self, *exc):
            try:
                self._client.__exit__(*exc)
            finally:
                self._settings.__exit__(*exc)

    return _Client()


def wait_for_final_state(stack: Stack, flow_run_id: str, timeout: float = 300):
    with api_client(stack) as client:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                return run
            if stack.processes["worker"].poll() is not None:
                pytest.fail("the worker exited\n" + stack.log("worker"))
            time.sleep(1)
    pytest.fail(f"flow run {flow_run_id} not finished after {timeout} s "
                f"(state {run.state.name if run.state else None})\n" + stack.log("worker"))


def test_deploy_run_and_read_back_artifacts(stack, mnist_file, tmp_path):
    started = time.monotonic()
    steps: list[str] = []

    def step(name: str) -> None:
        steps.append(f"{name} {time.monotonic() - started:.0f}s")

    # a real server, the work pool, a worker, every deployment of prefect.yaml
    stack.start("server", "server", "start", "--host", "127.0.0.1", "--port", str(stack.port))
    stack.wait_healthy()
    step("server up")
    created = stack.prefect("work-pool", "create", POOL, "--type", "process")
    assert created.returncode == 0, created.stdout + created.stderr
    # the worker starts now: it comes up while the deployments are made
    stack.start("worker", "worker", "start", "--pool", POOL, "--limit", "1")
    deployed = stack.prefect("--no-prompt", "deploy", "--all",
                             "--prefect-file", str(PROJECT_ROOT / "prefect.yaml"))
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    step("deployed")

    with api_client(stack) as client:
        flows = {flow.id: flow.name for flow in client.read_flows()}
        names = {f"{flows[d.flow_id]}/{d.name}" for d in client.read_deployments()}
        grid = client.read_deployment_by_name(GRID)
        inbox = client.read_deployment_by_name("predict/inbox")
    assert names == DEPLOYMENTS
    # the inbox: the newest model on each new file of data/inbox, every 5 minutes once on
    [every] = inbox.schedules
    assert every.active is False and inbox.parameters == {"inbox": "data/inbox"}
    # the schedule from prefect.yaml is on the server, declared but off
    [schedule] = grid.schedules
    assert schedule.schedule.cron == "0 3 * * 6"
    assert schedule.active is False
    assert grid.enforce_parameter_schema is True
    assert grid.global_concurrency_limit is not None
    assert grid.global_concurrency_limit.limit == 1
    # the worker will run the flows from this checkout
    assert grid.pull_steps == [{"prefect.deployments.steps.set_working_directory":
                                {"directory": str(PROJECT_ROOT)}}]

    # a parameter the flow's schema forbids is rejected by the server: no run is created
    rejected = stack.prefect("deployment", "run", GRID,
                             "--param", 'space={"dropout": [0.5], "epochs": 0}')
    assert rejected.returncode != 0
    assert "Validation failed for field 'space.epochs'" in rejected.stdout + rejected.stderr
    rejected = stack.prefect("deployment", "run", GRID, "--param", 'run={"backend": "gpu"}')
    assert rejected.returncode != 0
    assert "'gpu' is not one of ['compiled', 'keras']" in rejected.stdout + rejected.stderr
    rejected = stack.prefect("deployment", "run", GRID, "--param", 'fan_out={"workers": 0}')
    assert rejected.returncode != 0
    assert "Validation failed for field 'fan_out.workers'" in rejected.stdout + rejected.stderr
    rejected = stack.prefect("deployment", "run", GRID, "--param", "epochs=0")
    assert rejected.returncode != 0
    assert "Validation failed for field 'epochs'" in rejected.stdout + rejected.stderr

    # a tiny grid run: 2 x 1 cells, the synthetic MNIST file, and 1 epoch through the flow's
    # top-level `--param epochs=1` (it replaces the space's 10)
    space = {"dropout": [0.0, 0.5], "units": [16], "batch_size": [100], "epochs": 10}
    run = stack.prefect(
        "deployment", "run", GRID,
        "--param", "epochs=1",
        "--param", f"space={json.dumps(space)}",
        # the shared run options, as one group (the fields left out keep their defaults)
        "--param", "run=" + json.dumps({"train_samples": 600, "data": str(mnist_file),
                                        "reports_dir": str(tmp_path / "reports"),
                                        "data_dir": str(tmp_path / "data")}),
        "--flow-run-name", "e2e-grid",
    )
    assert run.returncode == 0, run.stdout + run.stderr
    step("run created")
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", run.stdout).group(1)

    finished = wait_for_final_state(stack, flow_run_id)
    step("run finished")
    assert finished.state.is_completed(), (
        f"{finished.state.name}: {finished.state.message}\n" + stack.log("worker", 120))

    # the run's artifacts, read back through the API
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with api_client(stack) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[finished.id])))
    by_key = {a.key: a for a in artifacts}
    assert {"grid-results", "grid-results-summary", "grid-results-report",
            "grid-progress"} <= set(by_key), sorted(by_key)
    table = by_key["grid-results"]
    assert table.type == "table"
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert len(rows) == 2
    # (hyperparameters may be shown as text, "0.5", so compare values)
    assert sorted((int(row["units"]), float(row["dropout"])) for row in rows) == [
        (16, 0.0), (16, 0.5)]
    for row in rows:
        assert row["status"] == "completed"
        assert int(row["epochs"]) == 1 and int(row["batch_size"]) == 100
        assert 0.0 <= float(row["val_accuracy"]) <= 1.0
        assert 0.0 <= float(row["test_accuracy"]) <= 1.0
    assert "2 cells: 2 trained now" in by_key["grid-results-summary"].data
    assert float(by_key["grid-progress"].data) == 100.0

    # the report went to the run's reports_dir, not into the repository
    [folder] = (tmp_path / "reports").glob("grid-*")
    assert (folder / "report.md").is_file()
    assert str(folder) in by_key["grid-results-report"].data
    step("checked")
    print("end to end:", ", ".join(steps))
