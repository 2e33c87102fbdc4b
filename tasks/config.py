"""Typed, validated configurations: one training trial, and the data split.

Every default of the original exercise lives here as a field default, so each is a parameter,
not a constant. Invalid values fail on construction with a message that names the field and
what is allowed (see :func:`tasks.errors.describe_validation_error`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tasks.errors import as_user_error

Activation = Literal["relu", "elu", "sigmoid", "tanh"]
Backend = Literal["compiled", "keras"]
#: Flow-parameter types the Prefect server checks before a run is created.
PositiveInt = Annotated[int, Field(ge=1)]
Seed = Annotated[int, Field(ge=0)]
ACTIVATIONS: tuple[str, ...] = ("relu", "elu", "sigmoid", "tanh")
_WithEpochs = TypeVar("_WithEpochs", bound=BaseModel)


def with_epochs(model: _WithEpochs, epochs: int | None) -> _WithEpochs:
    """``model`` (a trial config or a search space) with its ``epochs`` set to ``epochs``
    (unchanged when None): the flows' top-level ``epochs`` parameter, e.g.
    ``prefect deployment run ... --param epochs=1``."""
    return model if epochs is None else model.model_copy(update={"epochs": epochs})

#: Bumped whenever training code changes what a trial computes; part of every cache key.
TRAINING_CODE_VERSION = "trial-v1"


class TrialConfig(BaseModel):
    """One network to train: Dense(units, activation) -> Dropout -> Dense(10) -> softmax, Adam."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    units: int = Field(128, ge=1, le=65536, description="hidden units (>= 1)")
    dropout: float = Field(0.3, ge=0.0, lt=1.0, description="dropout rate in [0, 1)")
    activation: Activation = Field("relu", description="hidden activation")
    learning_rate: float = Field(1e-3, gt=0.0, le=10.0, description="Adam learning rate (> 0)")
    batch_size: int = Field(1000, ge=1, le=1_000_000, description="minibatch size (>= 1)")
    epochs: int = Field(10, ge=1, le=10_000, description="training epochs (>= 1)")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed for init, dropout and shuffling")

    @field_validator("dropout", "learning_rate", mode="after")
    @classmethod
    def _round_floats(cls, value: float) -> float:
        # 0.1 typed on a command line and 0.1 from numpy must give the same cache key.
        return float(f"{value:.12g}")

    def label(self) -> str:
        """Short human-readable description, used in progress lines and tables."""
        return (
            f"units={self.units} dropout={self.dropout:g} act={self.activation} "
            f"lr={self.learning_rate:g} batch={self.batch_size} epochs={self.epochs} "
            f"seed={self.seed}"
        )

    def canonical_json(self) -> str:
        """Stable JSON of every field (sorted keys), the basis of the trial key."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)


class SplitSpec(BaseModel):
    """How Keras' (train, test) arrays become train / validation / test.

    The exercise's default: all 60000 training images; validation = ``x_test[8000:]``
    (2000 images); test = ``x_test[:8000]``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    train_samples: int | None = Field(
        None, ge=1, description="use only the first N training images (None: all)"
    )
    test_size: int = Field(
        8000, ge=1, description="first `test_size` images of x_test are the test split"
    )


def trial_key(config: TrialConfig, data_fingerprint: str, backend: str = "compiled") -> str:
    """The identity of a trained trial: config + data content + training-code version.

    Two trials with the same key would compute the same thing, so the cache never trains a
    key twice. The backend is part of it because the two backends differ in float details.
    """
    payload = "|".join(
        [config.canonical_json(), data_fingerprint, TRAINING_CODE_VERSION, backend]
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def make_config(**values) -> TrialConfig:
    """A TrialConfig, with invalid values reported as one UserError line."""
    try:
        return TrialConfig(**values)
    except ValidationError as exc:
        raise as_user_error(exc) from None


def make_split(train_samples: int | None = None, test_size: int = 8000) -> SplitSpec:
    """A SplitSpec, with invalid values reported as one UserError line."""
    try:
        return SplitSpec(train_samples=train_samples, test_size=test_size)
    except ValidationError as exc:
        raise as_user_error(exc) from None
