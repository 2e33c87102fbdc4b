"""Search spaces: grid expansion, random sampling without repeats, and the best-of-N study.

Declared in one place: :data:`DEFAULT_GRID` and :data:`DEFAULT_RANDOM_SPACE` are the original
exercise's, and every flow takes its own as a parameter.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Annotated

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tasks.config import Activation, TrialConfig, make_config
from tasks.errors import UserError, as_user_error

SEARCH_FIELDS = ("dropout", "units", "activation", "learning_rate", "batch_size")


class SearchSpace(BaseModel):
    """Lists of values per hyperparameter; a grid is their product, a random search samples
    from it without repeats. ``epochs`` and ``seed`` are fixed for every trial."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dropout: list[Annotated[float, Field(ge=0.0, lt=1.0)]] = Field(
        default_factory=lambda: [0.0, 0.1, 0.3, 0.5, 0.8])
    units: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [16, 32, 64, 128, 256])
    activation: list[Activation] = Field(default_factory=lambda: ["relu"])
    learning_rate: list[Annotated[float, Field(gt=0.0)]] = Field(default_factory=lambda: [1e-3])
    batch_size: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [32])
    epochs: int = Field(10, ge=1)
    seed: int = Field(0, ge=0, description="training seed of every trial")
    epoch_metrics: bool = Field(
        False, description="recompute training metrics without dropout after every epoch "
        "(off in the exercise's searches)")
    checkpoint: bool = Field(
        False, description="report the best-validation epoch's weights (off in the exercise's "
        "searches: the last epoch is scored)")

    @field_validator(*SEARCH_FIELDS, mode="after")
    @classmethod
    def _non_empty_unique(cls, values: list, info) -> list:
        if not values:
            raise ValueError(f"{info.field_name} has no values: the grid would be empty")
        return list(dict.fromkeys(values))  # drop repeats, keep order

    @property
    def size(self) -> int:
        return math.prod(len(getattr(self, name)) for name in SEARCH_FIELDS)

    def config_at(self, index: int) -> TrialConfig:
        """The ``index``-th config of the product, in grid order (last field fastest)."""
        values = {}
        for name in reversed(SEARCH_FIELDS):
            options = getattr(self, name)
            index, position = divmod(index, len(options))
            values[name] = options[position]
        return make_config(**self.fixed(), **values)

    def fixed(self) -> dict:
        """What every trial of this space shares (epochs, seed, protocol)."""
        return {"epochs": self.epochs, "seed": self.seed, "epoch_metrics": self.epoch_metrics,
                "checkpoint": self.checkpoint}

    def describe(self) -> str:
        return " x ".join(
            f"{name} {{{', '.join(f'{v:g}' if isinstance(v, float) else str(v) for v in getattr(self, name))}}}"  # noqa: E501
            for name in SEARCH_FIELDS
        )


def make_space(**values) -> SearchSpace:
    """A SearchSpace from keyword lists, validated, every value checked as a TrialConfig."""
    try:
        space = SearchSpace(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        raise as_user_error(exc) from None
    for name in SEARCH_FIELDS:  # each value must make a valid trial on its own
        for value in getattr(space, name):
            make_config(**{name: value}, **space.fixed())
    return space


#: The exercise's grid: dropout x units, batch 32, 10 epochs.
DEFAULT_GRID = SearchSpace()

#: The exercise's random-search space.
DEFAULT_RANDOM_SPACE = SearchSpace(
    batch_size=[16, 32, 64, 128, 256],
    units=[8, 32, 128, 256, 512],
    learning_rate=[1e-5, 1e-4, 1e-3, 1e-2, 1e-1],
    activation=["relu", "elu", "sigmoid", "tanh"],
    dropout=[0.0, 0.1, 0.2, 0.3, 0.5, 0.6],
    epochs=10,
)


# --------------------------------------------------------------------------------------------
# Grid and random sampling
# --------------------------------------------------------------------------------------------
def expand_grid(space: SearchSpace) -> list[TrialConfig]:
    """Every combination, dropout-major like the exercise's nested loops."""
    combos = itertools.product(*(getattr(space, name) for name in SEARCH_FIELDS))
    return [
        make_config(**space.fixed(), **dict(zip(SEARCH_FIELDS, combo, strict=True)))
        for combo in combos
    ]


def draw_indices(size: int, n: int, seed: int | Sequence[int]) -> list[int]:
    """``n`` distinct indices in ``range(size)``, uniformly without replacement, as a prefix of
    one fixed random order per ``seed``: a larger ``n`` extends a smaller one, in the same
    order, so growing a search trains only the new configs.

    Spaces up to a million configs use a random permutation; larger ones draw with rejection
    of repeats (the same stream for every ``n``, so the prefix property holds too).
    """
    rng = np.random.default_rng(seed)
    if size <= 1_000_000:
        return [int(i) for i in rng.permutation(size)[:n]]
    seen: dict[int, None] = {}
    while len(seen) < n:
        seen.setdefault(int(rng.integers(size)), None)
    return list(seen)


def sample_configs(space: SearchSpace, n: int, seed: int | Sequence[int]) -> list[TrialConfig]:
    """``n`` distinct configs drawn uniformly without replacement, reproducible from ``seed``;
    the first ``n`` of the same seed's draws for any larger ``n`` (see :func:`draw_indices`)."""
    if n < 1:
        raise UserError(f"trials={n}: must be at least 1")
    if min(np.atleast_1d(seed)) < 0:
        raise UserError(f"seed={seed}: must be >= 0")
    if n > space.size:
        raise UserError(
            f"trials={n}: more than the {space.size} distinct configurations the search space "
            f"holds ({space.describe()}); allowed 1..{space.size}"
        )
    return [space.config_at(i) for i in draw_indices(space.size, n, seed)]


# --------------------------------------------------------------------------------------------
# Best of N
# --------------------------------------------------------------------------------------------
class StudyPlan(BaseModel):
    """The best-of-N study: which N, which protocol, how many repeats or how large a pool."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_values: list[int] = Field(default_factory=lambda: [10, 20, 50, 100, 200])
    protocol: str = Field("pool", pattern="^(pool|repeats)$")
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


def draw_trial_keys(
    draws: dict[tuple[int, int], list[TrialConfig]], results: Sequence
) -> dict[tuple[int, int], list[str]]:
    """Map each draw to the trial keys of its results (``results`` in draw order)."""
    keys, position = {}, 0
    for draw_key, draw in draws.items():
        keys[draw_key] = [r.trial_key for r in results[position:position + len(draw)]]
        position += len(draw)
    return keys


def study_configs(plan: StudyPlan, space: SearchSpace, seed: int) -> dict[tuple[int, int], list[TrialConfig]]:  # noqa: E501
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


def expected_best_of_n(selection: np.ndarray, reported: np.ndarray, n: int) -> tuple[float, float]:  # noqa: E501
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
