"""The project's own settings: one typed object, the only reader of ``PIPELINE_*`` variables.

Prefect's settings stay Prefect's: the few the project needs for every command, from any
working directory, are set by the command line (:data:`tasks.cli.PREFECT_SETTINGS`), and
``PREFECT_*`` variables override them. TensorFlow's thread variables stay TensorFlow's (set
per worker by :mod:`tasks.search.workers`).

Every field can be set with its environment variable (the table in docs/settings.md is
checked against this class by a test):
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tasks.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class Settings(BaseModel):
    """Where things go and how a run behaves, beyond its parameters."""

    model_config = ConfigDict(frozen=True)

    mnist_path: str | None = Field(
        None, json_schema_extra={"env": "MNIST_PATH"},
        description="the Keras-format mnist.npz to use when --data is not given (unset: "
                    "Keras' cache, downloaded once)")
    data_dir: Path = Field(
        PROJECT_ROOT / "data", json_schema_extra={"env": "PIPELINE_DATA_DIR"},
        description="processed splits (data/processed/) and each trial's weights "
                    "(data/trials/); --data-dir overrides it")
    reports_dir: Path = Field(
        PROJECT_ROOT / "reports", json_schema_extra={"env": "PIPELINE_REPORTS_DIR"},
        description="one folder per run; --reports-dir overrides it")
    faults: list[dict[str, Any]] = Field(
        default_factory=list, json_schema_extra={"env": "PIPELINE_FAULTS"},
        description='fault injection for tests and demos, JSON: [{"units": 16, "times": 1}] '
                    "fails the first attempt of every trial with 16 units (times -1: every "
                    'attempt; "error": "deterministic": a ValueError, never retried)')
    concurrency_tag: str | None = Field(
        None, json_schema_extra={"env": "PIPELINE_CONCURRENCY_TAG"},
        description="a Prefect tag on every training task, to cap trainings across runs "
                    "with `prefect concurrency-limit create TAG N` (off by default)")
    optuna_storage: str | None = Field(
        None, json_schema_extra={"env": "PIPELINE_OPTUNA_STORAGE"},
        description="the Optuna storage every run is written to and tunes keep their "
                    "studies in (any Optuna storage URL; unset: "
                    "`sqlite:///<data dir>/optuna.db`); --storage overrides it for a tune")
    locks: str | None = Field(
        None, json_schema_extra={"env": "PIPELINE_LOCKS"},
        description="where a trial key's lock lives while it trains (one training per key "
                    "across runs): unset, OS file locks beside the result storage (one "
                    "machine); `redis://:PASSWORD@HOST:PORT/0`, Redis (several machines; "
                    "needs the `team` extra; `scripts/up.sh --team` writes it)")
    retry_delays: list[float] = Field(
        default_factory=lambda: [2.0, 8.0], json_schema_extra={"env": "PIPELINE_RETRY_DELAYS"},
        description="seconds before each retry of a trial that failed transiently, comma "
                    "separated (jittered by half; the number of values is the number of "
                    "retries, at most 10); the tests set 0,0")
    tf_logs: bool = Field(
        False, json_schema_extra={"env": "PIPELINE_TF_LOGS"},
        description="1: show TensorFlow's own logs (what -v/--verbose sets)")
    lock_lease: float = Field(
        30.0, ge=1, json_schema_extra={"env": "PIPELINE_LOCK_LEASE"},
        description="seconds a Redis trial lock outlives its holder's last renewal (renewed "
                    "every third of that): how long a key whose holder was killed or stalled "
                    "stays blocked; a run's value travels with its trials to the workers")
    outage: float = Field(
        120.0, ge=0, json_schema_extra={"env": "PIPELINE_OUTAGE"},
        description="seconds a run waits, retrying with backoff, for a team stack service "
                    "that stopped answering (the trial locks' Redis, the Optuna storage's "
                    "PostgreSQL: a restart) before it stops with one line (a rerun resumes); "
                    "a run's value travels with its trials to the workers")

    onnx_max_params: int = Field(
        5_000_000, ge=0, json_schema_extra={"env": "PIPELINE_ONNX_MAX_PARAMS"},
        description="the most parameters a model may have for its `model.onnx` to be written "
                    "(the `export` extra): tf2onnx's conversion takes about 310 bytes of "
                    "memory per parameter (3.5 GB for an ensemble of 11.2 M); a larger model "
                    "gets no `model.onnx`, and `model.json` and the card say why; 0: no limit")
    tune_grace: float = Field(
        60.0, ge=1, json_schema_extra={"env": "PIPELINE_TUNE_GRACE"},
        description="seconds a tune's running trial may go without a heartbeat (one every "
                    "10 s) before another tune fails it as a dead tune's and asks its config "
                    "again; a trial whose tune process on this host is gone is failed at once")
    test_hold: Path | None = Field(
        None, json_schema_extra={"env": "PIPELINE_TEST_HOLD"},
        description="tests only: a folder where a trial stops at a point the test armed "
                    "(before training, after an epoch, after its result is stored, before "
                    "its lock is released) until the test releases it (docs/settings.md, "
                    "\"Testing\"); travels with a run's trials to the workers")
    test_hold_timeout: float = Field(
        120.0, gt=0, json_schema_extra={"env": "PIPELINE_TEST_HOLD_TIMEOUT"},
        description="tests only: seconds a held trial waits for its release before it goes "
                    "on by itself (a failed test never leaves shared workers stuck)")
    test_epoch_delay: float = Field(
        0.0, ge=0, json_schema_extra={"env": "PIPELINE_TEST_EPOCH_DELAY"},
        description="tests only: seconds added after every epoch of every trial (the fault "
                    "suites' slowed variant); travels with a run's trials to the workers")

    @field_validator("faults", mode="before")
    @classmethod
    def _faults_json(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = json.loads(value) if value.strip() else []
        return value

    @field_validator("retry_delays", mode="before")
    @classmethod
    def _delays_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part for part in value.replace(" ", "").split(",") if part]
        return value

    @field_validator("retry_delays")
    @classmethod
    def _delays_bounds(cls, value: list[float]) -> list[float]:
        if not 1 <= len(value) <= 10 or any(delay < 0 for delay in value):
            raise ValueError(f"PIPELINE_RETRY_DELAYS={','.join(f'{d:g}' for d in value)!r}: "
                             "1 to 10 delays in seconds, each >= 0 (e.g. 2,8)")
        return value

    @field_validator("locks")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://")):
            raise ValueError(f"PIPELINE_LOCKS={value!r}: unset (file locks) or a "
                             "redis:// or rediss:// URL")
        return value

    @field_validator("concurrency_tag", "optuna_storage", "mnist_path", "locks", "test_hold",
                     mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return value.strip() or None if isinstance(value, str) else value

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings as the environment gives them (unset variables keep the defaults)."""
        environ = os.environ if environ is None else environ
        values = {name: environ[env] for name, env in environment_variables().items()
                  if environ.get(env, "") != ""}
        try:
            return cls(**values)
        except ValidationError as exc:
            first = exc.errors()[0]
            env = environment_variables().get(str(first["loc"][0]) if first["loc"] else "", "")
            message = first["msg"].removeprefix("Value error, ")
            shown = message if env and env in message else f"{env}: {message}"
            raise UserError(f"bad setting in the environment: {shown}") from exc
        except ValueError as exc:
            raise UserError(f"bad setting in the environment: {exc}".splitlines()[0]) from exc


