"""The training engine: one function, :func:`train_model`, over two interchangeable backends.

* ``compiled`` (default, :mod:`tasks.engine.backend_compiled`): whole epochs as one TensorFlow
  graph over float32 tensors held in memory, the graph reused across trials.
* ``keras`` (:mod:`tasks.engine.backend_keras`): the exercise's ``model.fit``, the reference.

Both train the same network from the same seeded initial weights with Adam, handle a partial
last batch, and follow the trial's protocol: ``epoch_metrics`` recomputes the training
metrics without dropout after every epoch (the exercise's ``CalculateMetrics``, its baseline
only); ``checkpoint`` restores the best-validation-accuracy epoch's weights (its baseline
only: its searches score the last epoch). An ``on_epoch`` callback sees each epoch's
history row; when it returns True, training stops after that epoch (a pruned trial: its
history has the epochs done, and the last of them is scored).
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tasks.config import TrialConfig
from tasks.data.splits import Splits

EpochCallback = Callable[[dict[str, float]], bool | None]
BACKEND_NAMES = ("compiled", "keras")


@dataclass
class TrainOutcome:
    """What one training run produced. Small: no arrays, no model."""

    history: list[dict[str, float]]
    metrics: dict[str, float]  # train_/val_/test_ loss and accuracy of the reported weights
    best_epoch: int  # the epoch whose weights are reported (the last one without checkpoint)
    seconds: float
    param_count: int
    backend: str
    weights_path: str | None = None


def _backend(name: str):
    if name == "compiled":
        from tasks.engine import backend_compiled

        return backend_compiled
    if name == "keras":
        from tasks.engine import backend_keras

        return backend_keras
    raise ValueError(f"backend={name!r}: allowed {', '.join(BACKEND_NAMES)}")


def train_model(
    config: TrialConfig,
    splits: Splits,
    backend: str = "compiled",
    weights_path: str | os.PathLike | None = None,
    on_epoch: EpochCallback | None = None,
) -> TrainOutcome:
    """Train one network and evaluate it on train, validation and test.

    The reported weights (the best-validation epoch's with ``config.checkpoint``, else the
    last epoch's) are evaluated and, if ``weights_path`` is given, saved there atomically
    (load them with :func:`tasks.engine.model.load_model`).
    """
    from tasks.engine.model import save_weights

    global _KERAS_ACTIVE
    module = _backend(backend)
    started = time.perf_counter()
    if backend == "keras":
        with _KERAS_LOCK:
            _KERAS_ACTIVE += 1
    try:
        run = module.train(config, splits, on_epoch)
    finally:
        if backend == "keras":
            with _KERAS_LOCK:
                _KERAS_ACTIVE -= 1
                if _KERAS_ACTIVE == 0:  # Keras models accumulate global state
                    release_tensorflow_memory()
    seconds = time.perf_counter() - started
    if weights_path is not None:
        save_weights(run["weights"], weights_path)
    return TrainOutcome(
        history=run["history"],
        metrics=run["metrics"],
        best_epoch=run["best_epoch"],
        seconds=seconds,
        param_count=int(sum(np.size(w) for w in run["weights"])),
        backend=backend,
        weights_path=str(weights_path) if weights_path is not None else None,
    )


_KERAS_LOCK = threading.Lock()
_KERAS_ACTIVE = 0  # Keras trials running in this process (threads)


def release_tensorflow_memory() -> None:
    """Drop Keras' global graph state and collect garbage."""
    import keras

    keras.backend.clear_session()
    gc.collect()

