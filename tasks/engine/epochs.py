"""What every backend does around its epochs: the history row, the best-validation
checkpoint, and the metrics of the weights a trial reports."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from tasks.config import TrialConfig

Evaluate = Callable[[], tuple[float, float]]


class BestWeights:
    """The weights of the epoch with the highest validation accuracy (like Keras'
    ``ModelCheckpoint(save_best_only=True, monitor="val_accuracy")``: strictly better only).
    Disabled, it only counts epochs."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.accuracy = -np.inf
        self.epoch = 0
        self.weights: list[np.ndarray] | None = None

    def update(self, get_weights: Callable[[], list[np.ndarray]], epoch: int,
               val_accuracy: float) -> None:
        if self.enabled and val_accuracy > self.accuracy:
            self.accuracy, self.epoch = val_accuracy, epoch
            self.weights = [np.array(w) for w in get_weights()]


def history_row(epoch, train_loss, train_acc, val_loss, val_acc) -> dict[str, float]:
    """One epoch of the history. Without the per-epoch metrics pass the training columns are
    NaN: the exercise's searches never look at them, and computing them costs steps."""
    return {
        "epoch": int(epoch),
        "train_loss": float(train_loss),
        "train_accuracy": float(train_acc),
        "val_loss": float(val_loss),
        "val_accuracy": float(val_acc),
    }


NOT_COMPUTED = (math.nan, math.nan)


def reported_metrics(config: TrialConfig, history: list[dict[str, float]], best_epoch: int,
                     evaluate_train: Evaluate, evaluate_test: Evaluate) -> dict[str, float]:
    """Train / validation / test loss and accuracy of the weights the trial reports (the best
    epoch's with ``checkpoint``, else the last's): validation from the history, training from
    the history when it was computed per epoch, else computed once now (without dropout)."""
    row = history[best_epoch - 1]
    if config.epoch_metrics:
        train_loss, train_accuracy = row["train_loss"], row["train_accuracy"]
    else:
        train_loss, train_accuracy = evaluate_train()
    test_loss, test_accuracy = evaluate_test()
    return {"train_loss": train_loss, "train_accuracy": train_accuracy,
            "val_loss": row["val_loss"], "val_accuracy": row["val_accuracy"],
            "test_loss": test_loss, "test_accuracy": test_accuracy}
