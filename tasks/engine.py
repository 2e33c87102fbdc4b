"""The training engine: one function, two interchangeable backends.

* ``compiled`` (default): whole epochs run as one TensorFlow graph (a ``tf.while_loop`` over
  shuffled batch indices into float32 tensors held in memory), driving a real Keras model and
  a Keras Adam optimizer.
* ``keras``: the original exercise's ``model.fit`` on float64 numpy with one-hot labels, kept
  as the reference.

Both build the same Keras model (Glorot init, dropout, softmax output), use Adam with Keras
defaults, handle a partial last batch, recompute the training metrics per epoch *without*
dropout (the exercise's ``CalculateMetrics``), keep the best-validation-accuracy weights and
restore them at the end. TensorFlow is imported lazily so that command lines validate their
input before paying for TensorFlow's start-up.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tasks.config import TrialConfig
from tasks.data import Splits

N_CLASSES = 10
EVAL_BATCH = 10_000  # rows per forward pass when computing metrics (bounded memory)

EpochCallback = Callable[[dict[str, float]], None]


# --------------------------------------------------------------------------------------------
# TensorFlow set-up
# --------------------------------------------------------------------------------------------
def configure_tensorflow(
    intra_op_threads: int | None = None,
    inter_op_threads: int | None = None,
    quiet: bool | None = None,
) -> None:
    """Thread counts and log level for this process. Call before TensorFlow is first used.

    ``quiet`` defaults to on unless ``PIPELINE_TF_LOGS=1``: TensorFlow's start-up warnings
    are noise for a user who wants one line per trial.
    """
    if quiet is None:
        quiet = os.environ.get("PIPELINE_TF_LOGS", "0") != "1"
    if quiet:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    if intra_op_threads:
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(intra_op_threads)
        os.environ["OMP_NUM_THREADS"] = str(intra_op_threads)
    if inter_op_threads:
        os.environ["TF_NUM_INTEROP_THREADS"] = str(inter_op_threads)
    import sys

    if "tensorflow" in sys.modules:  # already imported: try the runtime setters
        import tensorflow as tf

        try:
            if intra_op_threads:
                tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
            if inter_op_threads:
                tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
        except RuntimeError:
            pass  # the runtime is initialised; the environment applies to new processes
    if quiet:
        import logging

        logging.getLogger("tensorflow").setLevel(logging.ERROR)
        try:
            import absl.logging

            absl.logging.set_verbosity(absl.logging.ERROR)
        except ImportError:  # pragma: no cover
            pass


_IMPORT_LOCK = threading.Lock()
_IMPORTED = False  # True once the import has finished ("keras" enters sys.modules at its start)


def _tf():
    """TensorFlow, imported once per process; its C++ start-up chatter (CUDA probing on a
    CPU machine) is silenced unless ``PIPELINE_TF_LOGS=1``."""
    global _IMPORTED
    if not _IMPORTED:
        with _IMPORT_LOCK:  # other threads wait here until the first one has finished
            if not _IMPORTED:
                configure_tensorflow()
                quiet = os.environ.get("PIPELINE_TF_LOGS", "0") != "1"
                saved = os.dup(2) if quiet else None
                try:
                    if saved is not None:
                        devnull = os.open(os.devnull, os.O_WRONLY)
                        os.dup2(devnull, 2)
                        os.close(devnull)
                    import keras  # noqa: F401  (imports tensorflow)
                    import tensorflow  # noqa: F401
                finally:
                    if saved is not None:
                        os.dup2(saved, 2)
                        os.close(saved)
                _IMPORTED = True
    import tensorflow as tf

    if os.environ.get("PIPELINE_TF_LOGS", "0") != "1":
        tf.get_logger().setLevel("ERROR")  # e.g. retracing warnings: one graph per trial
    return tf


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------
def build_model(config: TrialConfig, input_dim: int = 784):
    """Dense(units, activation) -> Dropout -> Dense(10) -> softmax, seeded, not compiled."""
    _tf()
    import keras
    from keras import layers

    seed = config.seed
    return keras.Sequential(
        [
            keras.Input((input_dim,)),
            layers.Dense(
                config.units,
                activation=config.activation,
                kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
                name="hidden",
            ),
            layers.Dropout(config.dropout, seed=seed + 1, name="dropout"),
            layers.Dense(
                N_CLASSES,
                kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 2),
                name="output",
            ),
            layers.Activation("softmax", name="softmax"),
        ],
        name="mlp",
    )


def model_summary(model) -> str:
    """Keras' ``model.summary()`` as plain text."""
    lines: list[str] = []
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line), line_length=80)
    text = "\n".join(lines)
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)  # rich's colour codes


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------
@dataclass
class TrainOutcome:
    """What one training run produced. Small: no arrays, no model."""

    history: list[dict[str, float]]
    metrics: dict[str, float]  # train_/val_/test_ loss and accuracy of the restored weights
    best_epoch: int
    seconds: float
    param_count: int
    backend: str
    weights_path: str | None = None
    summary: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class _BestWeights:
    """Keeps a copy of the weights with the highest validation accuracy (like Keras'
    ModelCheckpoint(save_best_only=True, monitor="val_accuracy"): strictly better only)."""

    def __init__(self) -> None:
        self.accuracy = -np.inf
        self.epoch = 0
        self.weights: list[np.ndarray] | None = None

    def update(self, model, epoch: int, val_accuracy: float) -> None:
        if val_accuracy > self.accuracy:
            self.accuracy, self.epoch = val_accuracy, epoch
            self.weights = [np.array(w) for w in model.get_weights()]

    def restore(self, model) -> None:
        if self.weights is not None:
            model.set_weights(self.weights)


