"""Search spaces of value lists: grid expansion, and random sampling without repeats.

Declared in one place: :data:`DEFAULT_GRID` and :data:`DEFAULT_RANDOM_SPACE` are the original
exercise's, and every flow takes its own as a parameter.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tasks.config import Activation, TrialConfig, make_config
from tasks.errors import UserError, as_user_error

SEARCH_FIELDS = ("dropout", "units", "layers", "activation", "learning_rate", "batch_size")
#: Axes a search shows only when it searches them, with the one value they have otherwise
#: (the exercise's single hidden layer): a search space, a report and a study's identity
#: leave ``layers`` out while it is 1, so they read, and compare, as before depth existed.
QUIET_FIELDS: dict[str, object] = {"layers": 1}


def shown_fields(values: dict[str, list]) -> list[str]:
    """The search fields of ``values`` (field -> values searched) worth showing: all but a
    quiet field that holds only its default."""
    return [name for name in SEARCH_FIELDS if name in values
            and not (name in QUIET_FIELDS
                     and list(dict.fromkeys(values[name])) == [QUIET_FIELDS[name]])]


class SearchSpace(BaseModel):
    """Lists of values per hyperparameter; a grid is their product, a random search samples
    from it without repeats. ``epochs`` and ``seed`` are fixed for every trial."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dropout: list[Annotated[float, Field(ge=0.0, lt=1.0)]] = Field(
        default_factory=lambda: [0.0, 0.1, 0.3, 0.5, 0.8], description="dropout rates in [0, 1)")
    units: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [16, 32, 64, 128, 256], description="hidden units, >= 1")
    layers: list[Annotated[int, Field(ge=1, le=32)]] = Field(
        default_factory=lambda: [1], description="hidden layers, each of `units` units (1: "
                                                 "the exercise's network)")
    activation: list[Activation] = Field(default_factory=lambda: ["relu"],
                                         description="hidden activations")
    learning_rate: list[Annotated[float, Field(gt=0.0)]] = Field(
        default_factory=lambda: [1e-3], description="Adam learning rates, > 0")
    batch_size: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [32], description="minibatch sizes, >= 1")
    epochs: int = Field(10, ge=1, description="epochs of every trial")
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

    def fields(self) -> list[str]:
        """The hyperparameters a report shows (:func:`shown_fields`)."""
        return shown_fields({name: getattr(self, name) for name in SEARCH_FIELDS})

    def describe(self) -> str:
        def shown(value) -> str:
            return f"{value:g}" if isinstance(value, float) else str(value)

        return " x ".join(f"{name} {{{', '.join(map(shown, getattr(self, name)))}}}"
                          for name in self.fields())


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
