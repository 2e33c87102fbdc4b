"""Benchmark: the memory of each process while a real grid trains, with the training splits
copied into every worker process (the old way) and mapped from the processed files (the new
way), side by side in one run.

    MNIST_PATH=../shared/data/mnist.npz python benchmarks/memory.py [--ways copied mapped]
        [--units 256 512] [--dropout 0 0.5] [--epochs 1] [--workers 2] [--interval 1]

Per way, the real command line ``flows/grid.py --dropout 0 0.5 --units 256 512 --epochs 1
--runner processes --workers 2`` (its ``main``, run by this script: see below) with its own
data directory, result storage and reports directory, so every trial trains; both ways share
one temporary PREFECT_HOME (its database is migrated once). Every ``--interval`` seconds the
script reads ``/proc/PID/smaps_rollup`` of the command (the parent), of its worker processes
and of Prefect's temporary server, and at the end prints each one's peaks:

* USS = Private_Clean + Private_Dirty: the memory only this process holds (what a process
  adds to the machine; a file page mapped by one process alone counts here too);
* PSS: its private pages plus its share of the pages it shares with others;
* RSS: every resident page it maps, shared or not;
* anon: its anonymous memory (heap, TensorFlow's tensors), which no other process shares;

its median USS over the run (``USS½``); and in how many of its samples it had the split
files mapped (``maps``: the copied way maps them only while it reads them). A file page counts
in a process's USS while that process alone maps it: the first worker to read the splits shows
them in its USS until the second maps them too, so its peak USS can exceed its median by the
size of the splits. Then the trials of the ways are compared:
data fingerprint, trial keys, metrics and saved weights must be bit-identical.

How a way is chosen: the command runs as ``python benchmarks/memory.py --as-grid ...``, which
reads ``MEMORY_BENCH_SPLITS`` (set by this benchmark only) and, for ``copied``, makes
:func:`tasks.data.splits.read_split` copy (its ``copy`` parameter) before calling the grid's
``main``. Worker processes are started with ``spawn`` and import this script as their main
module, so they read the same variable and get the same reader.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

SWITCH = "MEMORY_BENCH_SPLITS"  # read by this benchmark only: copied | mapped
WAYS = ("copied", "mapped")
FIELDS = ("Rss", "Pss", "Private_Clean", "Private_Dirty", "Anonymous")
METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss",
           "test_accuracy")


def use_splits(way: str) -> None:
    """Make this process read the splits the given way (``mapped``: the pipeline's own)."""
    if way not in WAYS:
        raise SystemExit(f"{SWITCH}={way!r}: allowed {', '.join(WAYS)}")
    if way == "copied":
        import tasks.data.splits as mnist

        if not isinstance(mnist.read_split, functools.partial):
            mnist.read_split = functools.partial(mnist.read_split, copy=True)


if SWITCH in os.environ:  # the grid command and its spawned workers (module doc)
    use_splits(os.environ[SWITCH])


# --------------------------------------------------------------------------------------------
# Sampling /proc
# --------------------------------------------------------------------------------------------
def smaps_rollup(pid: int) -> dict[str, int] | None:
    """The fields of ``/proc/PID/smaps_rollup`` we need, in bytes; None once it has gone."""
    values = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                name, _, rest = line.partition(":")
                if name in FIELDS:
                    values[name] = int(rest.split()[0]) * 1024  # kB
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    values["Uss"] = values["Private_Clean"] + values["Private_Dirty"]
    return values


def maps_splits(pid: int) -> bool:
    """True if the process has a processed split file (``*.arrow``) mapped."""
    try:
        with open(f"/proc/{pid}/maps") as handle:
            return any(line.rstrip().endswith(".arrow") for line in handle)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False


def role(process) -> str:
    import psutil

    try:
        command = " ".join(process.cmdline())
    except psutil.Error:
        return "gone"
    if "resource_tracker" in command:
        return "tracker"
    if "spawn_main" in command or "--multiprocessing-fork" in command:
        return "worker"
    if "create_app" in command or "uvicorn" in command or "prefect" in command:
        return "server"
    return "other"


class Sampler(threading.Thread):
    """Peaks of every process under ``root`` (itself included), sampled every ``interval``."""

    def __init__(self, root: int, interval: float):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peaks: dict[int, dict] = {}
        self.worker_sums: list[int] = []  # USS of all workers together, per sample
        self.done = threading.Event()

    def sample(self) -> None:
        import psutil

        try:
            top = psutil.Process(self.root)
            processes = [top, *top.children(recursive=True)]
        except psutil.Error:
            return
        workers_uss = 0
        for process in processes:
            peak = self.peaks.get(process.pid)
            if peak is None:
                kind = "parent" if process.pid == self.root else role(process)
                peak = self.peaks[process.pid] = {"role": kind, "maps": 0, "samples": 0,
                                                  "uss": [], **dict.fromkeys((*FIELDS, "Uss"), 0)}
            values = smaps_rollup(process.pid)
            if values is None:
                continue
            peak["samples"] += 1
            for name, value in values.items():
                peak[name] = max(peak[name], value)
            peak["uss"].append(values["Uss"])
            peak["maps"] += maps_splits(process.pid)
            if peak["role"] == "worker":
                workers_uss += values["Uss"]
        self.worker_sums.append(workers_uss)

    def run(self) -> None:
        while not self.done.is_set():
            started = time.perf_counter()
            self.sample()
            self.done.wait(max(0.0, self.interval - (time.perf_counter() - started)))


# --------------------------------------------------------------------------------------------
# One way
# --------------------------------------------------------------------------------------------
def environment(way: str, prefect_home: Path, run_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "PIPELINE_"))}  # nothing carried over
    env.update(PREFECT_HOME=str(prefect_home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(run_dir / "storage"),
               PIPELINE_DATA_DIR=str(run_dir / "data"),
               PIPELINE_REPORTS_DIR=str(run_dir / "reports"), PYTHONUNBUFFERED="1",
               **{SWITCH: way})
    return env


def run_way(way: str, grid_args: list[str], prefect_home: Path, run_dir: Path,
            interval: float) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--as-grid", *grid_args]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=environment(way, prefect_home,
                                                                          run_dir),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = Sampler(process.pid, interval)
    sampler.start()
    lines = []
    for line in process.stdout:
        lines.append(line)
        print(f"  [{way}] {line}", end="", flush=True)
    process.wait()
    sampler.done.set()
    sampler.join()
    if process.returncode != 0:
        sys.exit(f"{way}: the grid failed (exit status {process.returncode})")
    report = next(x for x in lines if x.startswith("Report:")).split(":", 1)[1].strip()
    return {"way": way, "seconds": time.perf_counter() - started, "peaks": sampler.peaks,
            "worker_sum": max(sampler.worker_sums, default=0), "report": Path(report)}


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------
def mib(value: int) -> str:
    return f"{value / 2**20:7.0f}"


