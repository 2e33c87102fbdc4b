"""Benchmark: which search gets furthest for a budget of training minutes, on the real data.

    python benchmarks/budgets.py [--data PATH] [--seeds 2] [--budget 10] [--at 2 5 10]

On the exercise's full-size protocol (60000 training images, 10 epochs, the tune's default
space), after the default best-of-N study (``python flows/random_search.py --study``: its pool
of 400 random trials must be in the cache; the benchmark refuses to start otherwise). Compared
on one cost axis, the training minutes a search spent (each trial's measured time, a trial the
cache held at its measured time, a pruned one for the epochs it trained):

- **random search**: the exact expected best over random orders of the study's 400 trials
  (:func:`tasks.search.budget.expected_best_by_budget`: no training; mean and 10th-90th
  percentile over 2000 orders);
- **TPE cold**: a tune from an empty study;
- **TPE warm**: a tune whose study first holds 50 trials of a previous random search (for
  seed s, the pool's trials 50s..50s+49: a uniform 50-trial random search); the minutes
  those 50 cost are not counted (they were spent before), and its best at any budget is at
  least theirs;
- **TPE + median pruning**: a cold tune with the median pruner.

Each tune is the product's own ``tune`` flow with ``--budget`` (2 workers, its own Optuna
storage in a temporary folder, the project's result cache: a config any earlier run trained
is not trained again and counts its measured time). Printed: the best validation accuracy
reached at each ``--at`` budget (mean +- standard deviation over the seeds, the random
search's expectation), how far it is from the best validation accuracy in the 400-trial
pool, and each tune's budget over- or under-run. A second run of the benchmark trains
nothing new for the configs already asked (the cache) and gives the same numbers.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402
from samplers import mean_std  # noqa: E402 (the other benchmark's: mean +- sd over seeds)

METHODS = {"TPE cold": ("tpe", "none", False), "TPE warm (50 random)": ("tpe", "none", True),
           "TPE + median pruning": ("tpe", "median", False)}
POOL, WARM = 400, 50


def pool_results(handle):
    """The study's 400 random trials from the cache, in their draw order."""
    from tasks.config import trial_key
    from tasks.search.space import DEFAULT_RANDOM_SPACE, sample_configs
    from tasks.trial.store import cached_results

    by_key = {r.trial_key: r for r in cached_results(handle.fingerprint, "compiled")
              if r.status == "completed"}
    keys = [trial_key(c, handle.fingerprint) for c in sample_configs(DEFAULT_RANDOM_SPACE,
                                                                     POOL, 0)]
    missing = [k for k in keys if k not in by_key]
    if missing:
        sys.exit(f"benchmarks/budgets.py: {len(missing)} of the study's {POOL} trials are not "
                 "in the cache; run `python flows/random_search.py --study` first")
    return [by_key[k] for k in keys]


def seed_warm_study(storage: str, name: str, results) -> None:
    """A study holding ``results`` as imported trials (a previous random search)."""
    import optuna

    from tasks.search.optuna_storage import IMPORTED_ATTR, OBJECTIVE, frozen_trial
    from tasks.search.tune_space import DEFAULT_TUNE_SPACE

    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.set_metric_names([OBJECTIVE])
    trials = [frozen_trial(0, r, DEFAULT_TUNE_SPACE.distributions()) for r in results]
    for trial in trials:
        trial.set_user_attr(IMPORTED_ATTR, True)
    study.add_trials(trials)


def run_tune(method: str, seed: int, budget: float, storage: str, data: str, warm_from):
    from flows.tune import tune
    from tasks.run_options import FanOut, RunOptions

    sampler, pruner, warm = METHODS[method]
    name = f"{method.split()[0].lower()}-{'warm' if warm else pruner}-{seed}"
    if warm:
        seed_warm_study(storage, name, warm_from)
    started = time.perf_counter()
    folder = Path(tune(budget=f"{budget}m", sampler=sampler, pruner=pruner,
                       sampler_seed=seed, study_name=name, storage=storage,
                       warm_start=False, run=RunOptions(data=data),
                       fan_out=FanOut(runner="processes", workers=2)))
    wall = time.perf_counter() - started
    path = pd.read_parquet(folder / "trajectory.parquet")
    trials = pd.read_parquet(folder / "trials.parquet")
    # a warm tune starts from the best of the random search it was given (spent before)
    start = max((r.val_accuracy for r in warm_from), default=float("nan")) if warm else \
        float("nan")
    return {"path": path, "wall": wall, "report": folder, "start": start,
            "trained": int((~trials["cached"]).sum()), "spent": path["minutes"].iloc[-1]}


