"""The test hold: a trial stops at a named point until the test that armed it lets it go.

Off unless ``PIPELINE_TEST_HOLD=DIR`` is set (a test setting, docs/settings.md "Testing"); it
travels with a run's trials to the processes that train them, as the lease settings do
(:data:`tasks.trial.locks.RUN_SETTINGS`). "A trial is training" then is a state the test
holds, not a duration it hopes for, however fast the machine.

The points (:data:`POINTS`):

* ``train``: before training (after the trial took its key's lock);
* ``epoch``: after each epoch;
* ``stored``: after its result is stored (Prefect writes it, then releases the key's lock:
  the hold is at that release, when the result is there);
* ``release``: just before its key's lock (a Redis lease, a file lock) is released.

The protocol, all files in ``DIR``:

* the test arms a point: ``<key>.<point>.arm``, or ``*.<point>.arm`` for any trial;
* a trial that reaches an armed point writes ``<key>.<point>.held`` (JSON: key, point, host,
  pid, attempt, since), so a retry after a kill is told apart, and waits;
* it goes on when ``<key>.<point>.release`` or ``*.<point>.release`` exists, when the point
  is disarmed (no arm file), or after ``PIPELINE_TEST_HOLD_TIMEOUT`` seconds (a failed test
  never leaves shared workers stuck); then it removes its ``.held`` file.

``PIPELINE_TEST_EPOCH_DELAY`` slows every epoch by that many seconds (the tests' "slowed"
variant). Both live here, in the trial task's per-epoch callback, outside the engine: the
engine's files are hashed into every trial key.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

POINTS = ("train", "epoch", "stored", "release")
#: How often a held trial looks for its release (seconds).
POLL_SECONDS = 0.02


def run_settings():
    """This process's settings, with the ones the running trial's run carried over them (its
    lock manager holds them: :class:`tasks.trial.locks.TrialLockManager`)."""
    from tasks.settings import current

    settings = current()
    carried = _carried()
    return settings.model_copy(update=carried) if carried else settings


def _carried() -> dict[str, Any]:
    try:
        from prefect.transactions import get_transaction
    except ImportError:  # pragma: no cover (Prefect is a dependency)
        return {}
    transaction = get_transaction()
    manager = getattr(getattr(transaction, "store", None), "lock_manager", None)
    return dict(getattr(manager, "settings", None) or {})


def _attempt() -> int | None:
    try:
        from prefect.runtime import task_run

        return task_run.run_count or None
    except Exception:  # pragma: no cover (outside a task run)
        return None


def hold(point: str, key: str, *, settings=None, attempt: int | None = None) -> bool:
    """Wait at ``point`` if the test armed it for ``key`` (module doc); True if it held."""
    if point not in POINTS:
        raise ValueError(f"hold point {point!r}: one of {', '.join(POINTS)}")
    settings = settings or run_settings()
    if settings.test_hold is None:
        return False
    folder = Path(settings.test_hold)
    key = key.removeprefix("trial-")

    def armed() -> bool:
        return any((folder / f"{name}.{point}.arm").exists() for name in (key, "*"))

    def released() -> bool:
        return any((folder / f"{name}.{point}.release").exists() for name in (key, "*"))

    if not armed() or released():
        return False
    held = folder / f"{key}.{point}.held"
    info = {"key": key, "point": point, "host": socket.gethostname(), "pid": os.getpid(),
            "attempt": attempt if attempt is not None else _attempt(), "since": time.time()}
    scratch = folder / f".{key}.{point}.{os.getpid()}.tmp"
    scratch.write_text(json.dumps(info))
    os.replace(scratch, held)
    deadline = time.monotonic() + settings.test_hold_timeout
    try:
        while armed() and not released():
            if time.monotonic() >= deadline:
                logger.warning("test hold: %s at %s not released within %g s; going on",
                               key, point, settings.test_hold_timeout)
                break
            time.sleep(POLL_SECONDS)
    finally:
        held.unlink(missing_ok=True)
    return True


def epoch_hooks(on_epoch, key: str, attempt: int | None = None):
    """The trial's per-epoch callback with the test settings around ``on_epoch``: the hold's
    ``epoch`` point and ``PIPELINE_TEST_EPOCH_DELAY``. Without them: ``on_epoch`` itself."""
    settings = run_settings()
    if settings.test_hold is None and not settings.test_epoch_delay:
        return on_epoch

    def hooked(row):
        if settings.test_epoch_delay:
            time.sleep(settings.test_epoch_delay)
        hold("epoch", key, settings=settings, attempt=attempt)
        return on_epoch(row) if on_epoch is not None else None

    return hooked


def hold_at_release(key: str, settings=None) -> None:
    """In the lock manager, before a trial key's lock is released: the ``stored`` point (when
    the running transaction's result is in its store), then the ``release`` point."""
    settings = settings or run_settings()
    if settings.test_hold is None:
        return
    from prefect.transactions import get_transaction

    transaction = get_transaction()
    store = getattr(transaction, "store", None)
    try:  # this attempt wrote a result (a cached one read none), and it is there
        stored = (getattr(transaction, "_staged_value", None) is not None
                  and store is not None and store.exists(key=key))
    except Exception:  # the store unreadable: not stored, as far as the hold knows
        stored = False
    if stored:
        hold("stored", key, settings=settings)
    hold("release", key, settings=settings)
