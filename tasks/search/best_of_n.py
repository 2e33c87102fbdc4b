"""The best-of-N study: how the best accuracy found grows with the number N of random trials.

Two protocols: ``repeats`` is the exercise's (R independent draws of N configs per N);
``pool`` trains one pool of random configs once and computes, for every N, the exact mean and
standard deviation over all size-N subsets of the pool (a random-experiment efficiency curve,
Bergstra & Bengio 2012).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tasks.config import TrialConfig
from tasks.errors import UserError, as_user_error
from tasks.search.space import SearchSpace, sample_configs

#: The exercise notebook's printed best-of-N (max test accuracy, mean +- std over its draws).
NOTEBOOK_BEST_OF_N = {10: (0.975, 0.006), 20: (0.980, 0.001), 50: (0.982, 0.0003),
                      100: (0.981, 0.001)}

# --------------------------------------------------------------------------------------------
class StudyPlan(BaseModel):
    """The best-of-N study: which N, which protocol, how many repeats or how large a pool."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_values: list[int] = Field(default_factory=lambda: [10, 20, 50, 100, 200],
                                description="the N values: how many random trials")
    protocol: Literal["pool", "repeats"] = Field(
        "pool", description="pool: train one pool, estimate every N exactly from its subsets "
        "(fewer trainings); repeats: the exercise's independent draws per N")
    repeats: int = Field(3, ge=1, description="independent draws per N (repeats protocol)")
    pool_size: int | None = Field(
        None, ge=1, description="trials in the pool (pool protocol); default 2 x max(N)"
    )

    @field_validator("n_values", mode="after")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        if not values or min(values) < 1:
            raise ValueError("N values must be one or more integers >= 1")
        return sorted(set(values))

    def effective_pool_size(self, space_size: int) -> int:
        wanted = self.pool_size or 2 * max(self.n_values)
        return min(wanted, space_size) if self.pool_size is None else wanted


def make_study_plan(**values) -> StudyPlan:
    """A StudyPlan, with invalid values reported as one UserError line."""
    try:
        return StudyPlan(**values)
    except ValidationError as exc:
        raise as_user_error(exc) from None


def study_configs(plan: StudyPlan, space: SearchSpace, seed: int
                  ) -> dict[tuple[int, int], list[TrialConfig]]:
    """The draws of the study: ``{(N, repeat): configs}``; the pool protocol has one draw,
    keyed ``(pool_size, 0)``."""
    if plan.protocol == "pool":
        size = plan.effective_pool_size(space.size)
        if max(plan.n_values) > size:
            raise UserError(
                f"pool_size={size}: smaller than the largest N={max(plan.n_values)}; "
                f"use a pool of at least {max(plan.n_values)} (the space holds {space.size})"
            )
        return {(size, 0): sample_configs(space, size, seed)}
    return {
        (n, r): sample_configs(space, n, [seed, n, r])
        for n in plan.n_values
        for r in range(plan.repeats)
    }


def expected_best_of_n(selection: np.ndarray, reported: np.ndarray, n: int
                       ) -> tuple[float, float]:
    """Mean and standard deviation, over all size-``n`` subsets of the pool, of ``reported``
    for the subset's best trial by ``selection``.

    Exact (no resampling noise): sorted ascending by ``selection``, the i-th trial (0-based)
    is the best of a uniform random subset with probability C(i, n-1) / C(M, n). Ties are
    broken by position, consistently.
    """
    m = len(selection)
    if not 1 <= n <= m:
        raise ValueError(f"n={n}: must be in 1..{m} (the pool size)")
    order = np.argsort(selection, kind="stable")
    values = np.asarray(reported, dtype=float)[order]
    ranks = np.arange(m)
    # log C(i, n-1) - log C(m, n), computed with lgamma for large pools
    with np.errstate(invalid="ignore"):
        log_w = np.array([
            math.lgamma(i + 1) - math.lgamma(n) - math.lgamma(i - n + 2) if i >= n - 1
            else -np.inf for i in ranks
        ])
    log_total = math.lgamma(m + 1) - math.lgamma(n + 1) - math.lgamma(m - n + 1)
    weights = np.exp(log_w - log_total)
    weights /= weights.sum()
    mean = float(np.sum(weights * values))
    var = float(np.sum(weights * (values - mean) ** 2))
    return mean, math.sqrt(max(var, 0.0))


def subset_count(m: int, n: int) -> float:
    """C(m, n) as a float (inf past float range): C(400, 10) ~ 2.6e19 does not fit int64."""
    try:
        return float(math.comb(m, n))
    except OverflowError:
        return math.inf


def best_of_n_table(
    plan: StudyPlan,
    draws: dict[tuple[int, int], list[str]],
    trials: pd.DataFrame,
) -> pd.DataFrame:
    """Best accuracy found among N random trials, per N: selected by validation accuracy
    (its test accuracy) and, for comparison, the exercise's max test accuracy.

    ``draws`` maps the draw keys of :func:`study_configs` to trial keys; ``trials`` holds one
    row per trial key with ``val_accuracy`` and ``test_accuracy``. Failed trials are left out.
    """
    done = trials[trials["status"] == "completed"].drop_duplicates("trial_key")
    done = done.set_index("trial_key")
    rows = []
    if plan.protocol == "pool":
        (pool_keys,) = draws.values()
        pool = done.loc[[k for k in pool_keys if k in done.index]]
        val, test = pool["val_accuracy"].to_numpy(), pool["test_accuracy"].to_numpy()
        for n in plan.n_values:
            if n > len(pool):
                continue
            sel_mean, sel_std = expected_best_of_n(val, test, n)
            max_mean, max_std = expected_best_of_n(test, test, n)
            val_mean, _ = expected_best_of_n(val, val, n)
            # the number of size-N subsets averaged over: C(400, 10) is ~2.6e19, past int64
            rows.append(dict(n=n, protocol="pool", samples=subset_count(len(pool), n),
                             pool_size=len(pool), val_selected_test_mean=sel_mean,
                             val_selected_test_std=sel_std, max_test_mean=max_mean,
                             max_test_std=max_std, best_val_mean=val_mean))
    else:
        for n in plan.n_values:
            selected, maxima, best_vals = [], [], []
            for r in range(plan.repeats):
                keys = [k for k in draws[(n, r)] if k in done.index]
                if not keys:
                    continue
                draw = done.loc[keys]
                best = draw["val_accuracy"].idxmax()
                selected.append(draw.loc[best, "test_accuracy"])
                maxima.append(draw["test_accuracy"].max())
                best_vals.append(draw["val_accuracy"].max())
            if selected:
                rows.append(dict(n=n, protocol="repeats", samples=float(len(selected)),
                                 pool_size=None, val_selected_test_mean=float(np.mean(selected)),
                                 val_selected_test_std=float(np.std(selected)),
                                 max_test_mean=float(np.mean(maxima)),
                                 max_test_std=float(np.std(maxima)),
                                 best_val_mean=float(np.mean(best_vals))))
    return pd.DataFrame(rows)


def trainings_needed(plan: StudyPlan, space: SearchSpace) -> int:
    """Trainings a study asks for before caching: sum of N x repeats, or the pool size."""
    if plan.protocol == "pool":
        return plan.effective_pool_size(space.size)
    return sum(plan.n_values) * plan.repeats
