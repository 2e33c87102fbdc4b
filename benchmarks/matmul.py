"""Benchmark: how close training gets to the matmul speed this CPU can reach.

    python benchmarks/matmul.py [--seconds-per-epoch 16x512=3.37 256x256=0.79 ...]

Prints TensorFlow's matmul rate (GFLOP/s) for the shapes one training step of the search
space multiplies (batch x 784 times 784 x units) and for a large square product. Given the
compiled backend's seconds per epoch (from ``benchmarks/training.py``) as ``BATCHxUNITS=S``,
it also prints the rate training achieves and its share of that shape's matmul rate.

FLOP per epoch are counted as: per training image, the first layer's forward product and its
weight gradient, 2 x 2 x 784 x units (no input gradient: the input is data); per image of the
dropout-free metrics pass over train + validation, one forward product, 2 x 784 x units. The
10-way output layer is left out (under 2% of the FLOP at 8 units and above).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

tf.get_logger().setLevel("ERROR")  # one traced loop per shape is intended

TRAIN_IMAGES = 60_000
METRIC_IMAGES = 60_000 + 2_000  # train + validation, evaluated each epoch without dropout
SHAPES = [(16, 512), (32, 128), (256, 256), (1000, 128), (10_000, 512)]


def matmul_rate(m: int, k: int, n: int, seconds: float = 1.0) -> float:
    """GFLOP/s of ``[m, k] @ [k, n]`` in a graph loop, timed for about ``seconds``."""
    a = tf.random.normal([m, k])
    b = tf.random.normal([k, n])

    @tf.function(reduce_retracing=True)
    def loop(reps):
        acc = tf.zeros([m, n])
        for _ in tf.range(reps):
            acc += tf.matmul(a, b)
        return acc

    reps = tf.constant(10)
    loop(reps).numpy()
    started = time.perf_counter()
    loop(reps).numpy()
    once = (time.perf_counter() - started) / 10
    reps = tf.constant(max(10, int(seconds / max(once, 1e-6))))
    started = time.perf_counter()
    loop(reps).numpy()
    return 2 * m * k * n * int(reps) / (time.perf_counter() - started) / 1e9


def epoch_gflop(units: int) -> float:
    return (4 * 784 * units * TRAIN_IMAGES + 2 * 784 * units * METRIC_IMAGES) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds-per-epoch", nargs="*", default=[], metavar="BxU=S",
                        help="compiled backend's seconds per epoch, e.g. 16x512=3.37")
    args = parser.parse_args()
    measured = {}
    for item in args.seconds_per_epoch:
        try:
            shape, seconds = item.split("=")
            batch, units = (int(v) for v in shape.split("x"))
            measured[(batch, units)] = float(seconds)
        except ValueError:
            parser.error(f"--seconds-per-epoch {item!r}: expected BATCHxUNITS=SECONDS, "
                         "e.g. 16x512=3.37")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, tensorflow {tf.__version__}")
    print(f"square 2048 x 2048 @ 2048 x 2048: {matmul_rate(2048, 2048, 2048):6.1f} GFLOP/s")
    for batch, units in sorted(set(SHAPES) | set(measured)):
        rate = matmul_rate(batch, 784, units)
        line = f"{batch:6d} x 784 @ 784 x {units:4d}: {rate:6.1f} GFLOP/s"
        if (batch, units) in measured:
            gflop, seconds = epoch_gflop(units), measured[(batch, units)]
            achieved = gflop / seconds
            line += (f"   training {gflop:5.1f} GFLOP/epoch in {seconds:.2f} s = "
                     f"{achieved:5.1f} GFLOP/s ({achieved / rate:4.0%} of this shape)")
        print(line)


if __name__ == "__main__":
    main()