# --------------------------------------------------------------------------------------------
# Compiled backend
# --------------------------------------------------------------------------------------------
_TENSORS: dict[int, Any] = {}


def _as_tensor(array: np.ndarray):
    """One TensorFlow copy per numpy array per process (the splits are reused by every
    trial)."""
    tf = _tf()
    key = id(array)
    hit = _TENSORS.get(key)
    if hit is not None and hit[0] is array:
        return hit[1]
    if len(_TENSORS) > 12:  # another data set: drop the old copies
        _TENSORS.clear()
    tensor = tf.constant(array)
    _TENSORS[key] = (array, tensor)
    return tensor


def _make_evaluator(model):
    """A graph function returning (mean loss, accuracy) of the model without dropout."""
    tf = _tf()
    import keras

    @tf.function(input_signature=[tf.TensorSpec([None, model.input_shape[-1]], tf.float32),
                                  tf.TensorSpec([None], tf.uint8)])
    def evaluate(x, y):  # one trace serves train, validation and test
        n = tf.shape(x)[0]
        total_loss = tf.constant(0.0, tf.float64)
        correct = tf.constant(0, tf.int64)
        for start in tf.range(0, n, EVAL_BATCH):
            xb = x[start : start + EVAL_BATCH]
            yb = tf.cast(y[start : start + EVAL_BATCH], tf.int32)
            probs = model(xb, training=False)
            losses = keras.losses.sparse_categorical_crossentropy(yb, probs)
            total_loss += tf.reduce_sum(tf.cast(losses, tf.float64))
            hits = tf.equal(tf.argmax(probs, axis=1, output_type=tf.int32), yb)
            correct += tf.reduce_sum(tf.cast(hits, tf.int64))
        count = tf.cast(n, tf.float64)
        return total_loss / count, tf.cast(correct, tf.float64) / count

    def run(x, y) -> tuple[float, float]:
        loss, accuracy = evaluate(x, y)
        return float(loss), float(accuracy)

    return run