def show(runs: list[dict]) -> None:
    print()
    print("Peak memory per process, MiB (1 GB = 954 MiB; smaps_rollup every "
          f"{ARGS.interval:g} s)")
    print(f"{'way':8} {'process':8} {'pid':>7} {'USS':>7} {'USS½':>7} {'PSS':>7} {'RSS':>7} "
          f"{'anon':>7} {'maps':>9}")
    order = {"parent": 0, "worker": 1, "server": 2, "tracker": 3, "other": 4, "gone": 5}
    for run in runs:
        rows = sorted(run["peaks"].items(), key=lambda item: (order[item[1]["role"]], item[0]))
        for pid, peak in rows:
            if not peak["samples"] or peak["role"] == "tracker":
                continue
            print(f"{run['way']:8} {peak['role']:8} {pid:>7} {mib(peak['Uss'])} "
                  f"{mib(int(statistics.median(peak['uss'])))} "
                  f"{mib(peak['Pss'])} {mib(peak['Rss'])} {mib(peak['Anonymous'])} "
                  f"{peak['maps']:>4}/{peak['samples']:<4}")
        workers = [p for p in run["peaks"].values() if p["role"] == "worker" and p["samples"]]
        if workers:
            print(f"{run['way']:8} {'workers':8} {'max':>7} {mib(max(p['Uss'] for p in workers))} "
                  f"{mib(max(int(statistics.median(p['uss'])) for p in workers))} "
                  f"{mib(max(p['Pss'] for p in workers))} "
                  f"{mib(max(p['Rss'] for p in workers))} "
                  f"{mib(max(p['Anonymous'] for p in workers))}   (all workers' USS at once: "
                  f"{run['worker_sum'] / 2**20:.0f} MiB; run {run['seconds']:.0f} s)")
    if len(runs) == 2:
        old, new = ([max(p[f] for p in r["peaks"].values() if p["role"] == "worker")
                     for f in ("Uss", "Pss", "Rss")] for r in runs)
        print("worker peak, " + ", ".join(
            f"{name} {a / 2**20:.0f} -> {b / 2**20:.0f} MiB ({(b - a) / 2**20:+.0f})"
            for name, a, b in zip(("USS", "PSS", "RSS"), old, new, strict=True)))


