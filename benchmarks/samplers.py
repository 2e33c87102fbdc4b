"""Benchmark: random search against Optuna's TPE, with and without pruning, at equal budgets.

    python benchmarks/samplers.py [--data PATH] [--seeds 5] [--trials 50]
                                  [--train-samples 10000] [--epochs 5]

Over the exercise's space (the tune's default), for each seed and method, an Optuna study of
``--trials`` trials is run with the project's own pieces (its samplers and pruners, the
space's rounding, the compiled engine), one trial after another, each config trained once per
study (a repeat costs nothing, as with the cache). The studies run two at a time in two worker
processes with one TensorFlow thread each (the project's fastest layout on 2 cores), so
every study's wall time is measured under the same load. Printed per method, mean
+- standard deviation over the seeds: the best validation accuracy among the complete trials
after 10, 20 and 50 trials, the test accuracy of that best trial, the wall time, and the
epochs trained. Kept small to run in about 15 minutes on 2 cores: a training subset and fewer
epochs than the exercise's 10 (the output says which), so absolute accuracies are below the
full study's; the comparison between methods is the point. TPE's first 10 trials are random
draws (Optuna's ``n_startup_trials``), the same as the random search's with the same seed, so
the methods can only differ from trial 11 on.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.config import SplitSpec  # noqa: E402
from tasks.search.tune_space import DEFAULT_TUNE_SPACE  # noqa: E402

METHODS = {"random": ("random", "none"), "tpe": ("tpe", "none"),
           "tpe + median pruning": ("tpe", "median")}
CHECKPOINTS = (10, 20, 50)


_SPLITS = None


def _init(handle) -> None:
    global _SPLITS
    import optuna

    from tasks.data.splits import load_splits
    from tasks.search.workers import init_worker

    init_worker(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _SPLITS = load_splits(handle)


def _job(args) -> tuple[str, int, dict]:
    method, seed, trials, space = args
    return method, seed, run_study(method, seed, trials, space, _SPLITS)


def run_study(method: str, seed: int, trials: int, space, splits) -> dict:
    """One study; returns the best-so-far curve, its test accuracies, wall time, epochs."""
    import optuna
    from optuna.trial import TrialState

    from tasks.engine.train import train_model
    from tasks.search.tune.samplers import make_sampler
    from tasks.trial.pruning import make_pruner

    sampler, pruner = METHODS[method]
    study = optuna.create_study(direction="maximize", sampler=make_sampler(sampler, seed),
                                pruner=make_pruner(pruner, space.epochs))
    distributions = space.distributions()
    done: dict[str, tuple[list, float]] = {}  # config -> (val per epoch, test): one training
    best_val, best_test, curve, tests = -1.0, float("nan"), [], []
    epochs = 0
    started = time.perf_counter()
    for _ in range(trials):
        trial = study.ask(distributions)
        config = space.config(trial.params)
        key = config.canonical_json()
        pruned = False
        if key in done:
            vals, test = done[key]
            for epoch, value in enumerate(vals, start=1):
                trial.report(value, epoch)
        else:
            def on_epoch(row, trial=trial):
                trial.report(row["val_accuracy"], int(row["epoch"]))
                return pruner != "none" and trial.should_prune()

            out = train_model(config, splits, on_epoch=on_epoch)
            epochs += len(out.history)
            vals = [row["val_accuracy"] for row in out.history]
            pruned = len(vals) < config.epochs
            test = out.metrics["test_accuracy"]
            if not pruned:
                done[key] = (vals, test)
        if pruned:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, vals[-1])
            if vals[-1] > best_val:
                best_val, best_test = vals[-1], test
        curve.append(best_val)
        tests.append(best_test)
    return {"curve": curve, "tests": tests, "seconds": time.perf_counter() - started,
            "epochs": epochs}


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} +- {spread:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("MNIST_PATH"),
                        help="Keras-format mnist.npz (default: $MNIST_PATH)")
    parser.add_argument("--seeds", type=int, default=5, help="studies per method (default: 5)")
    parser.add_argument("--trials", type=int, default=50,
                        help="trials per study (default: 50)")
    parser.add_argument("--train-samples", type=int, default=10_000,
                        help="training images (default: 10000 of 60000)")
    parser.add_argument("--epochs", type=int, default=5,
                        help="epochs per trial (default: 5; the exercise's: 10)")
    args = parser.parse_args()
    for name in ("seeds", "trials", "train_samples", "epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")

    import multiprocessing

    import optuna

    from tasks.data.prepare import prepare_data
    from tasks.search.workers import available_cores

    handle, _ = prepare_data(args.data, SplitSpec(train_samples=args.train_samples))
    space = DEFAULT_TUNE_SPACE.model_copy(update={"epochs": args.epochs})
    print(f"machine: {platform.machine()}, {available_cores()} cores, python "
          f"{platform.python_version()}, optuna {optuna.__version__}")
    print(f"the exercise's space ({int(space.size)} configs), {args.trials} trials per study, "
          f"{args.seeds} seeds per method; smaller than the exercise: {args.train_samples} "
          f"training images, {args.epochs} epochs per trial (validation: the exercise's 2000 "
          "images)")
    results: dict[str, list[dict]] = {method: [] for method in METHODS}
    jobs = [(method, seed, args.trials, space) for seed in range(args.seeds)
            for method in METHODS]
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(2, _init, (handle,)) as pool:
        for method, seed, run in pool.imap_unordered(_job, jobs):
            results[method].append(run)
            print(f"  seed {seed} {method:<22} best val {run['curve'][-1]:.4f} "
                  f"{run['seconds']:6.1f} s {run['epochs']:4d} epochs", flush=True)
    print(f"all studies: {time.perf_counter() - started:.0f} s wall")
    points = [k for k in CHECKPOINTS if k <= args.trials] or [args.trials]
    header = ["method", *[f"best val @{k}" for k in points], f"its test @{points[-1]}",
              "wall s", "epochs trained"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for method, runs in results.items():
        cells = [method] + [mean_std([r["curve"][k - 1] for r in runs]) for k in points]
        cells.append(mean_std([r["tests"][points[-1] - 1] for r in runs]))
        cells.append(f"{statistics.mean(r['seconds'] for r in runs):.1f}")
        cells.append(f"{statistics.mean(r['epochs'] for r in runs):.0f}")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