def reached(run: dict, minutes: float) -> float:
    """The best validation accuracy a tune held after ``minutes`` of its own training (a warm
    tune: at least the best of the trials it started from)."""
    from tasks.search.budget import best_at

    own = best_at(run["path"], minutes)
    start = run.get("start", float("nan"))
    if start != start:  # NaN: a cold tune
        return own
    return start if own != own else max(own, start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("MNIST_PATH"),
                        help="Keras-format mnist.npz (default: $MNIST_PATH)")
    parser.add_argument("--seeds", type=int, default=2, help="tunes per method (default: 2)")
    parser.add_argument("--budget", type=float, default=10.0,
                        help="training minutes per tune (default: 10)")
    parser.add_argument("--at", type=float, nargs="+", default=[2.0, 5.0, 10.0],
                        help="budgets to compare at, in minutes (default: 2 5 10)")
    parser.add_argument("--figure", default=None,
                        help="also draw the random search's expected curve and each method's "
                             "seed-0 trajectory into this PNG")
    args = parser.parse_args()
    if args.seeds < 1 or args.seeds * WARM > POOL:
        parser.error(f"--seeds must be 1..{POOL // WARM}")
    if args.budget <= 0 or min(args.at) <= 0 or max(args.at) > args.budget:
        parser.error("--budget and --at must be > 0, and --at within --budget")

    import optuna

    from tasks.cli import project_prefect_settings, quiet_logs
    from tasks.config import SplitSpec
    from tasks.data.prepare import prepare_data
    from tasks.search.budget import completed_pool, expected_best_by_budget
    from tasks.search.workers import available_cores
    from tasks.trial.result import TrialResult  # noqa: F401 (the pool's type)

    quiet_logs(False)
    handle, _ = prepare_data(args.data, SplitSpec())
    with project_prefect_settings():
        pool = pool_results(handle)
    frame = pd.DataFrame([r.row() for r in pool])
    best_in_pool = float(frame["val_accuracy"].max())
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {available_cores()} "
          f"cores, python {platform.python_version()}, optuna {optuna.__version__}")
    minutes = frame["train_seconds"].sum() / 60
    print(f"full size: {handle.train_size} training images, 10 epochs, the tune's default "
          f"space; pool: the default study's {POOL} random trials, {minutes:.1f} training "
          f"minutes, best validation accuracy {best_in_pool:.4f}")
    done = completed_pool(frame)
    random = expected_best_by_budget(done["val_accuracy"], done["val_accuracy"],
                                     done["train_seconds"], budgets=args.at)
    runs: dict[str, list[dict]] = {method: [] for method in METHODS}
    storage_dir = tempfile.mkdtemp(prefix="budgets-benchmark-")
    started = time.perf_counter()
    with project_prefect_settings():
        for seed in range(args.seeds):
            for method in METHODS:
                storage = f"sqlite:///{storage_dir}/{method.split()[0]}-{seed}.db"
                warm_from = pool[WARM * seed:WARM * (seed + 1)]
                run = run_tune(method, seed, args.budget, storage, args.data, warm_from)
                runs[method].append(run)
                over = 100 * (run["spent"] / args.budget - 1)
                print(f"  seed {seed} {method:<22} best val {run['path']['best_val'].max():.4f}"
                      f"  {run['spent']:.2f} of {args.budget:g} training min ({over:+.1f} %),"
                      f" {len(run['path'])} trials, {run['trained']} trained, "
                      f"{run['wall']:.0f} s wall", flush=True)
            print(f"after {seed + 1} seed(s), {time.perf_counter() - started:.0f} s wall:")
            print_table(args.at, random, best_in_pool, runs)
            if args.figure:
                draw(args.figure, done, runs)


def draw(path: str, pool: pd.DataFrame, runs: dict[str, list[dict]]) -> None:
    """The pool's expected curve (test accuracy of the best-by-validation trial) and each
    method's first trajectory, on the per-budget axes."""
    from tasks.reports.figures.budget import plot_best_by_budget
    from tasks.search.budget import expected_best_by_budget

    table = expected_best_by_budget(pool["val_accuracy"], pool["test_accuracy"],
                                    pool["train_seconds"])
    plot_best_by_budget(table, path, pool=f"random search ({POOL}-trial pool, random orders)",
                        measures=("best_val_test",),
                        trajectories={f"{method}, seed 0": method_runs[0]["path"]
                                      for method, method_runs in runs.items() if method_runs})
    print(f"figure: {path}")


def print_table(at: list[float], random: pd.DataFrame, best_in_pool: float,
                runs: dict[str, list[dict]]) -> None:
    header = ["method", *[f"best val @{m:g} min" for m in at],
              f"below the pool's best @{max(at):g} min", "budget used"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    cells = ["random search (expected, 400-trial pool)"]
    cells += [f"{row.best_val_test_mean:.4f} (p10 {row.best_val_test_p10:.4f})"
              for row in random.itertuples()]
    cells += [f"{best_in_pool - random['best_val_test_mean'].iloc[-1]:.4f}", "-"]
    print("| " + " | ".join(cells) + " |")
    for method, method_runs in runs.items():
        if not method_runs:
            continue
        values = {m: [reached(r, m) for r in method_runs] for m in at}
        cells = [method] + [mean_std(values[m]) for m in at]
        cells.append(f"{best_in_pool - statistics.mean(values[max(at)]):.4f}")
        cells.append(", ".join(f"{r['spent']:.2f}" for r in method_runs) + " min")
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
