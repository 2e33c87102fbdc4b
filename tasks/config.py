"""Typed, validated configurations: one training trial, and the data split.

Every default of the original exercise lives here as a field default, so each is a parameter,
not a constant. Invalid values fail on construction with a message that names the field and
what is allowed (see :func:`tasks.errors.describe_validation_error`).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tasks.errors import as_user_error

Activation = Literal["relu", "elu", "sigmoid", "tanh", "linear"]
Backend = Literal["compiled", "keras"]
#: Flow-parameter types the Prefect server checks before a run is created.
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Seed = Annotated[int, Field(ge=0)]
_WithEpochs = TypeVar("_WithEpochs", bound=BaseModel)


def with_epochs(model: _WithEpochs, epochs: int | None) -> _WithEpochs:
    """``model`` (a trial config or a search space) with its ``epochs`` set to ``epochs``
    (unchanged when None): the flows' top-level ``epochs`` parameter, e.g.
    ``prefect deployment run ... --param epochs=1``."""
    return model if epochs is None else model.model_copy(update={"epochs": epochs})



#: Fields added to :class:`TrialConfig` after trial keys were first issued, with their defaults:
#: a field at its default is left out of the key (:meth:`TrialConfig.canonical_json`), so every
#: trial of before it keeps its key; any other value is part of its trials' keys.
ADDED_FIELDS: dict[str, object] = {"layers": 1}


class TrialConfig(BaseModel):
    """One network to train: ``layers`` x [Dense(units, activation) -> Dropout] ->
    Dense(classes) -> softmax, Adam (the exercise: one hidden layer)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    units: int = Field(128, ge=1, le=65536, description="hidden units (>= 1)")
    layers: int = Field(1, ge=1, le=32, description="hidden layers, each of `units` units "
                                                    "(1: the exercise's network)")
    dropout: float = Field(0.3, ge=0.0, lt=1.0, description="dropout rate in [0, 1)")
    activation: Activation = Field("relu", description="hidden activation")
    learning_rate: float = Field(1e-3, gt=0.0, le=10.0, description="Adam learning rate (> 0)")
    batch_size: int = Field(1000, ge=1, le=1_000_000, description="minibatch size (>= 1)")
    epochs: int = Field(10, ge=1, le=10_000, description="training epochs (>= 1)")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed for init, dropout and shuffling")
    epoch_metrics: bool = Field(
        True, description="recompute the training loss and accuracy without dropout after "
        "every epoch (the exercise's CalculateMetrics, which only its baseline uses); off: "
        "the epoch's running means, with dropout, as Keras' fit reports them")
    checkpoint: bool = Field(
        True, description="report the weights of the epoch with the best validation "
        "accuracy (the exercise's baseline checkpoint); off: the last epoch's, as in the "
        "exercise's grid and random searches")

    @field_validator("dropout", "learning_rate", mode="after")
    @classmethod
    def _round_floats(cls, value: float) -> float:
        # 0.1 typed on a command line and 0.1 from numpy must give the same cache key.
        return float(f"{value:.12g}")

    def label(self) -> str:
        """Short human-readable description, used in progress lines and tables."""
        depth = f" layers={self.layers}" if self.layers != 1 else ""
        return (
            f"units={self.units}{depth} dropout={self.dropout:g} act={self.activation} "
            f"lr={self.learning_rate:g} batch={self.batch_size} epochs={self.epochs} "
            f"seed={self.seed}"
        )

    def training_cost(self, train_size: int = 60_000) -> float:
        """A rough relative cost of training this trial (for scheduling the costliest first):
        per-step overhead plus Adam's update, which both grow with steps, plus the matmuls."""
        steps = -(-train_size // self.batch_size)
        return self.epochs * self.layers * (steps * (1.0 + self.units / 16.0)
                                            + train_size * self.units / 256)

    def canonical_json(self) -> str:
        """Stable JSON of every field (sorted keys), the basis of the trial key; a field of
        :data:`ADDED_FIELDS` at its default is left out."""
        fields = self.model_dump(mode="json")
        for name, default in ADDED_FIELDS.items():
            if fields[name] == default:
                del fields[name]
        return json.dumps(fields, sort_keys=True)


class SplitSpec(BaseModel):
    """How the data becomes train / validation / test.

    Formats with a test part (a Keras-layout npz, IDX files): the test split is the first
    ``test_size`` of the test part and the rest is validation; the exercise's default,
    80 %, is MNIST's ``x_test[:8000]`` / ``x_test[8000:]``. Formats without one (image
    folders, tables): a seeded, stratified hold-out of ``test_size`` (default 20 %) and
    ``validation_size`` (default 10 %) of all rows, unless a table's ``split`` column says.
    A size is a count (``8000``) or a fraction below 1 (``0.8``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    train_samples: int | None = Field(
        None, ge=1, description="use only the first N training images (None: all)"
    )
    test_size: float | None = Field(
        None, gt=0, description="the test split: a count (8000) or a fraction (0.8) of the "
        "test part (default 80 %: MNIST's x_test[:8000]); for data without a test part, of "
        "all rows (default 20 %)")
    validation_size: float | None = Field(
        None, gt=0, description="for data without a test part: the validation split, a count "
        "or a fraction of all rows (default 10 %); with a test part, validation is the rest "
        "of it")

    @field_validator("test_size", "validation_size")
    @classmethod
    def _count_or_fraction(cls, value: float | None, info) -> float | None:
        if value is not None and value >= 1 and value != int(value):
            raise ValueError(f"{info.field_name}={value:g}: a count (a whole number) or a "
                             "fraction below 1")
        return value


#: The modules whose code decides what a trial computes, by their *name in the key* (the name
#: each had when trial keys were first derived) -> where the module lives now. The key hashes
#: their content, never their location: moving a module changes no key (tests/test_trust.py).
TRAINING_CODE: dict[str, str] = {
    "tasks.engine": "tasks.engine.train",
    "tasks.epochs": "tasks.engine.epochs",
    "tasks.backend_compiled": "tasks.engine.backend_compiled",
    "tasks.backend_keras": "tasks.engine.backend_keras",
    "tasks.model": "tasks.engine.model",
}
#: Every module the training code imports from the project, where it lives now -> its name in
#: the key, so that an import statement reads the same wherever the module went.
KEY_NAMES: dict[str, str] = {module: name for name, module in TRAINING_CODE.items()} | {
    "tasks.engine.tf_runtime": "tasks.tf_runtime",
    "tasks.data.splits": "tasks.data",
    "tasks.data.mnist": "tasks.data",  # where Splits lived until the data took other formats
}
#: Packages whose versions decide it too.
TRAINING_PACKAGES = ("tensorflow", "keras", "numpy")
#: Training code proven to compute what the code it replaced computed, by module (its name in
#: the key): {its fingerprint now: the fingerprint it replaces}. The key keeps the replaced
#: one, so a change that generalizes the engine retrains no cached trial. The proof is a test
#: (tests/test_engine_equivalence.py): the replaced modules, kept in tests/engine_before/, and
#: today's train byte-identical weights on MNIST-shaped data for every activation and
#: protocol. Any later edit of such a module changes its fingerprint, so its entry no longer
#: applies (and that test says so): keys follow the code again unless a new proof is added.
#: Here: hidden layers (``layers``), any input width and any number of classes (the network
#: follows the data), MNIST's one-layer network on 784 inputs and 10 classes unchanged.
EQUIVALENT_CODE: dict[str, dict[str, str]] = {
    "tasks.backend_compiled": {
        "4e9e204517c79e66189bc779e03253d2c433dfd7fba35c917723c5ecca14d2db":
            "69d2b4cd60c3254c5148f2b885bdb82aca0a0fa0002608876228a89445a27df3"},
    "tasks.backend_keras": {
        "1e0671fa0eedcfeb12159871e0f3f6bed292dbfa02d14ac4b811e6f3f0eba74a":
            "52ef01c2242a1bd93836471ee8d667d7503e7dedc242fb16403c21b0c9786890"},
    "tasks.model": {
        "a743299b60c894cb65b5dd1197826f263b2642feabed981619fc926f49a1c893":
            "f6204aa3422b2417dc16bd2e232de5a64c2781fc7b33e14ee25bdd3692d0abf3"},
}
#: Activations added to the training code after trial keys were first issued. Their entries in
#: the code's activation tables (dict literals indexed by the name ``activation``) are taken out
#: of the modules' fingerprints and enter only the keys of the trials that use them: adding an
#: activation changes no other trial's key (tests/test_trust.py), and editing its entry changes
#: only its own trials' keys.
ADDED_ACTIVATIONS = ("linear",)


def _key_import_names(tree: ast.AST) -> None:
    """Rewrite the project's import statements in ``tree`` to the modules' names in the key
    (``from tasks.engine import backend_compiled`` reads ``from tasks import
    backend_compiled``)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module in KEY_NAMES:
                node.module = KEY_NAMES[node.module]
                continue
            for alias in node.names:
                moved = KEY_NAMES.get(f"{node.module}.{alias.name}")
                if moved is not None:
                    node.module, _, alias.name = moved.rpartition(".")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                alias.name = KEY_NAMES.get(alias.name, alias.name)
    # import sorting orders the project's imports by where modules live; the key sees them in
    # the order of their names in the key
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        start = 0
        while start < len(body):
            end = start
            while end < len(body) and _project_import(body[end]):
                end += 1
            body[start:end] = sorted(body[start:end], key=lambda statement: statement.module)
            start = end + 1


def _project_import(statement: ast.stmt) -> bool:
    return (isinstance(statement, ast.ImportFrom) and statement.level == 0
            and (statement.module or "").split(".")[0] == "tasks")


def _take_added_activations(tree: ast.AST) -> dict[str, str]:
    """Remove the :data:`ADDED_ACTIVATIONS`' entries from the activation tables in ``tree``;
    return each one's code (its entries' syntax trees)."""
    taken: dict[str, str] = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Dict)
                and isinstance(node.slice, ast.Name) and node.slice.id == "activation"):
            continue
        table, kept = node.value, []
        for key, value in zip(table.keys, table.values, strict=True):
            if isinstance(key, ast.Constant) and key.value in ADDED_ACTIVATIONS:
                taken[key.value] = taken.get(key.value, "") + ast.dump(value)
            else:
                kept.append((key, value))
        table.keys, table.values = [key for key, _ in kept], [value for _, value in kept]
    return taken


