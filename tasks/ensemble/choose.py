"""An ensemble of a search's trials: the candidates, the greedy selection, and how it compares
with the best single trial and with the plain average of the top K by validation, pick by pick.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tasks.data.splits import DataHandle, Splits, load_splits
from tasks.ensemble.members import Candidates, ProbabilityCache, candidates
from tasks.ensemble.selection import Greedy, accuracy, greedy_selection, log_loss
from tasks.errors import UserError
from tasks.trial.result import TrialResult

#: The largest --ensemble.
MAX_PICKS = 1000


@dataclass(frozen=True)
class Member:
    """A selected trial and its weight (its picks over K)."""

    result: TrialResult
    picks: int
    weight: float


@dataclass
class EnsembleChoice:
    """What the selection chose and what it measured (every accuracy from the members' cached
    probabilities on the processed splits; the exported model is checked on raw input later)."""

    k: int
    pool: Candidates
    greedy: Greedy
    members: list[Member]
    best_single: TrialResult
    #: one row per k = 1..K: the greedy ensemble of the first k picks and the plain average of
    #: the top k by validation, on both splits
    curve: pd.DataFrame
    #: the ensemble's probabilities (the members' weighted average) on the processed splits
    val_probabilities: np.ndarray
    test_probabilities: np.ndarray
    #: probabilities computed now / read from the trials' caches
    computed: int = 0
    read: int = 0

    @property
    def val_accuracy(self) -> float:
        return float(self.curve["val_accuracy"].iloc[-1])

    @property
    def test_accuracy(self) -> float:
        return float(self.curve["test_accuracy"].iloc[-1])

    @property
    def val_loss(self) -> float:
        return float(self.curve["val_loss"].iloc[-1])

    @property
    def test_loss(self) -> float:
        return float(self.curve["test_loss"].iloc[-1])

    def at(self, k: int) -> dict:
        """The curve's row of ``k`` picks."""
        return self.curve[self.curve["k"] == k].iloc[0].to_dict()


def average(probabilities: dict[str, np.ndarray], weights: Sequence[tuple[str, float]]
            ) -> np.ndarray:
    """The weighted average of trials' probabilities (trial key -> (rows, classes)), float32
    as the exported model computes it."""
    total = sum(weight * probabilities[key].astype(np.float64) for key, weight in weights)
    return (total / sum(weight for _, weight in weights)).astype(np.float32)


def choose_ensemble(results: Sequence[TrialResult], data: DataHandle, k: int,
                    best_key: str | None = None, splits: Splits | None = None
                    ) -> EnsembleChoice:
    """Select ``k`` greedy picks among ``results``' completed trials on ``data`` (their
    weights: never trained again); ``best_key``: the single trial to compare with (the run's
    choice; else the first candidate: the best by validation accuracy, then loss)."""
    if not 1 <= k <= MAX_PICKS:
        raise UserError(f"ensemble={k}: the number of picks is 1 to {MAX_PICKS}")
    pool = candidates(results, data.fingerprint)
    if not pool.trials:
        raise UserError(f"no trial to build an ensemble from: {pool.line()}")
    splits = splits or load_splits(data)
    y_val, y_test = splits.y_val.astype(np.int64), splits.y_test.astype(np.int64)
    val_cache, test_cache = ProbabilityCache("validation", splits.x_val), \
        ProbabilityCache("test", splits.x_test)
    val_all = val_cache.stack(pool.trials)
    finite = np.isfinite(val_all).all(axis=(1, 2))
    if not finite.all():  # a diverged network: out of the pool
        diverged = [r.trial_key for r, ok in zip(pool.trials, finite, strict=True) if not ok]
        kept = tuple(r for r, ok in zip(pool.trials, finite, strict=True) if ok)
        pool = Candidates(kept, pool.completed, pool.skipped + tuple(diverged), pool.other_data)
        val_all = val_all[finite]
        if not pool.trials:
            raise UserError("no trial to build an ensemble from: every candidate's "
                            "probabilities are not finite")
    greedy = greedy_selection(val_all, y_val, k)
    trials = pool.trials
    best_single = next((r for r in trials if r.trial_key == best_key), trials[0])

    val = {r.trial_key: val_all[i] for i, r in enumerate(trials)}
    test: dict[str, np.ndarray] = {}

    def test_of(result: TrialResult) -> np.ndarray:
        if result.trial_key not in test:
            test[result.trial_key] = test_cache.of(result)
        return test[result.trial_key]

    # running sums, one member added per k: the greedy ensemble's picks, the top k's trials
    greedy_val = np.zeros(val_all.shape[1:], np.float64)
    greedy_test = np.zeros((len(y_test), val_all.shape[2]), np.float64)
    top_val, top_test = np.zeros_like(greedy_val), np.zeros_like(greedy_test)
    rows, distinct = [], set()
    for picks, step in enumerate(greedy.steps, 1):
        picked = trials[step.candidate]
        distinct.add(step.candidate)
        greedy_val += val[picked.trial_key]
        greedy_test += test_of(picked)
        top = min(picks, len(trials))
        if top == picks:  # the top k: one more trial, until the pool runs out
            top_val += val[trials[top - 1].trial_key]
            top_test += test_of(trials[top - 1])
        ensemble_val = (greedy_val / picks).astype(np.float32)
        ensemble_test = (greedy_test / picks).astype(np.float32)
        average_val = (top_val / top).astype(np.float32)
        average_test = (top_test / top).astype(np.float32)
        rows.append({
            "k": picks, "members": len(distinct),
            "val_accuracy": accuracy(ensemble_val, y_val),
            "val_loss": float(log_loss(ensemble_val, y_val)),
            "test_accuracy": accuracy(ensemble_test, y_test),
            "test_loss": float(log_loss(ensemble_test, y_test)),
            "top_k_members": top,
            "top_k_val_accuracy": accuracy(average_val, y_val),
            "top_k_test_accuracy": accuracy(average_test, y_test),
        })
    members = [Member(trials[i], count, count / k) for i, count in greedy.members()]
    weights = [(m.result.trial_key, m.picks) for m in members]
    return EnsembleChoice(
        k=k, pool=pool, greedy=greedy, members=members, best_single=best_single,
        curve=pd.DataFrame(rows), val_probabilities=average(val, weights),
        test_probabilities=average(test, weights),
        computed=val_cache.computed + test_cache.computed,
        read=val_cache.read + test_cache.read)
