"""Benchmark: the same grid on each task runner, end to end, in one run.

    MNIST_PATH=../shared/data/mnist.npz python benchmarks/runners.py [--repeats 3] [--quick]

Runs ``python flows/grid.py`` (the real command line) once per runner: threads with 1 and 2
workers, processes with 2, dask with 2 (a local cluster); ``--dask-address`` adds a run on an
existing cluster. Each run has its own result storage and data directory, so nothing comes
from a cache, and no ``PREFECT_API_URL`` (a temporary Prefect server per command, as a user's
``python flows/grid.py`` starts; one database, migrated before the first run).

Prints per runner: the command's wall time; the fan-out phase (from the line ``Grid: N
cells`` to ``Grid done``: worker start-up, TensorFlow import in each worker, training,
shut-down); the time to the first result and the seconds per trial after it (the steady
state); the sum of the trials' own training seconds; the temporary Prefect servers the run
started; the ratios against threads(1). ``--repeats R``: R rounds, medians shown.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import psutil

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RUNS = [("threads", 1), ("threads", 2), ("processes", 2), ("dask", 2)]


API_URL = os.environ.get("PREFECT_API_URL")  # only the run on an existing cluster uses it


def environment(prefect_home: Path, run_dir: Path | None = None,
                api_url: str | None = None) -> dict[str, str]:
    """No PREFECT_API_URL (a temporary server per command, as for a user) unless ``api_url``;
    one Prefect home (database) for all runs; per run, its own result storage (so nothing is
    cached) and data and reports directories."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    if api_url:
        env["PREFECT_API_URL"] = api_url
    env.update(PREFECT_HOME=str(prefect_home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if run_dir is not None:
        env.update(PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(run_dir / "storage"),
                   PIPELINE_DATA_DIR=str(run_dir / "data"),
                   PIPELINE_REPORTS_DIR=str(run_dir / "reports"))
    return env


def run_grid(runner: str, workers: int, grid_args: list[str], prefect_home: Path,
             run_dir: Path, address: str | None = None) -> dict:
    """One grid command; its timings, read from its output as it arrives."""
    env = environment(prefect_home, run_dir, API_URL if address else None)
    command = [sys.executable, "flows/grid.py", *grid_args, "--runner", runner,
               "--workers", str(workers), *(["--dask-address", address] if address else [])]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    servers: set[int] = set()
    done = threading.Event()

    def watch_servers() -> None:  # temporary Prefect servers among the command's processes
        root = psutil.Process(process.pid)
        while not done.is_set():
            try:
                for child in root.children(recursive=True):
                    try:
                        if "create_app" in " ".join(child.cmdline()):
                            servers.add(child.pid)
                    except psutil.Error:
                        pass
            except psutil.Error:
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=watch_servers, daemon=True)
    watcher.start()
    marks: dict[str, float] = {}
    lines = []
    for line in process.stdout:
        lines.append(line)
        now = time.perf_counter() - started
        if line.startswith("["):  # "[k/n] config -> result": one line per finished trial
            marks.setdefault("first", now)
            marks["last"] = now
        for mark in ("Grid:", "Grid done:", "Report:"):
            if line.startswith(mark):
                marks[mark] = now
    process.wait()
    wall = time.perf_counter() - started
    done.set()
    watcher.join()
    if process.returncode != 0 or "Report:" not in marks:
        sys.exit(f"{runner}({workers}) failed:\n{''.join(lines[-40:])}")
    folder = Path(next(x for x in lines if x.startswith("Report:")).split(":", 1)[1].strip())
    trials = pd.read_parquet(folder / "trials.parquet")
    if trials["cached"].any() or (trials["status"] != "completed").any():
        shown = trials[["units", "dropout", "cached", "status", "error"]].to_string()
        sys.exit(f"{runner}({workers}): expected every trial trained now:\n{shown}")
    return {
        "runner": "dask(address)" if address else f"{runner}({workers})",
        "wall": wall,
        "fan_out": marks["Grid done:"] - marks["Grid:"],
        "first": marks["first"] - marks["Grid:"],
        "per_trial": (marks["last"] - marks["first"]) / max(1, len(trials) - 1),
        "train_sum": float(trials["train_seconds"].sum()),
        "servers": len(servers),
        "trials": len(trials),
        "test_accuracy": tuple(trials["test_accuracy"].round(4)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("MNIST_PATH"),
                        help="Keras-format mnist.npz (default: $MNIST_PATH)")
    parser.add_argument("--units", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--dropout", type=float, nargs="+", default=[0.0, 0.3])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-samples", type=int, default=15000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--dask-address", metavar="tcp://HOST:PORT", default=None,
                        help="also run on this existing cluster (e.g. a warm local one: "
                             "dask scheduler + dask worker --nworkers 2 --nthreads 1); "
                             "that run uses $PREFECT_API_URL (a running Prefect server)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds over all runners (the table shows medians; default 1)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 2 x 2 cells, 3000 samples, 1 epoch")
    args = parser.parse_args()
    if not args.data:
        sys.exit("set MNIST_PATH or --data to a Keras-format mnist.npz")
    if args.dask_address and not API_URL:
        sys.exit("--dask-address: set PREFECT_API_URL to a running Prefect server (an existing "
                 "cluster outlives each command's temporary server)")
    if args.quick:
        args.units, args.dropout, args.train_samples, args.epochs = [32, 64], [0.0, 0.3], 3000, 1
    grid_args = ["--data", str(Path(args.data).resolve()),
                 "--units", *map(str, args.units), "--dropout", *map(str, args.dropout),
                 "--batch-size", str(args.batch_size), "--train-samples",
                 str(args.train_samples), "--epochs", str(args.epochs)]
    cells = len(args.units) * len(args.dropout)
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores, python "
          f"{platform.python_version()}")
    print(f"grid: {cells} cells (units {args.units} x dropout {args.dropout}), batch "
          f"{args.batch_size}, {args.epochs} epochs, {args.train_samples} training images; "
          "every trial trained (fresh result storage per run)")
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="runner-bench-") as tmp:
        prefect_home = Path(tmp) / "prefect"
        subprocess.run([sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"],
                       env=environment(prefect_home), check=True, capture_output=True)
        runs = [(runner, workers, None) for runner, workers in RUNS]
        if args.dask_address:
            runs.append(("dask", 1, args.dask_address))
        for repeat in range(args.repeats):
            for runner, workers, address in runs:
                load = os.getloadavg()[0]
                run_dir = Path(tmp) / f"{repeat}-{runner}-{workers}-{bool(address)}"
                row = run_grid(runner, workers, grid_args, prefect_home, run_dir, address)
                print(f"  {row['runner']:<13} done in {row['wall']:.1f}s (1-min load average "
                      f"before: {load:.2f}, after: {os.getloadavg()[0]:.2f})", flush=True)
                results.setdefault(row["runner"], []).append(row)
    rows = [{key: (statistics.median(r[key] for r in runs_of) if key not in (
                "runner", "test_accuracy") else runs_of[0][key]) for key in runs_of[0]}
            for runs_of in results.values()]
    base = rows[0]
    print()
    if args.repeats > 1:
        print(f"medians of {args.repeats} rounds:")
    print(f"{'runner':<13} {'wall s':>7} {'ratio':>6} {'fan-out s':>9} {'ratio':>6} "
          f"{'1st trial s':>11} {'then s/trial':>12} {'ratio':>6} {'sum train s':>11} "
          f"{'servers':>7}")
    for row in rows:
        print(f"{row['runner']:<13} {row['wall']:>7.1f} {base['wall'] / row['wall']:>5.2f}x "
              f"{row['fan_out']:>9.1f} {base['fan_out'] / row['fan_out']:>5.2f}x "
              f"{row['first']:>11.1f} {row['per_trial']:>12.2f} "
              f"{base['per_trial'] / row['per_trial']:>5.2f}x "
              f"{row['train_sum']:>11.1f} {row['servers']:>7g}")
    same = all(r["test_accuracy"] == base["test_accuracy"]
               for runs_of in results.values() for r in runs_of)
    print("\nratio = threads(1) time / this runner's time (> 1: faster). fan-out: from 'Grid:' "
          "to 'Grid done' (worker start-up, TensorFlow import per worker, training, cluster "
          "shut-down); 1st trial: until the first result; then s/trial: from the first result to "
          "the last, per remaining trial (the steady state a long search runs at); sum train s: "
          "the trials' own training seconds, added up.")
    print(f"Test accuracies identical across runners (4 decimals): {'yes' if same else 'no'}")
    if not same:
        for runs_of in results.values():
            for r in runs_of:
                print(f"  {r['runner']:<13} {r['test_accuracy']}")


if __name__ == "__main__":
    main()