def _code_fingerprint(source: str, added: dict[str, str] | None = None) -> str:
    """The module's syntax tree without docstrings, its project imports by their names in the
    key: comments, docstrings, formatting and a module's location do not change a trial's
    numbers, so they do not change its key. The added activations' table entries are left out
    and, when ``added`` is given, stored in it by activation."""
    tree = ast.parse(source)
    _key_import_names(tree)
    taken = _take_added_activations(tree)
    if added is not None:
        added.update(taken)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()


@functools.cache
def training_code_version() -> str:
    """Derived, never hand-kept: a hash of the training code's syntax trees
    (:data:`TRAINING_CODE`, with a module proven equivalent to earlier code by its earlier
    fingerprint: :data:`EQUIVALENT_CODE`) and of the versions of :data:`TRAINING_PACKAGES`. A
    change to how a trial is trained, or an upgrade of TensorFlow, gives every trial a new
    key."""
    parts = []
    for name, module in TRAINING_CODE.items():
        spec = importlib.util.find_spec(module)
        with open(spec.origin, encoding="utf-8") as handle:
            fingerprint = _code_fingerprint(handle.read())
        parts.append(f"{name}:{EQUIVALENT_CODE.get(name, {}).get(fingerprint, fingerprint)}")
    for package in TRAINING_PACKAGES:
        try:
            parts.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover
            parts.append(f"{package}==none")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


