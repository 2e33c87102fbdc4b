"""How a run is carried out, whatever it searches: every shared run option, declared once.

Each flow takes :class:`RunOptions` as its ``run`` parameter and, when it fans trials out,
:class:`FanOut` as ``fan_out``. The command line (:mod:`tasks.options` turns each field into
an option: ``--workers 2``), the Prefect UI's run form, the server's parameter schema and
``prefect.yaml`` all come from these fields; their bounds are checked once, by pydantic, with
a one-line error naming the value (``workers=0: must be greater than or equal to 1``).

From a deployment, give a group as JSON: ``--param fan_out='{"workers": 2}'``; the fields
left out keep their defaults.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from tasks.config import Backend, NonNegativeInt, PositiveInt, Seed, SplitSpec, make_split
from tasks.durations import check_budget
from tasks.errors import UserError
from tasks.settings import storage_url

RunnerKind = Literal["auto", "threads", "processes", "dask"]

#: The flows' top-level ``epochs`` (``prefect deployment run ... --param epochs=1``).
Epochs = Annotated[PositiveInt | None, Field(
    description="epochs of every trial (default: each part's own: 10)",
    json_schema_extra={"group": "training"})]
#: The seed of the random draws of configs (random search, best-of-N study).
DrawSeed = Annotated[Seed, Field(
    description="seed of the random draw of configs (a larger --trials or pool extends the "
                "smaller one)")]


#: ``--budget``: training minutes a random search or a tune may spend
#: (:mod:`tasks.search.spending`).
Budget = Annotated[str | None, AfterValidator(check_budget), Field(
    description="training minutes to spend: 10m, 90s, 1.5h (a plain number is minutes). "
                "Counted as the trials' measured training time over all workers (a trial "
                "from the cache at its measured time), the axis of the report's per-budget "
                "curve; no trial starts that the rest of the budget cannot finish")]

_DATA = {"group": "data and output"}
_TRAINING = {"group": "training"}
_FAN_OUT = {"group": "fan-out"}


class RunOptions(BaseModel):
    """Where the data comes from and the results go, and which training backend runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data: str | None = Field(
        None, json_schema_extra=_DATA | {"metavar": "PATH|NAME"},
        description="the data: a Keras-layout .npz, a folder of IDX files, a folder of "
                    "images with one subfolder per class, a Parquet or CSV table, or a name: "
                    "mnist, fashion-mnist (default: MNIST from $MNIST_PATH, else Keras' "
                    "cache/download)")
    label: str = Field(
        "label", json_schema_extra=_DATA | {"metavar": "COLUMN"},
        description="a table's label column (Parquet or CSV)")
    train_samples: PositiveInt | None = Field(
        None, json_schema_extra=_DATA, description="use only the first N training images "
                                                   "(quick runs)")
    test_size: Annotated[float, Field(gt=0)] | None = Field(
        None, json_schema_extra=_DATA | {"metavar": "N|FRACTION"},
        description="the test split: a count or a fraction of the data's test part (default "
                    "0.8: MNIST's first 8000 test images; the rest is validation); for data "
                    "without a test part (image folders, tables), of all rows (default 0.2)")
    validation_size: Annotated[float, Field(gt=0)] | None = Field(
        None, json_schema_extra=_DATA | {"metavar": "N|FRACTION"},
        description="for data without a test part: the validation split, a count or a "
                    "fraction of all rows (default 0.1; a table's split column overrides "
                    "both)")
    reports_dir: str | None = Field(
        None, json_schema_extra=_DATA | {"metavar": "DIR"},
        description="where the run folder is written (default: ./reports or "
                    "$PIPELINE_REPORTS_DIR)")
    data_dir: str | None = Field(
        None, json_schema_extra=_DATA | {"metavar": "DIR"},
        description="processed data, trained weights and the Optuna storage (default: "
                    "./data or $PIPELINE_DATA_DIR)")
    backend: Backend = Field(
        "compiled", json_schema_extra=_TRAINING,
        description="compiled: whole epochs as one TensorFlow graph (fast); keras: the "
                    "exercise's model.fit (reference)")

    def split(self) -> SplitSpec:
        """The data split these options ask for."""
        return make_split(self.train_samples, self.test_size, self.validation_size)

    def optuna_storage(self, storage: str | None = None) -> str:
        """The Optuna storage of this run: ``storage``, else ``$PIPELINE_OPTUNA_STORAGE``,
        else ``optuna.db`` in the data directory (it moves with ``--data-dir``)."""
        return storage_url(storage, self.data_dir)


class FanOut(BaseModel):
    """How trials are spread over workers, and how many may fail."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    runner: RunnerKind = Field(
        "auto", json_schema_extra=_FAN_OUT,
        description="task runner: auto (one worker process per core for a large search, one "
                    "thread for a small one), threads (in this process), processes (worker "
                    "processes) or dask (prefect-dask)")
    workers: PositiveInt | None = Field(
        None, json_schema_extra=_FAN_OUT,
        description="trials trained at once (default: one per core for processes and dask, "
                    "1 for threads)")
    dask_address: str | None = Field(
        None, json_schema_extra=_FAN_OUT | {"metavar": "tcp://HOST:PORT"},
        description="with --runner dask: an existing scheduler, tcp://HOST:PORT (default: a "
                    "local cluster of --workers processes)")
    worker_memory: float = Field(
        1.1, gt=0, json_schema_extra=_FAN_OUT | {"metavar": "GB"},
        description="memory one worker process needs, in GB: --runner auto starts no more "
                    "workers than fit in the available memory (1.1: measured for MNIST, "
                    "benchmarks/memory.py)")
    max_failures: NonNegativeInt | None = Field(
        0, json_schema_extra=_FAN_OUT,
        description="trials that may still fail after their retries while the run counts as "
                    "successful (0: any failed trial makes the run end Failed, exit status 1, "
                    "after its report is written)")

    @model_validator(mode="after")
    def _address_needs_dask(self) -> FanOut:
        if self.dask_address and self.runner != "dask":
            raise UserError(f"--dask-address needs --runner dask (not {self.runner})")
        return self