def environment_variables() -> dict[str, str]:
    """Field name -> its environment variable."""
    return {name: field.json_schema_extra["env"]
            for name, field in Settings.model_fields.items()}


def settings_table() -> str:
    """The settings table of docs/settings.md, generated from :class:`Settings` (a test keeps it
    equal to it: ``python -m tasks.settings`` prints it)."""
    rows = ["| variable | default | what it sets |", "|---|---|---|"]
    for field in Settings.model_fields.values():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, Path):
            default = f"./{default.relative_to(PROJECT_ROOT)}"
        elif isinstance(default, list) and default:
            default = ",".join(f"{value:g}" for value in default)
        shown = "unset" if default in (None, [], False) else f"`{default}`"
        rows.append(f"| `{field.json_schema_extra['env']}` | {shown} | {field.description} |")
    return "\n".join(rows)


def read_env_file(path: str | os.PathLike) -> dict[str, str]:
    """The ``export NAME=value`` lines of an environment file (``team.env``, written by
    ``scripts/up.sh --team``), as a dict."""
    values = {}
    for line in Path(path).read_text().splitlines():
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            values[name] = value
    return values


#: This process's settings given by a command line's flags (``-v``), over the environment's.
_OVERRIDES: dict[str, Any] = {}


def override(**values: Any) -> None:
    """Set fields for this process (a command line's flags, a worker's start-up), over what
    the environment says. Worker processes get them from their runner (tasks.search.runners)."""
    _OVERRIDES.update(Settings(**values).model_dump(include=set(values)))


def current() -> Settings:
    """The settings now: the environment's (cheap to read, and what a worker process that
    inherited the environment sees too), with this process's overrides."""
    settings = Settings.from_environment()
    return settings.model_copy(update=_OVERRIDES) if _OVERRIDES else settings


def storage_url(storage: str | None = None, data_dir: str | os.PathLike | None = None) -> str:
    """``storage``, else ``$PIPELINE_OPTUNA_STORAGE``, else ``sqlite:///<data dir>/optuna.db``
    (``data_dir``: the run's ``--data-dir``; the storage moves with the data directory)."""
    if storage:
        return storage
    settings = current()
    if settings.optuna_storage:
        return settings.optuna_storage
    folder = Path(data_dir or settings.data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(folder / 'optuna.db').resolve()}"


if __name__ == "__main__":
    print(settings_table())
