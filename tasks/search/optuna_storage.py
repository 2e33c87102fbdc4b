"""The Optuna side every search shares: where studies are stored, what a trial records.

Tunes keep their studies here, and every grid and random run is exported here too
(:mod:`tasks.reports.optuna_export`), so optuna-dashboard shows them all.

Several processes may use one storage at once (two tunes of one study, a grid exporting while
a tune runs). For a SQLite file that needs two things Optuna does not do by itself:

* **a lock for the first creation.** Opening a new SQLite storage creates its tables and
  stamps its schema version (Alembic); two processes doing it at once both insert the version
  row and one dies with ``UNIQUE constraint failed: alembic_version.version_num`` (measured:
  3 of 3 tries with two processes started together). :func:`storage_lock` is an exclusive
  ``fcntl.flock`` on ``<name>.db.lock`` beside the file; :func:`open_storage` opens (and so
  creates) the storage under it. The tune also holds it while it creates or loads its study,
  fails stale trials and asks (see ``docs/tune.md``), and an export while it replaces
  its study. On PostgreSQL (the team stack's storage: tunes on several machines) the same
  lock is a PostgreSQL advisory lock, held by a connection of its own, so it spans machines
  and ends with its holder's session if the holder dies; other storages (MySQL) take none.
* **waiting for a busy file.** SQLite lets one writer at a time; a connection opened here
  waits up to :data:`SQLITE_TIMEOUT` seconds for the other one (Python's default is 5 s),
  and :func:`retry_when_locked` retries a step that still found the file locked.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import math
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tasks.files import exclusive_lock
from tasks.settings import storage_url as storage_url  # the rule lives with the settings
from tasks.trial.result import TrialResult

#: What the studies maximize.
OBJECTIVE = "val_accuracy"
#: Seconds a SQLite connection waits for another process's write before it fails.
SQLITE_TIMEOUT = 60

T = TypeVar("T")


def quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # the tune records the heartbeats of its asked trials itself (tasks.search.tune.heartbeats)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite storage URL; None for another database or in memory."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


_held = threading.local()  # lock file -> how deep this thread holds it (the lock is reentrant)


@contextlib.contextmanager
def storage_lock(url: str) -> Iterator[None]:
    """Hold the storage's exclusive lock (module doc): a ``flock`` on ``<file>.lock`` beside
    a SQLite file, across processes and threads; an advisory lock on PostgreSQL; nothing for
    other storages. Reentrant within a thread."""
    path = sqlite_file(url)
    postgres = path is None and is_postgresql(url)
    if path is None and not postgres:
        yield
        return
    lock: Any = url if postgres else path.resolve().with_name(path.name + ".lock")
    depth = getattr(_held, "depth", None)
    if depth is None:
        depth = _held.depth = {}
    if depth.get(lock):
        depth[lock] += 1
        try:
            yield
        finally:
            depth[lock] -= 1
        return
    if postgres:
        with advisory_lock(url):
            depth[lock] = 1
            try:
                yield
            finally:
                depth[lock] = 0
        return
    with exclusive_lock(lock):
        depth[lock] = 1
        try:
            yield
        finally:
            depth[lock] = 0


#: The PostgreSQL advisory lock key of the storage lock (any fixed 64-bit number).
ADVISORY_KEY = 0x6D6E6973_74737472  # "mnisttr"
_engines: dict[str, Any] = {}


def is_postgresql(url: str) -> bool:
    from sqlalchemy.engine import make_url

    return make_url(url).get_backend_name() == "postgresql"


@contextlib.contextmanager
def advisory_lock(url: str) -> Iterator[None]:
    """PostgreSQL's session advisory lock :data:`ADVISORY_KEY` on ``url``'s database, on a
    connection of its own (closed after; a dead holder's session ends and frees it)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.pool import NullPool

    engine = _engines.get(url)
    if engine is None:
        wait_for_servers()
        engine = _engines[url] = create_engine(url, poolclass=NullPool)
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": ADVISORY_KEY})
        try:
            yield
        finally:
            # a server restarted meanwhile ended the session, and the lock with it
            with contextlib.suppress(OperationalError):
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_KEY})


