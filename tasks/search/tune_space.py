"""Search spaces with distributions, for the model-based search (``flows/tune.py``).

Each searched hyperparameter is a :class:`Dimension`: a list of choices, or a range sampled
uniformly or on a log scale. A dimension is written as one short text, on the command line or
in a TOML / JSON file::

    choice:relu,elu,tanh          categorical
    log_uniform:1e-5:1e-1:2       float, log scale, rounded to 2 significant digits
    uniform:0:0.6:2               float, rounded to 2 decimals
    int_log:8:512                 integer, log scale
    int:8:512                     integer

Continuous values are rounded to their declared precision before they become a trial config,
so two draws that differ only in the fourth digit are one cached trial. The default space is
the exercise's random-search space, as choices.
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from tasks.config import TrialConfig, make_config
from tasks.errors import UserError, as_user_error
from tasks.search.space import DEFAULT_RANDOM_SPACE, QUIET_FIELDS, SEARCH_FIELDS

DimensionKind = Literal["choice", "uniform", "log_uniform", "int", "int_log"]
KINDS: tuple[str, ...] = get_args(DimensionKind)
DEFAULT_DIGITS = {"uniform": 2, "log_uniform": 2}  # decimals / significant digits
Value = float | int | str


class Dimension(BaseModel):
    """One searched hyperparameter: choices, or a (log-)uniform range with a precision."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: DimensionKind
    choices: list[Value] | None = None
    low: float | None = None
    high: float | None = None
    digits: int | None = Field(None, ge=1, le=12, description="uniform: decimals kept; "
                               "log_uniform: significant digits kept")

    @model_validator(mode="after")
    def _consistent(self) -> Dimension:
        if self.kind == "choice":
            if not self.choices:
                raise ValueError("choice needs at least one value")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"{self.kind} needs LOW and HIGH")
        if not self.low < self.high:
            raise ValueError(f"LOW must be below HIGH (got {self.low:g} and {self.high:g})")
        if self.kind in ("log_uniform", "int_log") and self.low <= 0:
            raise ValueError(f"{self.kind} needs LOW > 0 (got {self.low:g})")
        if self.kind.startswith("int") and (self.low != int(self.low)
                                            or self.high != int(self.high)):
            raise ValueError(f"{self.kind} needs whole LOW and HIGH")
        return self

    @classmethod
    def parse(cls, text: str) -> Dimension:
        """``kind:arguments`` (module doc) -> a Dimension; errors say what is allowed."""
        kind, _, rest = text.strip().partition(":")
        if kind not in KINDS:
            raise ValueError(f"the kind must be one of {', '.join(KINDS)} "
                             "(e.g. log_uniform:1e-5:1e-1)")
        if kind == "choice":
            return cls._checked(kind="choice",
                                choices=[_scalar(v) for v in rest.split(",") if v.strip()])
        parts = rest.split(":")
        if len(parts) not in (2, 3) or (kind.startswith("int") and len(parts) != 2):
            form = f"{kind}:LOW:HIGH" + ("" if kind.startswith("int") else "[:DIGITS]")
            raise ValueError(f"expected {form}")
        try:
            low, high = float(parts[0]), float(parts[1])
            digits = int(parts[2]) if len(parts) == 3 else None
        except ValueError:
            raise ValueError("LOW, HIGH and DIGITS must be numbers") from None
        return cls._checked(kind=kind, low=low, high=high, digits=digits)

    @classmethod
    def _checked(cls, **fields) -> Dimension:
        """The Dimension, or a ValueError with its first problem (for the outer field)."""
        try:
            return cls(**fields)
        except ValidationError as exc:
            message = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise ValueError(message) from None

    def __str__(self) -> str:
        if self.kind == "choice":
            return "choice:" + ",".join(f"{v:g}" if isinstance(v, float) else str(v)
                                        for v in self.choices)
        if self.kind.startswith("int"):
            return f"{self.kind}:{int(self.low)}:{int(self.high)}"
        return f"{self.kind}:{self.low:g}:{self.high:g}:{self.precision}"

    @property
    def precision(self) -> int:
        return self.digits or DEFAULT_DIGITS.get(self.kind, 0)

    def round(self, value: Value) -> Value:
        """``value`` at the declared precision (what the trial config gets)."""
        if self.kind == "uniform":
            return min(max(round(float(value), self.precision), self.low), self.high)
        if self.kind == "log_uniform":
            return float(f"{float(value):.{self.precision - 1}e}")
        if self.kind.startswith("int"):
            return int(value)
        return value

    def distribution(self):
        """The Optuna distribution of this dimension."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.kind == "choice":
            return CategoricalDistribution(self.choices)
        if self.kind.startswith("int"):
            return IntDistribution(int(self.low), int(self.high), log=self.kind == "int_log")
        if self.kind == "uniform":  # on the rounding grid itself
            return FloatDistribution(self.low, self.high, step=10.0 ** -self.precision)
        return FloatDistribution(self.low, self.high, log=True)

    def holds(self, value: Value) -> bool:
        """Whether ``value`` is one this dimension can give a trial (a choice, or a value in
        the range at the declared precision)."""
        if self.kind == "choice":
            return any(value == c and isinstance(value, str) == isinstance(c, str)
                       for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not self.low <= value <= self.high:
            return False
        if self.kind.startswith("int"):
            return float(value).is_integer()
        return self.round(value) == value

    def draw(self, rng) -> Value:
        """A uniform draw (log-uniform for the log kinds) with ``rng`` (numpy's Generator),
        not yet rounded."""
        if self.kind == "choice":
            return self.choices[int(rng.integers(len(self.choices)))]
        low, high = float(self.low), float(self.high)
        if self.kind in ("log_uniform", "int_log"):
            value = math.exp(rng.uniform(math.log(low), math.log(high)))
        else:
            value = rng.uniform(low, high)
        if self.kind.startswith("int"):
            return int(min(max(round(value), low), high))
        return value

    @property
    def size(self) -> float:
        """Distinct values after rounding (inf: not counted)."""
        if self.kind == "choice":
            return len(self.choices)
        if self.kind.startswith("int"):
            return self.high - self.low + 1
        if self.kind == "uniform":
            return round((self.high - self.low) * 10 ** self.precision) + 1
        return math.inf


def _scalar(text: str) -> Value:
    text = text.strip()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _dimension(value: Any) -> Any:
    """A Dimension from its text (``int_log:8:512``), or from a list of choices: values, or
    the texts of a command line (``--units 128 256 512``: numbers where they read as such)."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str) \
            and ":" in value[0]:
        value = value[0]  # one option value: a dimension's text
    if isinstance(value, str) and ":" not in value:
        value = [value]  # one value to choose: --layers 2
    if isinstance(value, str):
        return Dimension.parse(value)
    if isinstance(value, list):
        return Dimension(kind="choice",
                         choices=[_scalar(v) if isinstance(v, str) else v for v in value])
    return value


#: A Dimension field: also given as its text or as a list of choices (in a flow run's
#: parameters too: the JSON schema the Prefect server checks runs against says so).
DimensionField = Annotated[Dimension, BeforeValidator(
    _dimension, json_schema_input_type=Dimension | str | list[float | int | str])]


def choices(values: list) -> Dimension:
    return Dimension(kind="choice", choices=list(values))


class TuneSpace(BaseModel):
    """One :class:`Dimension` per hyperparameter; ``epochs``, ``seed`` and the protocol are
    fixed for every trial. The default is the exercise's random-search space."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dropout: DimensionField = Field(
        default_factory=lambda: choices(DEFAULT_RANDOM_SPACE.dropout),
        description="dropout rate: choice:A,B,.. or uniform:LOW:HIGH[:DECIMALS], in [0, 1)")
    units: DimensionField = Field(
        default_factory=lambda: choices(DEFAULT_RANDOM_SPACE.units),
        description="hidden units: choice:A,B,.. or int_log:LOW:HIGH or int:LOW:HIGH")
    layers: DimensionField = Field(
        default_factory=lambda: choices([1]),
        description="hidden layers, each of `units` units: choice:1,2,3 or int:1:3 (1: the "
                    "exercise's network, not a searched dimension)")
    activation: DimensionField = Field(
        default_factory=lambda: choices(DEFAULT_RANDOM_SPACE.activation),
        description="hidden activation: choice of relu, elu, sigmoid, tanh")
    learning_rate: DimensionField = Field(
        default_factory=lambda: choices(DEFAULT_RANDOM_SPACE.learning_rate),
        description="Adam learning rate: choice:A,B,.. or log_uniform:LOW:HIGH[:DIGITS]")
    batch_size: DimensionField = Field(
        default_factory=lambda: choices(DEFAULT_RANDOM_SPACE.batch_size),
        description="minibatch size: choice:A,B,.. or int_log:LOW:HIGH")
    epochs: int = Field(10, ge=1, description="epochs of every trial")
    seed: int = Field(0, ge=0, description="training seed of every trial")
    epoch_metrics: bool = Field(False, description="recompute training metrics without "
                                "dropout after every epoch (off in the exercise's searches)")
    checkpoint: bool = Field(False, description="report the best-validation epoch's weights "
                             "(off in the exercise's searches: the last epoch is scored)")

    def dimensions(self) -> dict[str, Dimension]:
        """The searched dimensions: every search field but a quiet one left at its one
        default value (``layers``: then every trial has one hidden layer, :meth:`fixed`)."""
        return {name: getattr(self, name) for name in SEARCH_FIELDS
                if name not in self._quiet()}

    def _quiet(self) -> dict[str, object]:
        return {name: default for name, default in QUIET_FIELDS.items()
                if getattr(self, name) == choices([default])}

    def identity(self) -> dict:
        """The space as a study's identity records it: a quiet field left at its default is
        left out, so a study made before the field existed keeps working."""
        return self.model_dump(mode="json", exclude=set(self._quiet()))

    def distributions(self) -> dict[str, Any]:
        return {name: dim.distribution() for name, dim in self.dimensions().items()}

    def fixed(self) -> dict:
        return {"epochs": self.epochs, "seed": self.seed, "epoch_metrics": self.epoch_metrics,
                "checkpoint": self.checkpoint, **self._quiet()}

    def config(self, params: dict[str, Value]) -> TrialConfig:
        """The trial config of sampled ``params``, each rounded to its precision."""
        dims = self.dimensions()
        return make_config(**self.fixed(),
                           **{name: dims[name].round(value) for name, value in params.items()})

    def params_of(self, config: TrialConfig) -> dict[str, Value] | None:
        """The sampled values that give ``config`` in this space, or None if it does not lie
        in it (another fixed field, or a value no dimension can give)."""
        if any(getattr(config, name) != value for name, value in self.fixed().items()):
            return None
        dims = self.dimensions()
        params = {name: getattr(config, name) for name in dims}
        if not all(dims[name].holds(value) for name, value in params.items()):
            return None
        return params

    @property
    def size(self) -> float:
        return math.prod(dim.size for dim in self.dimensions().values())

    def describe(self) -> str:
        return " x ".join(f"{name} {dim}" for name, dim in self.dimensions().items())


def make_tune_space(**values) -> TuneSpace:
    """A TuneSpace from keyword values (Dimension texts, lists or Dimensions), validated: one
    UserError line naming the bad value; every range's ends must make valid trials."""
    try:
        space = TuneSpace(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        raise as_user_error(exc) from None
    for name, dim in space.dimensions().items():
        ends = dim.choices if dim.kind == "choice" else [dim.round(dim.low),
                                                           dim.round(dim.high)]
        for value in ends:
            make_config(**{name: value}, **space.fixed())
    return space


def read_space_file(path: str | Path) -> TuneSpace:
    """A TuneSpace from a TOML or JSON file of ``name = "kind:args"`` (or a list of choices);
    fields left out keep the default."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"space file {path}: {exc.strerror}") from None
    try:
        values = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        kind = "JSON" if path.suffix == ".json" else "TOML"
        raise UserError(f"space file {path}: not valid {kind}: {exc}") from None
    if not isinstance(values, dict):
        raise UserError(f"space file {path}: expected a table of name = value")
    try:
        return make_tune_space(**values)
    except UserError as exc:
        raise UserError(f"space file {path}: {exc}") from None


#: The notebook's space: every hyperparameter a choice among the exercise's values.
DEFAULT_TUNE_SPACE = TuneSpace()
