"""Benchmark: the pace of the best-of-N study's search trials, on 1 and on 2 workers.

    python benchmarks/study.py [--data PATH] [--trials 24] [--epochs 2]

Trains the first ``--trials`` configs of the default study's own pool (the random space, seed
0, search protocol: no per-epoch metrics pass, last epoch scored) for ``--epochs`` epochs
each, twice: in this process with every core (1 worker), and in 2 worker processes with one
TensorFlow thread each pulling from one queue, costliest first (what ``--runner auto`` does
for a large search). Each trial's time is split into a fixed part (set-up, graph tracing when
its shape is new to the worker, final evaluation) and a steady per-epoch part, to give the
time of a 10-epoch trial. The last line is

    study minutes (default, this machine): <minutes>

the estimated wall time of ``python flows/random_search.py --study``: 400 trials at the
2-worker pace, plus Prefect's start-up and per-trial bookkeeping (``--startup-seconds`` and
``--overhead-seconds``, measured on the real run; see docs/results.md).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.config import SplitSpec, TrialConfig  # noqa: E402
from tasks.search.best_of_n import StudyPlan, study_configs  # noqa: E402
from tasks.search.space import DEFAULT_RANDOM_SPACE  # noqa: E402

TRIAL_EPOCHS = 10  # the exercise's trial length


def time_trial(config: TrialConfig, splits) -> dict[str, float]:
    """Train once; fixed = total - epochs x steady (steady = the last epoch's time)."""
    from tasks.engine.train import train_model

    marks: list[float] = []
    started = time.perf_counter()
    out = train_model(config, splits, on_epoch=lambda row: marks.append(time.perf_counter()))
    total = time.perf_counter() - started
    steady = marks[-1] - marks[-2] if len(marks) > 1 else total
    fixed = max(0.0, total - config.epochs * steady)
    return {"total": total, "steady": steady, "fixed": fixed,
            "trial10": fixed + TRIAL_EPOCHS * steady, "accuracy": out.metrics["val_accuracy"]}


def _worker(handle, queue, results, threads: int) -> None:
    from tasks.data.splits import load_splits
    from tasks.search.workers import init_worker

    init_worker(threads)
    splits = load_splits(handle)
    while True:
        item = queue.get()
        if item is None:
            return
        index, config = item
        results.put((index, os.getpid(), time_trial(config, splits)))


def run_workers(handle, configs: list[TrialConfig], workers: int) -> tuple[float, list]:
    """Train ``configs`` on ``workers`` processes (1 TensorFlow thread each), costliest first;
    returns the wall time from the first trial's start and the per-trial timings."""
    context = multiprocessing.get_context("spawn")
    queue, results = context.Queue(), context.Queue()
    order = sorted(range(len(configs)), key=lambda i: -configs[i].training_cost())
    procs = [context.Process(target=_worker, args=(handle, queue, results, 1))
             for _ in range(workers)]
    for proc in procs:
        proc.start()
    # warm-up: each worker imports TensorFlow and reads the data before the clock starts
    warm = TrialConfig(units=8, batch_size=1000, epochs=1, epoch_metrics=False,
                       checkpoint=False)
    for _ in procs:
        queue.put((-1, warm))
    for _ in procs:
        results.get()
    started = time.perf_counter()
    for index in order:
        queue.put((index, configs[index]))
    timings = [results.get() for _ in configs]
    wall = time.perf_counter() - started
    for _ in procs:
        queue.put(None)
    for proc in procs:
        proc.join()
    return wall, timings


def _levers_worker(handle, configs, results) -> None:
    from tasks.data.splits import load_splits
    from tasks.engine import backend_compiled
    from tasks.search.workers import init_worker

    init_worker(1)
    splits = load_splits(handle)
    time_trial(TrialConfig(units=8, batch_size=1000, epochs=1), splits)  # warm-up
    rows = {"as the study runs them": [], "with the per-epoch metrics pass": [],
            "without graph reuse": []}
    for config in configs:
        backend_compiled.clear_trainers()
        time_trial(config, splits)  # trace this shape once, as a worker's first trial does
        rows["as the study runs them"].append(time_trial(config, splits)["trial10"])
        metrics = config.model_copy(update={"epoch_metrics": True})
        rows["with the per-epoch metrics pass"].append(time_trial(metrics, splits)["trial10"])
        backend_compiled.clear_trainers()
        rows["without graph reuse"].append(time_trial(config, splits)["trial10"])
    results.put(rows)


def print_levers(handle, configs: list[TrialConfig]) -> None:
    """Each lever's effect on the same configs, one worker with one TensorFlow thread (as
    in the study), in a fresh process."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    proc = context.Process(target=_levers_worker, args=(handle, configs, results))
    proc.start()
    rows = results.get()
    proc.join()
    base = statistics.mean(rows["as the study runs them"])
    print(f"levers, {len(configs)} configs, 1 worker thread, mean 10-epoch trial seconds:")
    for label, values in rows.items():
        mean = statistics.mean(values)
        print(f"  {label:<34} {mean:7.2f} s  ({mean / base:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("MNIST_PATH"),
                        help="Keras-format mnist.npz (default: $MNIST_PATH)")
    parser.add_argument("--trials", type=int, default=24,
                        help="configs of the default pool to time (default: 24)")
    parser.add_argument("--epochs", type=int, default=2,
                        help="epochs per timed trial; 10-epoch times are extrapolated from "
                             "the fixed and steady parts (default: 2)")
    parser.add_argument("--startup-seconds", type=float, default=25.0,
                        help="Prefect's temporary server, the data and the workers' start "
                             "(default: 25, measured on the project's machine)")
    parser.add_argument("--levers", type=int, default=8, metavar="K",
                        help="also time K configs on one worker thread as the study runs "
                             "them, with the per-epoch metrics pass, and without graph reuse "
                             "(0: skip; default: 8)")
    parser.add_argument("--overhead-seconds", type=float, default=0.3,
                        help="Prefect's bookkeeping per trial, on the critical path "
                             "(default: 0.3, measured on the project's machine)")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the steady epoch time needs two epochs)")

    from tasks.data.prepare import prepare_data
    from tasks.data.splits import load_splits
    from tasks.search.workers import available_cores

    handle, _ = prepare_data(args.data, SplitSpec())
    plan = StudyPlan()
    (pool,) = study_configs(plan, DEFAULT_RANDOM_SPACE, seed=0).values()
    configs = [c.model_copy(update={"epochs": args.epochs}) for c in pool[:args.trials]]
    print(f"machine: {platform.machine()}, {available_cores()} cores, python "
          f"{platform.python_version()}")
    print(f"{len(configs)} configs of the default pool ({len(pool)} trials), {args.epochs} "
          f"epochs each, search protocol; 10-epoch trial = fixed + 10 x steady epoch")

    # 1 worker: this process, TensorFlow's default threads (every core)
    from tasks.search.workers import init_worker

    init_worker(None)
    splits = load_splits(handle)
    time_trial(TrialConfig(units=8, batch_size=1000, epochs=1), splits)  # warm-up
    started = time.perf_counter()
    one = [time_trial(c, splits) for c in sorted(configs, key=lambda c: -c.training_cost())]
    wall_one = time.perf_counter() - started
    # 2 workers: processes with one thread each
    wall_two, two = run_workers(handle, configs, workers=2)

    if args.levers:
        print_levers(handle, configs[:args.levers])
    mean_one = statistics.mean(t["trial10"] for t in one)
    mean_two = statistics.mean(t["trial10"] for _, _, t in two)
    print(f"{'workers':>8} {'wall s':>8} {'mean fixed s':>13} {'mean steady s/ep':>17} "
          f"{'10-epoch trial s':>17} {'trials/min (10 ep)':>19}")
    for label, wall, rows, mean, workers in (
            ("1", wall_one, one, mean_one, 1),
            ("2", wall_two, [t for _, _, t in two], mean_two, 2)):
        pace = 60.0 * workers / mean
        print(f"{label:>8} {wall:8.1f} {statistics.mean(r['fixed'] for r in rows):13.2f} "
              f"{statistics.mean(r['steady'] for r in rows):17.3f} {mean:17.2f} {pace:19.2f}")
    print(f"mean seconds per 10-epoch search trial: 1 worker {mean_one:.2f}, "
          f"2 workers {mean_two:.2f} each ({2 * mean_one / mean_two:.2f}x the throughput)")
    trials = plan.effective_pool_size(DEFAULT_RANDOM_SPACE.size)
    training = trials * (mean_two + args.overhead_seconds) / 2
    minutes = (args.startup_seconds + training) / 60
    print(f"default study: {trials} trials x ({mean_two:.2f} s + {args.overhead_seconds:.2f} s "
          f"bookkeeping) / 2 workers + {args.startup_seconds:.0f} s start-up")
    print(f"study minutes (default, this machine): {minutes:.1f}")


if __name__ == "__main__":
    main()
