"""Benchmark: the cost of one training step, and what the engine's step variants save.

    python benchmarks/steps.py [--data PATH] [--shapes 512x16 512x64 256x32 128x16]

For each (units, batch) shape, one epoch over 12000 training images in the compiled engine's
own loop (gather a minibatch, Dense -> dropout -> Dense -> softmax cross-entropy, gradients,
TensorFlow's fused Adam), one TensorFlow thread as in a study worker, milliseconds per step:
the median of 5 timed epochs per variant after a warm-up, the variants timed in turns (the
project's machine is shared and noisy: single timings there vary by +-20 %). Variants, side by
side in this process:

* ``all inputs``: the first layer over all 784 pixels;
* ``trained inputs``: over the pixels that are not zero in every training image (what the
  engine does: the others' weights never move);
* ``xla step``: the trained inputs, with the step (forward, gradients, Adam) compiled by XLA;
* and, for the first shape, where the time goes: the forward pass only, the gradients without
  an update, and a plain SGD update instead of Adam.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STEPS_SAMPLES = 12_000


def make_epoch(tf, x, y, units: int, mode: str = "adam", xla: bool = False):
    """A traced epoch function over ``x`` (float32, n x d) with its own variables."""
    d = x.shape[1]
    rng = tf.random.Generator.from_seed(1)
    weights = [tf.Variable(rng.uniform((d, units), -0.05, 0.05)), tf.Variable(tf.zeros(units)),
               tf.Variable(rng.uniform((units, 10), -0.1, 0.1)), tf.Variable(tf.zeros(10))]
    moments = [tf.Variable(tf.zeros_like(w)) for w in weights]
    squares = [tf.Variable(tf.zeros_like(w)) for w in weights]
    lr, keep, step = tf.Variable(1e-3), tf.Variable(0.8), tf.Variable(0.0)
    noise = tf.random.Generator.from_seed(0)
    beta_1, beta_2, eps = tf.constant(0.9), tf.constant(0.999), tf.constant(1e-7)
    x, y = tf.constant(x), tf.constant(y)

    def step_fn(xb, yb):
        w1, b1, w2, b2 = weights
        with tf.GradientTape() as tape:
            hidden = tf.nn.relu(tf.matmul(xb, w1) + b1)
            hidden = hidden * (tf.cast(noise.uniform(tf.shape(hidden)) < keep, tf.float32) / keep)
            logits = tf.matmul(hidden, w2) + b2
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(yb, logits))
        if mode == "forward":
            return loss
        grads = tape.gradient(loss, weights)
        if mode == "gradients":
            return tf.add_n([tf.reduce_sum(g[:1]) for g in grads])
        if mode == "sgd":
            for w, g in zip(weights, grads, strict=True):
                w.assign_sub(lr * g)
            return loss
        step.assign_add(1.0)
        p1, p2 = tf.pow(beta_1, step), tf.pow(beta_2, step)
        for w, m, v, g in zip(weights, moments, squares, grads, strict=True):
            if xla:  # the same update in plain ops, so that XLA can fuse it
                m.assign_add((g - m) * (1 - beta_1))
                v.assign_add((tf.square(g) - v) * (1 - beta_2))
                w.assign_sub(lr * tf.sqrt(1 - p2) / (1 - p1) * m / (tf.sqrt(v) + eps))
            else:
                tf.raw_ops.ResourceApplyAdam(
                    var=w.handle, m=m.handle, v=v.handle, beta1_power=p1, beta2_power=p2,
                    lr=lr, beta1=beta_1, beta2=beta_2, epsilon=eps, grad=g)
        return loss

    step_call = tf.function(step_fn, jit_compile=True) if xla else step_fn

    @tf.function
    def epoch(order, batch):
        n = tf.shape(order)[0]
        for start in tf.range(0, n, batch):
            index = order[start:start + batch]
            step_call(tf.gather(x, index), tf.cast(tf.gather(y, index), tf.int32))
        return n

    return epoch


def ms_per_step(tf, epochs: dict, batch: int, rounds: int = 5) -> dict[str, float]:
    """Median ms per step of each traced epoch in ``epochs``, timed in turns (round-robin, so
    that a noisy moment of a shared machine hits every variant alike)."""
    import statistics

    import numpy as np

    order = tf.constant(np.random.default_rng(0).permutation(60_000)[:STEPS_SAMPLES]
                        .astype(np.int32))
    for epoch in epochs.values():
        epoch(order, tf.constant(batch))  # trace and warm up
    times: dict[str, list[float]] = {name: [] for name in epochs}
    for _ in range(rounds):
        for name, epoch in epochs.items():
            started = time.perf_counter()
            epoch(order, tf.constant(batch))
            times[name].append(time.perf_counter() - started)
    return {name: 1000 * statistics.median(values) / (STEPS_SAMPLES / batch)
            for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("MNIST_PATH"),
                        help="Keras-format mnist.npz (default: $MNIST_PATH)")
    parser.add_argument("--shapes", nargs="+", default=["512x16", "512x64", "256x32", "128x16"],
                        help="UNITSxBATCH shapes (default: 512x16 512x64 256x32 128x16)")
    args = parser.parse_args()
    shapes = []
    for text in args.shapes:
        try:
            units, batch = (int(v) for v in text.split("x"))
        except ValueError:
            parser.error(f"--shapes {text!r}: expected UNITSxBATCH, e.g. 512x16")
        shapes.append((units, batch))

    from tasks.config import SplitSpec
    from tasks.data.prepare import prepare_data
    from tasks.data.splits import load_splits
    from tasks.engine.tf_runtime import tensorflow
    from tasks.search.workers import init_worker

    init_worker(1)
    tf = tensorflow()
    handle, _ = prepare_data(args.data, SplitSpec())
    splits = load_splits(handle)
    x, y = splits.x_train, splits.y_train
    trained = x[:, x.any(axis=0)]
    print(f"one TensorFlow thread; {x.shape[1]} inputs, {trained.shape[1]} not zero in every "
          "training image; ms per step (median of 5 epochs of 12000 images, in turns)")
    print(f"{'units x batch':>14} {'all inputs':>11} {'trained inputs':>15} {'saved':>6} "
          f"{'xla step':>9}")
    for units, batch in shapes:
        ms = ms_per_step(tf, {"full": make_epoch(tf, x, y, units),
                              "part": make_epoch(tf, trained, y, units),
                              "xla": make_epoch(tf, trained, y, units, xla=True)}, batch)
        print(f"{f'{units} x {batch}':>14} {ms['full']:11.3f} {ms['part']:15.3f} "
              f"{1 - ms['part'] / ms['full']:6.0%} {ms['xla']:9.3f}")
    units, batch = shapes[0]
    print(f"where the time of a {units} x {batch} step goes (trained inputs):")
    modes = ("forward", "gradients", "sgd", "adam")
    ms = ms_per_step(tf, {mode: make_epoch(tf, trained, y, units, mode) for mode in modes},
                     batch)
    for mode in modes:
        print(f"  {mode + ' only' if mode == 'forward' else mode:>16} {ms[mode]:7.3f} ms")


if __name__ == "__main__":
    main()