def compare(runs: list[dict]) -> bool:
    """True if every way trained the same trials to bit-identical metrics and weights."""
    import numpy as np
    import pandas as pd

    tables = [pd.read_parquet(run["report"] / "trials.parquet")
              .sort_values(["units", "dropout"]).reset_index(drop=True) for run in runs]
    first, ok = tables[0], True
    for run, table in zip(runs[1:], tables[1:], strict=True):
        same = {
            "data fingerprint": first["data_fingerprint"].equals(table["data_fingerprint"]),
            "trial keys": first["trial_key"].equals(table["trial_key"]),
            "metrics": all(np.array_equal(first[m].to_numpy(), table[m].to_numpy())
                           for m in METRICS),
            "status": bool((first["status"] == "completed").all()
                           and (table["status"] == "completed").all()),
        }
        if "history" in first:  # not a column of trials.parquet today
            same["history"] = list(map(str, first["history"])) == list(map(str, table["history"]))
        weights = True
        for a, b in zip(first["weights_path"], table["weights_path"], strict=True):
            with np.load(a) as wa, np.load(b) as wb:
                weights &= wa.files == wb.files and all(
                    wa[k].dtype == wb[k].dtype and wa[k].tobytes() == wb[k].tobytes()
                    for k in wa.files)
        same["weights"] = weights
        print(f"{runs[0]['way']} vs {run['way']}, {len(table)} trials: " + ", ".join(
            f"{name} {'identical' if value else 'DIFFERENT'}" for name, value in same.items()))
        ok &= all(same.values())
    accuracy = statistics.fmean(first["test_accuracy"])
    print(f"mean test accuracy {accuracy:.4f}")
    return ok


def main() -> int:
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("MNIST_PATH"),
                        help="Keras-format mnist.npz (default: $MNIST_PATH)")
    parser.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS))
    parser.add_argument("--units", nargs="+", default=["256", "512"])
    parser.add_argument("--dropout", nargs="+", default=["0", "0.5"])
    parser.add_argument("--epochs", default="1")
    parser.add_argument("--workers", default="2")
    parser.add_argument("--train-samples", default=None, help="(default: all 60000)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    ARGS = args = parser.parse_args()
    if not args.data:
        sys.exit("set MNIST_PATH or --data to a Keras-format mnist.npz")
    grid_args = ["--data", str(Path(args.data).resolve()), "--dropout", *args.dropout,
                 "--units", *args.units, "--epochs", args.epochs, "--runner", "processes",
                 "--workers", args.workers,
                 *(["--train-samples", args.train_samples] if args.train_samples else [])]
    print("grid: flows/grid.py " + " ".join(grid_args[2:]))
    with tempfile.TemporaryDirectory(prefix="memory-bench-") as tmp:
        runs = [run_way(way, grid_args, Path(tmp, "prefect"), Path(tmp, way), args.interval)
                for way in args.ways]
        show(runs)
        ok = compare(runs) if len(runs) > 1 else True
    return 0 if ok else 1


ARGS = argparse.Namespace(interval=1.0)

if __name__ == "__main__":
    if sys.argv[1:2] == ["--as-grid"]:  # the grid command of one way (module doc)
        from flows.grid import main as grid_main
        from tasks.cli import run_cli

        sys.exit(run_cli(grid_main, sys.argv[2:]))
    sys.exit(main())
