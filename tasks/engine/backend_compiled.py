"""The compiled backend: the exercise's network trained with plain TensorFlow ops, one graph
per epoch, the graph reused across trials.

One *trainer* per layer shape (units, activation, hidden layers, input size, classes) holds
the network's variables, Adam's state and two traced graph functions (a training epoch, an
evaluation). Everything else a trial sets is data, not graph: batch size, learning rate,
dropout rate and seeds are tensor arguments or variables reset at the start of each trial. So
a search of hundreds of trials traces about one graph per layer shape and activation, instead
of one per trial, and a trial spends its time in training steps.

A step is the same computation as the exercise's Keras model: ``layers`` x [Dense(units,
activation) -> Dropout] -> Dense(classes) -> softmax cross-entropy, Adam with Keras' defaults
(TensorFlow's fused ``ResourceApplyAdam``: bias-corrected learning rate, epsilon outside the
square root), Glorot initial weights from Keras' own seeded initializer, inverted dropout (one
seeded generator draws every hidden layer's mask, in layer order).

Inputs that are zero in every training image (67 of MNIST's 784 pixels, at the border) are
left out of the training steps: their first-layer weights get a gradient of exactly zero, so
Adam never moves them (its step is ``lr * m / (sqrt(v) + eps)`` with ``m = 0``). They keep
their initial values, as in the full network, and take part in every evaluation (validation
and test images may have ink there). Same network, 7-14 % less time per step (benchmarks/steps.py).
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from tasks.config import TrialConfig
from tasks.data.splits import Splits
from tasks.engine.epochs import NOT_COMPUTED, BestWeights, history_row, reported_metrics
from tasks.engine.model import layer_seeds
from tasks.engine.tf_runtime import tensorflow

EVAL_BATCH = 10_000  # rows per forward pass when computing metrics (bounded memory)
ADAM_BETA_1, ADAM_BETA_2, ADAM_EPSILON = 0.9, 0.999, 1e-7  # keras.optimizers.Adam defaults
MAX_IDLE_TRAINERS = 32  # per process; a 512-unit trainer holds ~5 MB of variables


class Trainer:
    """Variables and traced graphs for one layer shape and activation (see module doc)."""

    def __init__(self, units: int, activation: str, layers: int, classes: int, labels: str,
                 active: int, inactive: int):
        tf = tensorflow()
        act = {"relu": tf.nn.relu, "elu": tf.nn.elu, "sigmoid": tf.sigmoid,
               "tanh": tf.tanh, "linear": tf.identity}[activation]
        self.units, self.activation, self.classes = units, activation, classes
        self.shape_key = (units, activation, layers, classes, labels, active, inactive)
        shapes = [(active, units), (units,), *[(units, units), (units,)] * (layers - 1),
                  (units, classes), (classes,)]
        self.weights = [tf.Variable(tf.zeros(shape)) for shape in shapes]
        # first-layer rows of the inputs that are zero in every training image (module doc)
        self.frozen = tf.Variable(tf.zeros((inactive, units)))
        self.columns: tuple[np.ndarray, np.ndarray] | None = None
        self.m = [tf.Variable(tf.zeros(shape)) for shape in shapes]
        self.v = [tf.Variable(tf.zeros(shape)) for shape in shapes]
        self.learning_rate = tf.Variable(1e-3)
        self.keep = tf.Variable(1.0)  # 1 - dropout rate
        self.step = tf.Variable(0.0)  # Adam's t
        self.dropout_noise = tf.random.Generator.from_seed(0)
        w1, b1, *deeper, w2, b2 = self.weights
        deeper = list(zip(deeper[::2], deeper[1::2], strict=True))  # hidden layers 2, 3, ...
        beta_1, beta_2 = tf.constant(ADAM_BETA_1), tf.constant(ADAM_BETA_2)
        epsilon = tf.constant(ADAM_EPSILON)
        x_spec = tf.TensorSpec([None, active], tf.float32)
        zero_spec = tf.TensorSpec([None, None], tf.float32)
        y_spec = tf.TensorSpec([None], tf.as_dtype(labels))

        def dropped(hidden):
            kept = self.dropout_noise.uniform(tf.shape(hidden)) < self.keep
            return hidden * (tf.cast(kept, tf.float32) / self.keep)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int32), x_spec, y_spec,
                                      tf.TensorSpec([], tf.int32)])
        def train_epoch(order, x, y, batch):
            """One pass over ``x[order]`` in minibatches. Nothing is monitored inside the
            loop: every op there is paid once per step."""
            n = tf.shape(order)[0]
            for start in tf.range(0, n, batch):
                index = order[start : start + batch]
                xb = tf.gather(x, index)
                yb = tf.cast(tf.gather(y, index), tf.int32)
                with tf.GradientTape() as tape:
                    hidden = dropped(act(tf.matmul(xb, w1) + b1))
                    for kernel, bias in deeper:
                        hidden = dropped(act(tf.matmul(hidden, kernel) + bias))
                    logits = tf.matmul(hidden, w2) + b2
                    loss = tf.reduce_mean(
                        tf.nn.sparse_softmax_cross_entropy_with_logits(yb, logits))
                gradients = tape.gradient(loss, self.weights)
                self.step.assign_add(1.0)
                beta_1_power, beta_2_power = tf.pow(beta_1, self.step), tf.pow(beta_2, self.step)
                for variable, m, v, gradient in zip(self.weights, self.m, self.v, gradients,
                                                    strict=True):
                    tf.raw_ops.ResourceApplyAdam(
                        var=variable.handle, m=m.handle, v=v.handle, beta1_power=beta_1_power,
                        beta2_power=beta_2_power, lr=self.learning_rate, beta1=beta_1,
                        beta2=beta_2, epsilon=epsilon, grad=gradient)
            return n

        @tf.function(input_signature=[x_spec, zero_spec, y_spec])
        def evaluate(x, x_frozen, y):
            """Mean cross-entropy and accuracy without dropout, in chunks of EVAL_BATCH;
            ``x_frozen``: the inputs of the frozen rows (no columns for the training split,
            where they are all zero)."""
            n = tf.shape(x)[0]
            loss_sum = tf.constant(0.0, tf.float64)
            hits = tf.constant(0, tf.int64)
            for start in tf.range(0, n, EVAL_BATCH):
                xb = x[start : start + EVAL_BATCH]
                zb = x_frozen[start : start + EVAL_BATCH]
                yb = tf.cast(y[start : start + EVAL_BATCH], tf.int32)
                pre = tf.matmul(xb, w1) + b1
                if tf.shape(zb)[1] > 0:
                    pre += tf.matmul(zb, self.frozen)
                hidden = act(pre)
                for kernel, bias in deeper:
                    hidden = act(tf.matmul(hidden, kernel) + bias)
                logits = tf.matmul(hidden, w2) + b2
                losses = tf.nn.sparse_softmax_cross_entropy_with_logits(yb, logits)
                loss_sum += tf.reduce_sum(tf.cast(losses, tf.float64))
                hit = tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), yb)
                hits += tf.reduce_sum(tf.cast(hit, tf.int64))
            count = tf.cast(n, tf.float64)
            return loss_sum / count, tf.cast(hits, tf.float64) / count

        self._train_epoch, self._evaluate = train_epoch, evaluate

    def reset(self, config: TrialConfig, columns: tuple[np.ndarray, np.ndarray]) -> None:
        """Start a new trial: Glorot initial weights (Keras' seeded initializer, the same
        values the Keras model of this config starts from), zero biases and Adam state.
        ``columns``: the (trained, frozen) input columns."""
        import keras

        self.columns = columns
        active, inactive = columns
        full = (len(active) + len(inactive), self.units)
        deeper = []
        for layer in range(2, config.layers + 1):
            deeper += [np.asarray(keras.initializers.GlorotUniform(
                seed=layer_seeds(config.seed, layer)[0])((self.units, self.units))),
                np.zeros(self.units, np.float32)]
        self.set_weights([
            np.asarray(keras.initializers.GlorotUniform(seed=config.seed)(full)),
            np.zeros(self.units, np.float32),
            *deeper,
            np.asarray(keras.initializers.GlorotUniform(seed=config.seed + 2)(
                (self.units, self.classes))),
            np.zeros(self.classes, np.float32)])
        for slot in (*self.m, *self.v):
            slot.assign(np.zeros(slot.shape, np.float32))
        self.step.assign(0.0)
        self.learning_rate.assign(config.learning_rate)
        self.keep.assign(1.0 - config.dropout)
        self.dropout_noise.reset_from_seed(config.seed + 1)

    def train_epoch(self, order: np.ndarray, x, y, batch_size: int) -> None:
        tf = tensorflow()
        self._train_epoch(tf.constant(order, tf.int32), x, y, tf.constant(batch_size, tf.int32))

    def evaluate(self, x, x_frozen, y) -> tuple[float, float]:
        loss, accuracy = self._evaluate(x, x_frozen, y)
        return float(loss), float(accuracy)

    def get_weights(self) -> list[np.ndarray]:
        """The network's weights in Keras' layout (first layer: every input column)."""
        active, inactive = self.columns
        trained = [variable.numpy() for variable in self.weights]
        w1 = np.empty((len(active) + len(inactive), self.units), np.float32)
        w1[active], w1[inactive] = trained[0], self.frozen.numpy()
        return [w1, *trained[1:]]

    def set_weights(self, weights: list[np.ndarray]) -> None:
        """Weights in Keras' layout (as :meth:`get_weights` gives them)."""
        active, inactive = self.columns
        w1, *rest = weights
        self.frozen.assign(np.asarray(w1, np.float32)[inactive])
        for variable, value in zip(self.weights, [np.asarray(w1)[active], *rest], strict=True):
            variable.assign(value)