def open_storage(url: str, **heartbeat: Any):
    """Optuna's RDBStorage of ``url``, created (if new) under :func:`storage_lock`; a SQLite
    connection waits :data:`SQLITE_TIMEOUT` s for a busy file. ``heartbeat``: RDBStorage's
    ``heartbeat_interval``, ``grace_period``, ``heartbeat_stale_trial_callback``."""
    import optuna

    quiet_optuna()
    engine = ({"connect_args": {"timeout": SQLITE_TIMEOUT}} if sqlite_file(url) is not None
              else {"pool_pre_ping": True})  # a restarted server: its connections renewed
    wait_for_servers()
    with storage_lock(url):
        return optuna.storages.RDBStorage(url, engine_kwargs=engine, **heartbeat)


@functools.cache
def wait_for_servers() -> None:
    """From now on, this process's new PostgreSQL connections wait out a server that refuses
    them (a restart of the team stack's PostgreSQL): tried again with backoff for up to
    ``PIPELINE_OUTAGE`` s (every engine: Optuna's RDBStorage makes its own)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from tasks.settings import current

    @event.listens_for(Engine, "do_connect")
    def connect(dialect, record, cargs, cparams):
        started, delay = time.monotonic(), 0.25
        while True:
            try:
                return dialect.connect(*cargs, **cparams)
            except dialect.loaded_dbapi.OperationalError:
                if (dialect.name != "postgresql"
                        or time.monotonic() - started >= current().outage):
                    raise
                time.sleep(delay)
                delay = min(2 * delay, 2.0)


def database_locked(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) is SQLite's "database is locked"."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if "database is locked" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def retry_when_locked(step: Callable[[], T], attempts: int = 5, wait: float = 1.0) -> T:
    """``step()``, again (after ``wait``, doubling) while it fails on a locked SQLite file."""
    for attempt in range(attempts):
        try:
            return step()
        except Exception as error:
            if attempt == attempts - 1 or not database_locked(error):
                raise
            time.sleep(wait * 2 ** attempt)
    raise AssertionError("unreachable")


def json_safe(value: Any) -> Any:
    """``value`` with NaN as None: the dashboard reads attributes as strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def result_attrs(result: TrialResult) -> dict[str, Any]:
    """The user attributes of a trial: its test accuracy, key, source, and the whole result
    (so a report can be rebuilt from the study alone)."""
    return json_safe({"test_accuracy": result.test_accuracy, "trial_key": result.trial_key,
                      "train_seconds": result.train_seconds, "cached": result.cached,
                      "status": result.status, "result": result.model_dump(mode="json")})


#: The user attribute of a tune's trial added by a warm start (trained before, by any search).
IMPORTED_ATTR = "imported"


def frozen_trial(number: int, result: TrialResult, distributions: dict[str, Any],
                 values: Sequence[float] | None = None):
    """An Optuna FrozenTrial of a finished TrialResult (its duration is the training time).
    ``values``: a multi-objective study's values of a complete trial (its first one the
    validation accuracy); without them, the single value of a study of :data:`OBJECTIVE`."""
    import optuna
    from optuna.trial import TrialState

    state = {"completed": TrialState.COMPLETE, "pruned": TrialState.PRUNED,
             "failed": TrialState.FAIL}[result.status]
    params = {name: getattr(result.config, name) for name in distributions}
    end = datetime.datetime.now()
    start = end - datetime.timedelta(seconds=result.train_seconds or 0.0)
    steps = {int(row["epoch"]): float(row["val_accuracy"]) for row in result.history
             if row.get("val_accuracy") == row.get("val_accuracy")}  # not NaN
    return optuna.trial.FrozenTrial(
        number=number, trial_id=number, state=state,
        value=result.val_accuracy if state != TrialState.FAIL and values is None else None,
        values=list(values) if values is not None and state == TrialState.COMPLETE else None,
        datetime_start=start, datetime_complete=end, params=params,
        distributions=distributions, user_attrs=result_attrs(result), system_attrs={},
        intermediate_values=steps)
