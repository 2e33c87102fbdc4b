"""The reference backend: the exercise's own ``model.fit`` on float64 numpy with one-hot labels,
with its ``CalculateMetrics`` callback (when ``epoch_metrics``) and its best-validation
checkpoint (when ``checkpoint``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from tasks.config import TrialConfig
from tasks.data.splits import Splits
from tasks.engine.epochs import NOT_COMPUTED, BestWeights, history_row, reported_metrics
from tasks.engine.model import EVAL_BATCH, build_model
from tasks.engine.tf_runtime import tensorflow


def train(config: TrialConfig, splits: Splits,
          on_epoch: Callable[[dict[str, float]], bool | None] | None = None) -> dict[str, Any]:
    """Train one trial; see :func:`tasks.engine.train.train_model` for what comes back."""
    tensorflow()
    import keras

    model = build_model(config, splits.x_train.shape[1], splits.classes)
    keras.utils.set_random_seed(config.seed)  # fit's shuffling uses the global generator
    x_train = splits.x_train.astype(np.float64)  # as in the exercise: x / 255.0 is float64
    x_val = splits.x_val.astype(np.float64)
    y_train = keras.utils.to_categorical(splits.y_train, splits.classes)
    y_val = keras.utils.to_categorical(splits.y_val, splits.classes)
    model.compile(loss="categorical_crossentropy",
                  optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate),
                  metrics=["accuracy"])
    best = BestWeights(enabled=config.checkpoint)
    history: list[dict[str, float]] = []

    def evaluate(x, y_one_hot) -> tuple[float, float]:
        loss, accuracy = model.evaluate(x, y_one_hot, verbose=0, batch_size=EVAL_BATCH)
        return float(loss), float(accuracy)

    class CalculateMetrics(keras.callbacks.Callback):
        """Per-epoch history; training metrics recomputed without dropout when asked (the
        exercise's callback), else not computed (as in the compiled backend)."""

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            train = evaluate(x_train, y_train) if config.epoch_metrics else NOT_COMPUTED
            row = history_row(epoch + 1, *train, logs["val_loss"], logs["val_accuracy"])
            history.append(row)
            best.update(model.get_weights, epoch + 1, row["val_accuracy"])
            if on_epoch and on_epoch(row):
                self.model.stop_training = True  # stopped early (pruned)

    model.fit(x_train, y_train, validation_data=(x_val, y_val), batch_size=config.batch_size,
              epochs=config.epochs, verbose=0, callbacks=[CalculateMetrics()])
    best_epoch = best.epoch if config.checkpoint else len(history)
    if config.checkpoint:
        model.set_weights(best.weights)
    metrics = reported_metrics(
        config, history, best_epoch, lambda: evaluate(x_train, y_train),
        lambda: evaluate(splits.x_test.astype(np.float64),
                         keras.utils.to_categorical(splits.y_test, splits.classes)))
    return {"history": history, "best_epoch": best_epoch,
            "weights": [np.array(w) for w in model.get_weights()], "metrics": metrics}