# --------------------------------------------------------------------------------------------
# Per-process state: idle trainers, and one tensor copy of the splits
# --------------------------------------------------------------------------------------------
_LOCK = threading.Lock()
_IDLE: OrderedDict[tuple, list[Trainer]] = OrderedDict()  # least recently used first
_TENSORS: dict[int, tuple[weakref.ref, Any]] = {}


def _checkout(*key) -> Trainer:
    """An idle trainer for this shape (:attr:`Trainer.shape_key`; a new one if none is idle:
    trials on other threads never share one)."""
    with _LOCK:
        idle = _IDLE.get(key)
        if idle:
            _IDLE.move_to_end(key)
            return idle.pop()
    return Trainer(*key)


def _checkin(trainer: Trainer) -> None:
    key = trainer.shape_key
    with _LOCK:
        _IDLE.setdefault(key, []).append(trainer)
        _IDLE.move_to_end(key)
        while sum(len(v) for v in _IDLE.values()) > MAX_IDLE_TRAINERS:
            oldest = next(iter(_IDLE))
            _IDLE[oldest].pop(0)
            if not _IDLE[oldest]:
                del _IDLE[oldest]


def clear_trainers() -> None:
    """Forget every idle trainer of this process (tests; memory)."""
    with _LOCK:
        _IDLE.clear()


