"""Inference latency per image: a timed forward pass of a trained trial's saved weights.

What it measures: the network's prediction (each hidden Dense -> activation, then Dense ->
softmax; dropout is off at inference) on :data:`BATCH` images at once, with TensorFlow, in
the process that asks; the fastest of :data:`REPEATS` timed passes (after :data:`WARMUP`
untimed ones), divided by the batch: milliseconds per image. The fastest pass is the one
least disturbed by other work on the machine. It is a property of the machine and of the
process's TensorFlow threads as much as of the network: it is stored with both
(``latency.json`` beside the weights) and compared only between trials measured on one
machine.

When: a trial measures itself right after training (:func:`tasks.trial.task.result_of`), on
the machine that trained it; a trial trained before latencies existed is measured the first
time a report or a tune asks for it (:func:`latency_of`: only its weights are needed, a few
milliseconds a trial), and the figure kept. Nothing here is part of a trial's key: a latency
never retrains anything.
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from tasks.files import atomic_write_text

BATCH = 256
REPEATS = 30
WARMUP = 3
FILE_NAME = "latency.json"
#: The activations' forward functions (TensorFlow's own, as the engine trains them).
_ACTIVATIONS = ("relu", "elu", "sigmoid", "tanh", "linear")
_FORWARD: dict[tuple[str, int], object] = {}
_GUARD = threading.Lock()


def machine() -> str:
    """This machine, in words: the processor's model name and the number of cores."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:  # pragma: no cover (not Linux)
        pass
    return f"{model}, {os.cpu_count()} cores"


def _forward(activation: str, layers: int = 1):
    """A traced forward pass for ``activation`` and ``layers`` hidden layers (one trace per
    network depth, activation and process)."""
    from tasks.engine.tf_runtime import tensorflow

    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation {activation!r}: allowed: {', '.join(_ACTIVATIONS)}")
    with _GUARD:
        if (activation, layers) not in _FORWARD:
            tf = tensorflow()
            act = {"relu": tf.nn.relu, "elu": tf.nn.elu, "sigmoid": tf.sigmoid,
                   "tanh": tf.tanh, "linear": tf.identity}[activation]
            spec = tf.TensorSpec
            signature = [spec((None, None), tf.float32),
                         *[spec((None, None), tf.float32), spec((None,), tf.float32)]
                         * (layers + 1)]

            @tf.function(input_signature=signature)
            def forward(x, *weights):
                *hidden, kernel, bias = weights
                for w, b in zip(hidden[::2], hidden[1::2], strict=True):
                    x = act(tf.matmul(x, w) + b)
                return tf.nn.softmax(tf.matmul(x, kernel) + bias)

            _FORWARD[activation, layers] = forward
        return _FORWARD[activation, layers]


def threads() -> int:
    """TensorFlow's intra-op threads in this process (0: TensorFlow's own choice)."""
    from tasks.engine.tf_runtime import tensorflow

    configured = tensorflow().config.threading.get_intra_op_parallelism_threads()
    return configured or int(os.environ.get("TF_NUM_INTRAOP_THREADS", "0") or 0)


def measure(weights: list[np.ndarray], activation: str, batch: int = BATCH,
            repeats: int = REPEATS) -> float:
    """Milliseconds per image of the forward pass of ``weights`` (Keras' order: each hidden
    layer's kernel and bias, then the output's) on ``batch`` images: the fastest of
    ``repeats`` passes."""
    from tasks.engine.tf_runtime import tensorflow

    tf = tensorflow()
    forward = _forward(activation, len(weights) // 2 - 1)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((batch, weights[0].shape[0]), dtype=np.float32))
    tensors = [tf.constant(np.asarray(w, dtype=np.float32)) for w in weights]
    for _ in range(WARMUP):
        forward(x, *tensors).numpy()
    fastest = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        forward(x, *tensors).numpy()
        fastest = min(fastest, time.perf_counter() - start)
    return fastest * 1000.0 / batch


def record_path(weights_path: str | os.PathLike) -> Path:
    return Path(weights_path).parent / FILE_NAME


def read_record(weights_path: str | os.PathLike) -> dict | None:
    """The stored measurement beside the weights, or None."""
    try:
        record = json.loads(record_path(weights_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record.get("ms_per_image"), int | float) else None


def measure_weights(weights_path: str | os.PathLike, activation: str) -> float:
    """Measure the saved network at ``weights_path`` and store the figure beside it (with
    the batch, the repeats, the threads and the machine); returns ms per image."""
    from tasks.engine.model import read_weights

    value = measure(read_weights(weights_path), activation)
    record = {"ms_per_image": value, "batch": BATCH, "repeats": REPEATS,
              "statistic": "fastest pass / batch", "threads": threads(),
              "machine": machine(), "host": platform.node(),
              "measured_at": datetime.now(UTC).isoformat(timespec="seconds")}
    atomic_write_text(record_path(weights_path), json.dumps(record, indent=1) + "\n")
    return value


def latency_of(result, measure_missing: bool = True) -> float | None:
    """The trial's latency in ms per image: its own figure, else the one stored beside its
    weights, else (``measure_missing``) measured now from its weights; None for a trial
    without weights (failed, pruned, or weights deleted)."""
    if result.latency_ms is not None:
        return result.latency_ms
    if result.status != "completed" or not result.weights_path:
        return None
    record = read_record(result.weights_path)
    if record is not None:
        return float(record["ms_per_image"])
    if not measure_missing or not Path(result.weights_path).is_file():
        return None
    try:
        return measure_weights(result.weights_path, result.config.activation)
    except Exception:  # noqa: BLE001 (a damaged weights file: zip, npz or shape errors)
        return None  # unreadable weights: no figure rather than a failed report