def _fused_adam_step(optimizer, variables, gradients) -> None:
    """One Adam step on a Keras Adam optimizer's own state, with TensorFlow's fused kernel.

    Same update as ``optimizer.apply`` (Keras' Adam: bias-corrected learning rate, epsilon
    outside the square root; checked to float precision in the tests) in one op per variable
    instead of a dozen: per-step overhead is what limits small networks on a CPU.
    """
    tf = _tf()
    step = tf.cast(optimizer.iterations + 1, tf.float32)
    beta_1 = tf.constant(optimizer.beta_1, tf.float32)
    beta_2 = tf.constant(optimizer.beta_2, tf.float32)
    learning_rate = tf.cast(optimizer.learning_rate, tf.float32)
    for variable, m, v, gradient in zip(
        variables, optimizer._momentums, optimizer._velocities, gradients, strict=True
    ):
        tf.raw_ops.ResourceApplyAdam(
            var=variable.value.handle, m=m.value.handle, v=v.value.handle,
            beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step),
            lr=learning_rate, beta1=beta_1, beta2=beta_2,
            epsilon=tf.constant(optimizer.epsilon, tf.float32), grad=gradient,
        )
    optimizer.iterations.assign_add(1)


def _train_compiled(model, config: TrialConfig, splits: Splits, on_epoch: EpochCallback | None):
    tf = _tf()
    import keras

    x_train, y_train = _as_tensor(splits.x_train), _as_tensor(splits.y_train)
    x_val, y_val = _as_tensor(splits.x_val), _as_tensor(splits.y_val)
    optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate)
    optimizer.build(model.trainable_variables)
    variables = model.trainable_variables
    batch = config.batch_size

    @tf.function
    def train_epoch(order):
        n = tf.shape(order)[0]
        steps = (n + batch - 1) // batch
        for step in tf.range(steps):
            index = order[step * batch : tf.minimum((step + 1) * batch, n)]
            xb = tf.gather(x_train, index)
            yb = tf.cast(tf.gather(y_train, index), tf.int32)
            with tf.GradientTape() as tape:
                probs = model(xb, training=True)
                loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(yb, probs))
            _fused_adam_step(optimizer, variables, tape.gradient(loss, variables))

    evaluate = _make_evaluator(model)
    rng = np.random.default_rng(config.seed)
    best = _BestWeights()
    history = []
    n = len(splits.x_train)
    for epoch in range(1, config.epochs + 1):
        train_epoch(tf.constant(rng.permutation(n).astype(np.int32)))
        train_loss, train_acc = evaluate(x_train, y_train)
        val_loss, val_acc = evaluate(x_val, y_val)
        row = _history_row(epoch, train_loss, train_acc, val_loss, val_acc)
        history.append(row)
        best.update(model, epoch, val_acc)
        if on_epoch:
            on_epoch(row)
    best.restore(model)
    return history, best.epoch, evaluate


# --------------------------------------------------------------------------------------------
# Keras reference backend (the exercise's model.fit)
# --------------------------------------------------------------------------------------------
def _train_keras(model, config: TrialConfig, splits: Splits, on_epoch: EpochCallback | None):
    _tf()
    import keras

    keras.utils.set_random_seed(config.seed)  # fit's shuffling uses the global generator
    x_train = splits.x_train.astype(np.float64)  # as in the exercise: x / 255.0 is float64
    x_val = splits.x_val.astype(np.float64)
    y_train = keras.utils.to_categorical(splits.y_train, N_CLASSES)
    y_val = keras.utils.to_categorical(splits.y_val, N_CLASSES)
    model.compile(
        loss="categorical_crossentropy",
        optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate),
        metrics=["accuracy"],
    )
    best = _BestWeights()
    history: list[dict[str, float]] = []

    class CalculateMetrics(keras.callbacks.Callback):
        """Training metrics recomputed without dropout, like the exercise's callback."""

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            train_loss, train_acc = self.model.evaluate(
                x_train, y_train, verbose=0, batch_size=EVAL_BATCH
            )
            row = _history_row(
                epoch + 1, train_loss, train_acc, logs["val_loss"], logs["val_accuracy"]
            )
            history.append(row)
            best.update(self.model, epoch + 1, row["val_accuracy"])
            if on_epoch:
                on_epoch(row)

    model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        batch_size=config.batch_size,
        epochs=config.epochs,
        verbose=0,
        callbacks=[CalculateMetrics()],
    )
    best.restore(model)

    def evaluate(x, y) -> tuple[float, float]:
        x = np.asarray(x, np.float64)
        loss, accuracy = model.evaluate(
            x, keras.utils.to_categorical(np.asarray(y), N_CLASSES), verbose=0,
            batch_size=EVAL_BATCH,
        )
        return float(loss), float(accuracy)

    return history, best.epoch, evaluate


