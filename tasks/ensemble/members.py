"""An ensemble's candidates and their class probabilities, cached by trial key.

A candidate is a completed trial of the search, on the run's data, whose stored weights are
where its result says. Its class probabilities on a split (``validation`` for the selection,
``test`` for the report) are the network's forward pass on the processed split, computed here
with NumPy from the weights file (each hidden layer's Dense and activation, then the output's
Dense and softmax: the network at inference, dropout off) and cached in
``<the trial's folder>/probabilities-<split>.npz`` with the SHA-256 of the weights file they
came from: a trial whose weights were written again is computed again, any other run reads
them. A trial whose probabilities are not finite (a network that diverged) takes no part.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.config import TrialConfig
from tasks.files import atomic_path
from tasks.trial.result import TrialResult, weights_exist

SPLITS = ("validation", "test")
#: Rows per forward pass (bounded memory for large splits and wide networks).
ROWS = 4096


@dataclass(frozen=True)
class Candidates:
    """The trials an ensemble may pick, best by validation first (accuracy, then loss, then
    trial key), and what was left out: ``skipped`` completed trials whose weights are gone,
    ``other_data`` completed trials of another data fingerprint."""

    trials: tuple[TrialResult, ...]
    completed: int
    skipped: tuple[str, ...] = ()
    other_data: int = 0

    def line(self) -> str:
        gone = (f"; {len(self.skipped)} skipped: weights gone (the ensemble never trains)"
                if self.skipped else "")
        other = f"; {self.other_data} of other data left out" if self.other_data else ""
        return (f"{len(self.trials)} of {self.completed} completed trial(s) with their weights"
                f"{gone}{other}")


def candidates(results: Iterable[TrialResult], fingerprint: str) -> Candidates:
    """The completed trials of ``results`` on data ``fingerprint`` with their weights, one per
    trial key, best by validation first."""
    seen: dict[str, TrialResult] = {}
    for result in results:
        if result.status == "completed" and result.val_accuracy is not None:
            seen.setdefault(result.trial_key, result)
    other = [r for r in seen.values() if r.data_fingerprint != fingerprint]
    mine = [r for r in seen.values() if r.data_fingerprint == fingerprint]
    usable = [r for r in mine if weights_exist(r)]
    skipped = tuple(sorted(r.trial_key for r in mine if not weights_exist(r)))
    usable.sort(key=lambda r: (-float(r.val_accuracy), _loss(r.val_loss), r.trial_key))
    return Candidates(tuple(usable), len(mine), skipped, len(other))


def _loss(value: float | None) -> float:
    return float("inf") if value is None or not np.isfinite(value) else float(value)


# --------------------------------------------------------------------------------------------
# The network's forward pass, from its weights
# --------------------------------------------------------------------------------------------
def _activation(name: str, x: np.ndarray) -> np.ndarray:
    if name == "relu":
        return np.maximum(x, 0, out=x)
    if name == "tanh":
        return np.tanh(x, out=x)
    if name == "sigmoid":  # 1 / (1 + exp(-x)), without overflow
        return 0.5 * (1.0 + np.tanh(0.5 * x))
    if name == "elu":
        return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))
    if name == "linear":
        return x
    raise ValueError(f"activation {name!r}: no forward pass for it here")


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def forward(config: TrialConfig, weights: Sequence[np.ndarray], x: np.ndarray) -> np.ndarray:
    """Class probabilities (float32) of the network of ``config`` with ``weights`` (Keras'
    ``get_weights`` order) on the processed rows ``x``."""
    if len(weights) != 2 * (config.layers + 1):
        raise ValueError(f"{len(weights)} weight arrays for {config.layers} hidden layer(s)")
    out = []
    for start in range(0, len(x), ROWS):
        h = np.asarray(x[start:start + ROWS], np.float32)
        for layer in range(config.layers):
            kernel, bias = weights[2 * layer], weights[2 * layer + 1]
            h = _activation(config.activation, h @ kernel + bias)
        out.append(softmax(h @ weights[-2] + weights[-1]))
    return np.concatenate(out).astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------
def file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_path(result: TrialResult, split: str) -> Path:
    """``probabilities-<split>.npz`` in the trial's folder (beside its weights)."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: one of {', '.join(SPLITS)}")
    return Path(result.weights_path).parent / f"probabilities-{split}.npz"


def read_cached(result: TrialResult, split: str, rows: int, digest: str) -> np.ndarray | None:
    path = cache_path(result, split)
    try:
        with np.load(path) as stored:
            if str(stored["weights_sha256"]) != digest:
                return None
            probabilities = stored["probabilities"]
    except (OSError, KeyError, ValueError):
        return None
    return probabilities if probabilities.shape[0] == rows else None


@dataclass
class ProbabilityCache:
    """Member probabilities on the processed split rows ``x`` (``split``), read from each
    trial's cache file or computed and stored there; ``computed`` and ``read`` count both."""

    split: str
    x: np.ndarray
    computed: int = 0
    read: int = 0

    def __post_init__(self) -> None:
        self._memory: dict[str, np.ndarray] = {}

    def of(self, result: TrialResult) -> np.ndarray:
        """The trial's class probabilities (rows of ``x``, float32)."""
        key = result.trial_key
        if key in self._memory:
            return self._memory[key]
        from tasks.engine.model import read_weights

        digest = file_digest(result.weights_path)
        probabilities = read_cached(result, self.split, len(self.x), digest)
        if probabilities is None:
            probabilities = forward(result.config, read_weights(result.weights_path), self.x)
            try:
                with atomic_path(cache_path(result, self.split)) as tmp:
                    with open(tmp, "wb") as handle:
                        np.savez(handle, probabilities=probabilities,
                                 weights_sha256=np.asarray(digest))
            except OSError:  # a read-only cache still gives probabilities
                pass
            self.computed += 1
        else:
            self.read += 1
        self._memory[key] = probabilities
        return probabilities

    def stack(self, results: Sequence[TrialResult]) -> np.ndarray:
        """(trials, rows, classes) float32."""
        return np.stack([self.of(result) for result in results])
