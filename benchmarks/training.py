"""Benchmark: the compiled backend against the exercise's model.fit, side by side in one run.

    python benchmarks/training.py [--data PATH] [--quick]

Prints, per config, seconds per epoch of both backends, their ratio and test accuracy; the
mean over the 25 batch x units combinations of the random-search space; the accuracy of
both backends as the mean of 3 seeds for 3 configs; estimated wall times of the default grid
and of the exercise's full random study; RSS after 1, 50 and 200 short trials in one process.
The last line is ``speedup batch32/units128: <ratio>``. Both backends do the same work per
epoch (training, then train and validation metrics without dropout). Seconds per epoch are
those of a 10-epoch trial (the exercise's length): the measured fixed per-trial cost spread
over 10 epochs plus the measured steady per-epoch cost.
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

from tasks.config import SplitSpec, TrialConfig  # noqa: E402
from tasks.data.prepare import prepare_data  # noqa: E402
from tasks.data.splits import load_splits
from tasks.engine.train import release_tensorflow_memory, train_model  # noqa: E402
from tasks.search.space import DEFAULT_GRID, DEFAULT_RANDOM_SPACE  # noqa: E402

BACKENDS = ("keras", "compiled")
KEY_CONFIGS = [(32, 128), (16, 512), (256, 256), (1000, 128)]


def measure(config: TrialConfig, splits, backend: str) -> dict[str, float]:
    """Train once; split the time into a fixed per-trial cost and a steady per-epoch cost.

    ``steady`` is the last epoch's time (training + metrics without dropout on train and
    validation); ``fixed`` = total - epochs x steady (model build, graph tracing, final test
    evaluation, ...). ``trial10`` is a 10-epoch trial's time per epoch, the exercise's trial
    length: (fixed + 10 x steady) / 10.
    """
    marks: list[float] = []
    started = time.perf_counter()
    out = train_model(config, splits, backend=backend,
                      on_epoch=lambda row: marks.append(time.perf_counter()))
    total = time.perf_counter() - started
    steady = marks[-1] - marks[-2] if len(marks) > 1 else total
    fixed = max(0.0, total - config.epochs * steady)
    return {"total": total, "per_epoch": total / config.epochs, "steady": steady,
            "fixed": fixed, "trial10": (fixed + 10 * steady) / 10,
            "accuracy": out.metrics["test_accuracy"]}


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("MNIST_PATH"),
                        help="Keras-format mnist.npz (default: $MNIST_PATH)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per key config")
    parser.add_argument("--quick", action="store_true",
                        help="fewer combinations, seeds and RSS trials (a smoke run)")
    args = parser.parse_args()
    handle, _ = prepare_data(args.data, SplitSpec())
    splits = load_splits(handle)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}")
    from tasks.engine.tf_runtime import tensorflow as _tf

    tf = _tf()
    print(f"tensorflow {tf.__version__}, intra-op threads "
          f"{tf.config.threading.get_intra_op_parallelism_threads() or 'default'}")
    # warm-up: TensorFlow start-up is not part of any trial's time
    train_model(TrialConfig(units=8, epochs=1, batch_size=1000), splits)

    print(f"\n== key configs ({args.epochs} epochs each; s/ep = a 10-epoch trial's time per "
          "epoch, from the measured fixed and steady per-epoch costs) ==")
    print(f"{'batch':>6} {'units':>6} {'keras s/ep':>11} {'compiled s/ep':>14} {'ratio':>6} "
          f"{'steady ratio':>13} {'fixed k/c s':>12} {'keras acc':>10} {'compiled acc':>13}")
    key_ratio = {}
    for batch, units in KEY_CONFIGS:
        config = TrialConfig(units=units, batch_size=batch, epochs=args.epochs, dropout=0.1)
        k, c = (measure(config, splits, b) for b in BACKENDS)
        key_ratio[(batch, units)] = k["trial10"] / c["trial10"]
        print(f"{batch:>6} {units:>6} {k['trial10']:>11.2f} {c['trial10']:>14.2f} "
              f"{k['trial10'] / c['trial10']:>6.2f} {k['steady'] / c['steady']:>13.2f} "
              f"{k['fixed']:>5.1f}/{c['fixed']:<5.1f} {k['accuracy']:>10.4f} "
              f"{c['accuracy']:>13.4f}", flush=True)

    batches, units_list = DEFAULT_RANDOM_SPACE.batch_size, DEFAULT_RANDOM_SPACE.units
    if args.quick:
        batches, units_list = batches[::2], units_list[::2]
    print(f"\n== {len(batches) * len(units_list)} batch x units combinations of the random "
          "space (2 epochs each; s/ep as above) ==")
    per_backend = {b: [] for b in BACKENDS}
    by_combo = {}
    for batch in batches:
        for units in units_list:
            config = TrialConfig(units=units, batch_size=batch, epochs=2, dropout=0.1)
            times = {b: measure(config, splits, b)["trial10"] for b in BACKENDS}
            for b in BACKENDS:
                per_backend[b].append(times[b])
            by_combo[(batch, units)] = times
            print(f"  batch {batch:>4} units {units:>4}: keras {times['keras']:6.2f} s  "
                  f"compiled {times['compiled']:6.2f} s  ratio "
                  f"{times['keras'] / times['compiled']:5.2f}", flush=True)
    mean = {b: statistics.mean(v) for b, v in per_backend.items()}
    print(f"mean s/epoch over combinations: keras {mean['keras']:.2f}, compiled "
          f"{mean['compiled']:.2f}, ratio {mean['keras'] / mean['compiled']:.2f}")

    print("\n== test accuracy, mean of 3 seeds ==")
    seeds = [0, 1, 2] if not args.quick else [0]
    for batch, units, epochs in [(32, 128, 3), (1000, 128, 10), (256, 256, 5)]:
        accs = {b: [] for b in BACKENDS}
        for seed in seeds:
            config = TrialConfig(units=units, batch_size=batch, epochs=epochs, dropout=0.3,
                                 seed=seed)
            for b in BACKENDS:
                accs[b].append(train_model(config, splits, backend=b).metrics["test_accuracy"])
        k, c = statistics.mean(accs["keras"]), statistics.mean(accs["compiled"])
        print(f"  batch {batch:>4} units {units:>4} {epochs:>2} epochs: keras {k:.4f}  "
              f"compiled {c:.4f}  gap {100 * (c - k):+.2f} points", flush=True)

    print("\n== estimated wall time (10 epochs per trial, from the s/epoch above) ==")
    grid_cells = [(b, u) for b in DEFAULT_GRID.batch_size for u in DEFAULT_GRID.units]
    for b in BACKENDS:
        grid_epoch = sum(by_combo.get(c, {}).get(b) or mean[b] for c in grid_cells)
        grid_s = grid_epoch * len(DEFAULT_GRID.dropout) * 10
        study_s = mean[b] * 10 * 1140
        pool_s = mean[b] * 10 * 400
        print(f"  {b:>8}: default grid (25 cells) {grid_s / 60:6.1f} min; exercise's study "
              f"(1140 trials) {study_s / 3600:5.1f} h; pool study (400 trials) "
              f"{pool_s / 3600:5.1f} h")

    print("\n== memory: RSS after short trials in one process (compiled backend) ==")
    small, _ = prepare_data(args.data, SplitSpec(train_samples=2000))
    small_splits = load_splits(small)
    checkpoints = {1, 50, 200} if not args.quick else {1, 10, 20}
    space = DEFAULT_RANDOM_SPACE
    for i in range(1, max(checkpoints) + 1):
        config = space.config_at((i * 7919) % space.size).model_copy(update={"epochs": 1})
        train_model(config, small_splits)
        if i in checkpoints:
            release_tensorflow_memory()
            print(f"  after {i:>3} trials: RSS {rss_mb():7.1f} MB", flush=True)

    print(f"\nspeedup batch32/units128: {key_ratio[(32, 128)]:.2f}")


if __name__ == "__main__":
    main()
