"""Benchmark: the same 20-trial grid on the embedded default and on the team stack, side by
side, and the team stack's idle memory per service.

    MNIST_PATH=../shared/data/mnist.npz python benchmarks/team.py [--team-env FILE]

Starts the team stack (``scripts/up.sh --team``) in a temporary folder on free ports and stops
it at the end (``--team-env .prefect-local/team/team.env``: use a running one instead). Then
runs ``python flows/grid.py`` (the real command line) three ways, each on a fresh result
storage (every trial trained):

* ``embedded, processes(2)``: no ``PREFECT_API_URL`` (a temporary Prefect server on SQLite,
  started by the command), OS file locks, 2 worker processes started by the run;
* ``embedded, dask(2)``: the same with a local Dask cluster of 2 processes started by the run;
* ``team, dask(address)``: ``team.env`` (the Prefect server on PostgreSQL, Redis locks) and
  the stack's 2 warm Dask workers.

Prints per run: the wall time; the fan-out (``Grid:`` to ``Grid done``); the time to the first
result; the trials' own training seconds, summed; and the per-trial overhead, (fan-out x 2
workers - training seconds) / trials: what a trial costs besides its training (scheduling,
Prefect's API calls, locks, result storage, worker start-up shared out). Memory: private memory
(Private_Clean + Private_Dirty of /proc/PID/smaps_rollup, not RSS: shared libraries are not
counted) of each service with its child processes, idle before the runs and idle after them
(the Dask workers then hold TensorFlow and the data).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from tasks.settings import read_env_file  # noqa: E402

UNITS = ["16", "32", "64", "128", "256"]
DROPOUT = ["0", "0.1", "0.3", "0.5"]


def free_port_pair() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_stack(folder: Path) -> tuple[dict[str, str], float]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(MNIST_TEAM_DIR=str(folder), MNIST_TEAM_PG_PORT=str(free_port()),
               MNIST_TEAM_REDIS_PORT=str(free_port()), MNIST_TEAM_PREFECT_PORT=str(free_port()),
               MNIST_TEAM_DASK_PORT=str(free_port_pair()), TF_CPP_MIN_LOG_LEVEL="3")
    started = time.perf_counter()
    up = subprocess.run([str(PROJECT_ROOT / "scripts" / "up.sh"), "--team"], cwd=PROJECT_ROOT,
                        env=env, capture_output=True, text=True)
    if up.returncode != 0:
        sys.exit(f"scripts/up.sh --team failed:\n{up.stdout[-2000:]}{up.stderr[-2000:]}")
    return env, time.perf_counter() - started


def private_bytes(pid: int) -> int:
    """Private_Clean + Private_Dirty of one process (0 once it has gone)."""
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                name, _, rest = line.partition(":")
                if name in ("Private_Clean", "Private_Dirty"):
                    total += int(rest.split()[0]) * 1024
    except OSError:
        return 0
    return total


def service_memory(team_dir: Path) -> dict[str, tuple[int, int]]:
    """Service -> (processes, private bytes), each service with its child processes."""
    roots: dict[str, int] = {}
    recorded = team_dir / "postgres-dir"  # where team-up.sh put PostgreSQL's data
    pg_root = Path(recorded.read_text().strip()) if recorded.exists() else team_dir / "postgres"
    pg_pid = pg_root / "data" / "postmaster.pid"
    if pg_pid.exists():
        roots["postgresql"] = int(pg_pid.read_text().split()[0])
    names = {"redis": "redis", "server": "prefect server", "dask-scheduler": "dask scheduler",
             "worker": "prefect process worker"}
    for pidfile in sorted((team_dir / "run").glob("*.pid")):
        name = pidfile.stem
        roots[names.get(name, name)] = int(pidfile.read_text())
    memory = {}
    for name, pid in roots.items():
        try:
            family = [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            continue
        memory[name] = (len(family), sum(private_bytes(p) for p in family))
    return memory


def run_grid(label: str, env: dict[str, str], args: list[str]) -> dict:
    command = [sys.executable, "flows/grid.py", *args]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    marks: dict[str, float] = {}
    lines = []
    for line in process.stdout:
        lines.append(line)
        now = time.perf_counter() - started
        if line.startswith("["):
            marks.setdefault("first", now)
        for mark in ("Grid:", "Grid done:"):
            if line.startswith(mark):
                marks[mark] = now
    process.wait()
    wall = time.perf_counter() - started
    report = [x for x in lines if x.startswith("Report:")]
    if process.returncode != 0 or not report:
        sys.exit(f"{label} failed:\n{''.join(lines[-40:])}")
    trials = pd.read_parquet(Path(report[0].split(":", 1)[1].strip()) / "trials.parquet")
    if trials["cached"].any() or (trials["status"] != "completed").any():
        sys.exit(f"{label}: expected every trial trained now")
    fan_out = marks["Grid done:"] - marks["Grid:"]
    train = float(trials["train_seconds"].sum())
    return {"run": label, "wall s": wall, "fan-out s": fan_out,
            "1st result s": marks["first"] - marks["Grid:"], "train s (sum)": train,
            "overhead s/trial": (fan_out * 2 - train) / len(trials), "trials": len(trials),
            "accuracies": tuple(trials.sort_values("trial_key")["test_accuracy"].round(4))}


def mib(value: int) -> str:
    return f"{value / 2**20:7.1f}"


def show_memory(title: str, memory: dict[str, tuple[int, int]]) -> None:
    print(f"\n{title}: private memory (Private_Clean + Private_Dirty), MiB")
    for name, (processes, size) in memory.items():
        print(f"  {name:24s} {mib(size)}  ({processes} process{'es' if processes > 1 else ''})")
    print(f"  {'total':24s} {mib(sum(size for _, size in memory.values()))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("MNIST_PATH"),
                        help="Keras-format mnist.npz (default: $MNIST_PATH)")
    parser.add_argument("--team-env", type=Path, default=None,
                        help="a running stack's team.env (default: start one, stop it after)")
    parser.add_argument("--train-samples", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()
    if not args.data:
        sys.exit("set MNIST_PATH or --data to a Keras-format mnist.npz")
    work = Path(tempfile.mkdtemp(prefix="bench-team-"))
    work.chmod(0o755)
    own_stack = args.team_env is None
    stack_env = None
    try:
        if own_stack:
            stack_env, up_seconds = start_stack(work / "team")
            team_env_file = work / "team" / "team.env"
            print(f"team stack started in {up_seconds:.0f} s (scripts/up.sh --team)")
        else:
            team_env_file = args.team_env
        team = read_env_file(team_env_file)
        team_dir = team_env_file.parent
        time.sleep(10)  # let the services settle
        print(f"load average before the runs: {os.getloadavg()[0]:.1f} "
              "(other work on the machine slows the runs it overlaps)")
        show_memory("idle, before any run", service_memory(team_dir))

        grid = ["--data", args.data, "--units", *UNITS, "--dropout", *DROPOUT,
                "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
                "--train-samples", str(args.train_samples)]
        base = {k: v for k, v in os.environ.items()
                if k != "PREFECT_API_URL" and not k.startswith("PIPELINE_")}
        base.update(TF_CPP_MIN_LOG_LEVEL="3", PREFECT_SERVER_ANALYTICS_ENABLED="false",
                    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120")
        runs = []
        home = work / "embedded-home"  # one Prefect home (SQLite), migrated by the first run
        for label, runner in [("embedded, processes(2)", ["--runner", "processes"]),
                              ("embedded, dask(2)", ["--runner", "dask"])]:
            folder = work / label.replace(", ", "-").replace("(", "").replace(")", "")
            env = {**base, "PREFECT_HOME": str(home),
                   "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(folder / "storage"),
                   "PIPELINE_DATA_DIR": str(folder / "data"),
                   "PIPELINE_REPORTS_DIR": str(folder / "reports")}
            runs.append(run_grid(label, env, [*grid, *runner, "--workers", "2"]))
            print(f"{label}: {runs[-1]['wall s']:.1f} s (load average after: "
                  f"{os.getloadavg()[0]:.1f})")
        folder = Path(team["PREFECT_RESULTS_LOCAL_STORAGE_PATH"]).parent / "bench"
        env = {**base, **team, "PREFECT_HOME": str(work / "team-client-home"),
               "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(folder / f"storage-{time.time():.0f}"),
               "PIPELINE_REPORTS_DIR": str(work / "team-reports")}
        runs.append(run_grid("team, dask(address)", env,
                             [*grid, "--runner", "dask", "--dask-address",
                              team["MNIST_DASK_ADDRESS"]]))
        print(f"team: {runs[-1]['wall s']:.1f} s (load average after: "
              f"{os.getloadavg()[0]:.1f})")
        time.sleep(10)
        show_memory("idle, after the runs", service_memory(team_dir))

        print(f"\n{len(UNITS) * len(DROPOUT)}-trial grid (units {' '.join(UNITS)} x dropout "
              f"{' '.join(DROPOUT)}), {args.train_samples} training images, {args.epochs} "
              f"epoch(s), batch {args.batch_size}; {platform.node()}, {os.cpu_count()} cores")
        table = pd.DataFrame(runs).set_index("run")
        same = table["accuracies"].nunique() == 1
        print(table.drop(columns="accuracies").round(2).to_string())
        print(f"test accuracies identical across the three runs: {same}")
    finally:
        if own_stack and stack_env is not None:
            subprocess.run([str(PROJECT_ROOT / "scripts" / "down.sh"), "--team"],
                           cwd=PROJECT_ROOT, env=stack_env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