@functools.cache
def activation_code_version(activation: str) -> str:
    """The code of an added activation (:data:`ADDED_ACTIVATIONS`) in the training code's
    activation tables, hashed: part of the keys of its trials only."""
    parts = []
    for name, module in TRAINING_CODE.items():
        spec = importlib.util.find_spec(module)
        added: dict[str, str] = {}
        with open(spec.origin, encoding="utf-8") as handle:
            _code_fingerprint(handle.read(), added)
        if activation in added:
            parts.append(f"{name}:{added[activation]}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def trial_key(config: TrialConfig, data_fingerprint: str, backend: str = "compiled") -> str:
    """The identity of a trained trial: config + data content + training code + backend.

    Two trials with the same key would compute the same thing, so the cache never trains a
    key twice. The backend is part of it because the two backends differ in float details.
    """
    parts = [config.canonical_json(), data_fingerprint, training_code_version(), backend]
    if config.activation in ADDED_ACTIVATIONS:
        parts.append(f"activation:{activation_code_version(config.activation)}")
    payload = "|".join(parts)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def make_config(**values) -> TrialConfig:
    """A TrialConfig, with invalid values reported as one UserError line."""
    try:
        return TrialConfig(**values)
    except ValidationError as exc:
        raise as_user_error(exc) from None


def make_split(train_samples: int | None = None, test_size: float | None = None,
               validation_size: float | None = None) -> SplitSpec:
    """A SplitSpec, with invalid values reported as one UserError line."""
    try:
        return SplitSpec(train_samples=train_samples, test_size=test_size,
                         validation_size=validation_size)
    except ValidationError as exc:
        raise as_user_error(exc) from None
