"""Greedy ensemble selection with replacement (Caruana et al., ICML 2004), in NumPy.

Given the candidates' class probabilities on the validation split (best by validation first),
each of K picks adds the candidate whose addition gives the ensemble (the plain average of
the probabilities picked so far, a candidate once per pick) the most correct validation
samples; among equals, the lowest validation log loss; among those, the first candidate (the
better by validation). The weights are the picks' counts over K. Greedy, so the first k picks
of a K-pick selection are the k-pick selection: one run gives every K up to its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Probabilities are clipped to this before the log (Keras' epsilon).
EPSILON = 1e-7
#: Candidates scored at once (bounded memory: chunk x rows x classes float32).
CHUNK = 64


def log_loss(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean negative log probability of the true class, per leading index: (..., rows,
    classes) -> (...)."""
    taken = np.take_along_axis(probabilities, labels.reshape(
        (1,) * (probabilities.ndim - 2) + (-1, 1)).astype(np.int64), axis=-1)[..., 0]
    return -np.log(np.maximum(taken.astype(np.float64), EPSILON)).mean(axis=-1)


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(probabilities.argmax(axis=-1) == labels))


@dataclass(frozen=True)
class Step:
    """The ensemble after one more pick: which candidate, and its validation scores."""

    pick: int  # 1-based
    candidate: int
    correct: int
    accuracy: float
    log_loss: float


@dataclass(frozen=True)
class Greedy:
    """A greedy selection: its steps (one per pick) over ``candidates`` candidates."""

    steps: tuple[Step, ...]
    candidates: int

    def counts(self, k: int | None = None) -> np.ndarray:
        """How many of the first ``k`` picks (all: None) each candidate got."""
        picks = [step.candidate for step in self.steps[:k]]
        return np.bincount(picks, minlength=self.candidates)

    def members(self, k: int | None = None) -> list[tuple[int, int]]:
        """(candidate, picks) of the first ``k`` picks, in the order of first pick."""
        counts = self.counts(k)
        order = list(dict.fromkeys(step.candidate for step in self.steps[:k]))
        return [(index, int(counts[index])) for index in order]


def greedy_selection(probabilities: np.ndarray, labels: np.ndarray, k: int) -> Greedy:
    """K greedy picks with replacement over ``probabilities`` (candidates, rows, classes), the
    candidates' class probabilities on the validation split, against ``labels`` (rows,)."""
    if k < 1:
        raise ValueError(f"k={k}: at least 1 pick")
    m, rows, classes = probabilities.shape
    if m == 0:
        raise ValueError("no candidate to pick")
    labels = np.asarray(labels).astype(np.int64)
    total = np.zeros((rows, classes), np.float64)
    steps = []
    for pick in range(1, k + 1):
        best = None  # (correct, -loss, -index) is maximized
        for start in range(0, m, CHUNK):
            chunk = probabilities[start:start + CHUNK].astype(np.float64)
            average = (chunk + total) / pick
            correct = (average.argmax(axis=2) == labels).sum(axis=1)
            losses = log_loss(average, labels)
            for offset in np.flatnonzero(correct == correct.max()):
                score = (int(correct[offset]), -float(losses[offset]), -(start + offset))
                if best is None or score > best:
                    best = score
        correct, negative_loss, negative_index = best
        index = -negative_index
        total += probabilities[index]
        steps.append(Step(pick, index, correct, correct / rows, -negative_loss))
    return Greedy(tuple(steps), m)


def weighted_average(probabilities: np.ndarray, members: list[tuple[int, int]]) -> np.ndarray:
    """The average of the members' probabilities weighted by their picks: (rows, classes)."""
    picks = sum(count for _, count in members)
    total = np.zeros(probabilities.shape[1:], np.float64)
    for index, count in members:
        total += count * probabilities[index].astype(np.float64)
    return total / picks