def _history_row(epoch, train_loss, train_acc, val_loss, val_acc) -> dict[str, float]:
    return {
        "epoch": int(epoch),
        "train_loss": float(train_loss),
        "train_accuracy": float(train_acc),
        "val_loss": float(val_loss),
        "val_accuracy": float(val_acc),
    }


BACKENDS = {"compiled": _train_compiled, "keras": _train_keras}
_ACTIVE = 0
_ACTIVE_LOCK = threading.Lock()


def train_model(
    config: TrialConfig,
    splits: Splits,
    backend: str = "compiled",
    weights_path: str | os.PathLike | None = None,
    on_epoch: EpochCallback | None = None,
    keep_model: bool = False,
) -> TrainOutcome | tuple[TrainOutcome, Any]:
    """Train one network and evaluate it on train, validation and test.

    The best-validation weights are restored before evaluation and, if ``weights_path`` is
    given, saved there (atomically). Keras/TF global state is cleared afterwards (unless
    ``keep_model``), so hundreds of trials in one process do not grow memory.
    """
    global _ACTIVE
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: allowed {sorted(BACKENDS)}")
    with _ACTIVE_LOCK:
        _ACTIVE += 1
    try:
        started = time.perf_counter()
        model = build_model(config, splits.x_train.shape[1])
        history, best_epoch, evaluate = BACKENDS[backend](model, config, splits, on_epoch)
        seconds = time.perf_counter() - started
        # The restored weights are the best epoch's: its train and validation metrics (both
        # without dropout) are already in the history; only the test set is new.
        best = history[best_epoch - 1]
        metrics = {key: best[key] for key in
                   ("train_loss", "train_accuracy", "val_loss", "val_accuracy")}
        x, y = splits.x_test, splits.y_test
        if backend == "compiled":
            x, y = _as_tensor(x), _as_tensor(y)
        metrics["test_loss"], metrics["test_accuracy"] = evaluate(x, y)
        if weights_path is not None:
            save_weights_atomic(model, weights_path)
        outcome = TrainOutcome(
            history=history,
            metrics=metrics,
            best_epoch=best_epoch,
            seconds=seconds,
            param_count=int(model.count_params()),
            backend=backend,
            weights_path=str(weights_path) if weights_path is not None else None,
            summary=model_summary(model),
        )
        if keep_model:
            return outcome, model
        del model, evaluate
        return outcome
    finally:
        with _ACTIVE_LOCK:
            _ACTIVE -= 1
            if _ACTIVE == 0 and not keep_model:
                release_tensorflow_memory()


def release_tensorflow_memory() -> None:
    """Drop Keras' global graph state and collect garbage (no trial may be running)."""
    import keras

    keras.backend.clear_session()
    gc.collect()


def save_weights_atomic(model, path: str | os.PathLike) -> Path:
    """Save weights to ``path`` (must end in ``.weights.h5``) via a temporary file + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name[: -len('.weights.h5')]}.tmp-{os.getpid()}"
                         f"-{threading.get_ident()}.weights.h5")
    try:
        model.save_weights(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_model(config: TrialConfig, weights_path: str | os.PathLike, input_dim: int = 784):
    """Rebuild the trial's Keras model and load its saved weights."""
    model = build_model(config, input_dim)
    model.load_weights(str(weights_path))
    return model


def predict_probabilities(model, x: np.ndarray) -> np.ndarray:
    """Class probabilities (n, 10) without dropout."""
    tf = _tf()
    return np.concatenate(
        [model(tf.constant(x[i : i + EVAL_BATCH]), training=False).numpy()
         for i in range(0, len(x), EVAL_BATCH)]
    )