def _cached(array: np.ndarray, part: str, make: Callable[[], Any]) -> Any:
    """``make()`` once per process per (array, part), dropped with the array."""
    key = (id(array), part)
    with _LOCK:
        hit = _TENSORS.get(key)
        if hit is not None and hit[0]() is array:
            return hit[1]
    value = make()
    with _LOCK:
        _TENSORS[key] = (weakref.ref(array), value)
        weakref.finalize(array, _TENSORS.pop, key, None)
    return value


def as_tensor(array: np.ndarray, columns: np.ndarray | None = None, part: str = "all"):
    """One TensorFlow copy of a split (or of its ``columns``) per process."""
    tf = tensorflow()
    return _cached(array, part, lambda: tf.constant(
        array if columns is None else np.ascontiguousarray(array[:, columns])))


def input_columns(x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(trained, frozen) input columns: frozen ones are zero in every training image."""
    def split():
        used = np.any(x_train != 0, axis=0)
        return np.flatnonzero(used), np.flatnonzero(~used)
    return _cached(x_train, "columns", split)


def split_tensors(splits: Splits) -> dict[str, tuple[Any, Any, Any]]:
    """Per split: (trained columns, frozen columns, labels) as tensors; the training split's
    frozen columns are all zero, so none are passed."""
    active, inactive = input_columns(splits.x_train)
    none = inactive[:0]
    return {
        name: (as_tensor(x, active, "trained"),
               as_tensor(x, none if name == "train" else inactive,
                         "none" if name == "train" else "frozen"),
               as_tensor(y))
        for name, x, y in (("train", splits.x_train, splits.y_train),
                           ("val", splits.x_val, splits.y_val),
                           ("test", splits.x_test, splits.y_test))}


# --------------------------------------------------------------------------------------------
# One trial
# --------------------------------------------------------------------------------------------
def train(config: TrialConfig, splits: Splits,
          on_epoch: Callable[[dict[str, float]], bool | None] | None = None) -> dict[str, Any]:
    """Train one trial; see :func:`tasks.engine.train.train_model` for what comes back."""
    columns = input_columns(splits.x_train)
    trainer = _checkout(config.units, config.activation, config.layers, splits.classes,
                        splits.y_train.dtype.name, *map(len, columns))
    try:
        trainer.reset(config, columns)
        tensors = split_tensors(splits)
        x_train, _, y_train = tensors["train"]
        rng = np.random.default_rng(config.seed)
        n = len(splits.x_train)
        best = BestWeights(enabled=config.checkpoint)
        history = []
        for epoch in range(1, config.epochs + 1):
            trainer.train_epoch(rng.permutation(n).astype(np.int32), x_train, y_train,
                                config.batch_size)
            train = (trainer.evaluate(*tensors["train"]) if config.epoch_metrics
                     else NOT_COMPUTED)
            row = history_row(epoch, *train, *trainer.evaluate(*tensors["val"]))
            history.append(row)
            best.update(trainer.get_weights, epoch, row["val_accuracy"])
            if on_epoch and on_epoch(row):
                break  # stopped early (pruned): the epochs done are the history
        best_epoch = best.epoch if config.checkpoint else len(history)
        if config.checkpoint:
            trainer.set_weights(best.weights)
        metrics = reported_metrics(
            config, history, best_epoch, lambda: trainer.evaluate(*tensors["train"]),
            lambda: trainer.evaluate(*tensors["test"]))
        return {"history": history, "best_epoch": best_epoch,
                "weights": trainer.get_weights(), "metrics": metrics}
    finally:
        _checkin(trainer)
