"""One training per trial key, however many runs ask for it at once: OS file locks, or Redis.

The trial task runs under Prefect's SERIALIZABLE isolation: before it looks for a cached
result, it takes the lock of its cache key; a second run asking for the same key waits for the
lock, then finds the first run's result committed and reports it as from the cache.

Prefect's own ``FileSystemLockManager`` writes a lock file that lives until it is deleted or
its expiration passes, and the task engine asks for no expiration: a holder killed with
``kill -9`` (the OOM killer) would block that key for ever. This lock manager holds an OS lock
(``fcntl.flock``) on a file per key instead: the kernel releases it when its holder dies, so a
waiting run takes over at once, with no timeout to tune. Locks are per open file, so two
threads of one process exclude each other too. The lock files stay (empty); they are reused.

That is for one machine, or a shared filesystem whose locks are honoured across machines. A
cluster without one sets ``PIPELINE_LOCKS`` to a Redis URL (``scripts/up.sh --team`` writes
it): the locks are then ``prefect-redis``'s, held as *leases* (:class:`RedisLeaseLockManager`):
its lock manager, asked for no expiration, would keep a killed holder's lock for ever; a lease
expires :data:`LEASE_SECONDS` after its holder stops renewing it, so a run waiting for a key
whose holder was killed takes over within that time.

The trial task is configured with :class:`TrialLockManager`, which picks one of the two in the
process that trains, from that process's ``PIPELINE_LOCKS`` (a worker machine is configured
like the machine that submits: the same environment file). The lease and the outage bound
below are the submitting run's when it sets them: they travel with its trials.

The Redis leases, their renewal and what happens in an outage: :mod:`tasks.trial.leases`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any

from tasks.trial.leases import (  # noqa: F401 (the defaults, where they always were)
    LEASE_SECONDS,
    OUTAGE_SECONDS,
    POLL_SECONDS,
    PollingLockManager,
    redis_lease_lock_manager,
)


def default_lock_directory() -> Path:
    """Beside Prefect's local result storage: the cache the locks protect."""
    from prefect.settings import get_current_settings

    storage = Path(get_current_settings().results.local_storage_path).expanduser()
    return storage.parent / f"{storage.name}-locks"


class FileLockManager(PollingLockManager):
    """A Prefect lock manager (``prefect.locking.protocol.LockManager``) on ``fcntl.flock``.

    ``directory``: where the lock files go (default: :func:`default_lock_directory`, resolved
    when first used, in the process that trains)."""

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = Path(directory) if directory is not None else None
        self._held: dict[str, tuple[int, str]] = {}  # key -> (file descriptor, holder)
        self._guard = threading.Lock()

    def __getstate__(self) -> dict:
        # sent to worker processes: locks are the process's own, never shipped
        return {"directory": self.directory}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["directory"])

    def _path(self, key: str) -> Path:
        directory = self.directory or default_lock_directory()
        directory.mkdir(parents=True, exist_ok=True)
        name = key if len(key) < 200 else hashlib.sha256(key.encode()).hexdigest()
        return directory / f"{name}.lock"

    def _try(self, key: str) -> int | None:
        """A descriptor holding the key's lock, or None if another holds it."""
        fd = os.open(self._path(key), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def acquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                     hold_timeout: float | None = None) -> bool:
        """Wait (up to ``acquire_timeout`` seconds; None: as long as it takes) for the lock.
        ``hold_timeout`` is not needed: a dead holder's lock is released by the kernel."""
        with self._guard:
            if key in self._held:
                return self._held[key][1] == holder
        deadline = None if acquire_timeout is None else time.monotonic() + acquire_timeout
        while True:
            fd = self._try(key)
            if fd is not None:
                with self._guard:
                    self._held[key] = (fd, holder)
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(POLL_SECONDS)

    def release_lock(self, key: str, holder: str) -> None:
        with self._guard:
            held = self._held.get(key)
            if held is None or held[1] != holder:
                raise ValueError(f"No lock held by {holder} for transaction with key {key}")
            del self._held[key]
        fd = held[0]
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def is_locked(self, key: str) -> bool:
        with self._guard:
            if key in self._held:
                return True
        fd = self._try(key)
        if fd is None:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        return False

    def is_lock_holder(self, key: str, holder: str) -> bool:
        with self._guard:
            held = self._held.get(key)
        return held is not None and held[1] == holder


#: The settings a run's trials carry to the processes that train them, when the run set them
#: (its environment): a test, or a run that wants a shorter lease, needs no restart of the
#: workers. The lease and the outage bound, and the test hold's (:mod:`tasks.trial.hold`).
RUN_SETTINGS = ("lock_lease", "outage", "test_hold", "test_hold_timeout", "test_epoch_delay")


def run_settings() -> dict[str, Any]:
    """This process's :data:`RUN_SETTINGS` that its environment sets."""
    from tasks.settings import current

    settings = current()
    return {name: getattr(settings, name) for name in RUN_SETTINGS
            if name in settings.model_fields_set}


class TrialLockManager:
    """The trial task's lock manager: with ``directory``, OS file locks there
    (:class:`FileLockManager`); without, ``PIPELINE_LOCKS`` decides, read when first used in
    the process that trains: unset, file locks beside the result storage; a Redis URL, Redis
    leases (module doc). Pickles as its ``directory`` and the submitting run's lock settings
    (:func:`run_settings`): a worker process chooses its locks for itself, with the
    run's lease and outage bound (and test hold) where the run set them."""

    def __init__(self, directory: str | os.PathLike | None = None,
                 settings: dict[str, float] | None = None):
        self.directory = Path(directory) if directory is not None else None
        self.settings = dict(settings or {})
        self._manager: Any = None
        self._guard = threading.Lock()

    def __getstate__(self) -> dict:
        return {"directory": self.directory, "settings": self.settings or run_settings()}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["directory"], state.get("settings"))

    @property
    def manager(self):
        """The lock manager in use (chosen on first use)."""
        with self._guard:
            if self._manager is None:
                from tasks.settings import current

                settings = current()
                url = None if self.directory is not None else settings.locks
                if url:
                    values = {name: getattr(settings, name) for name in RUN_SETTINGS}
                    values.update(self.settings)
                    self._manager = redis_lease_lock_manager(
                        url, lease=values["lock_lease"], outage=values["outage"])
                else:
                    self._manager = FileLockManager(self.directory)
            return self._manager

    def acquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                     hold_timeout: float | None = None) -> bool:
        return self.manager.acquire_lock(key, holder, acquire_timeout, hold_timeout)

    async def aacquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                            hold_timeout: float | None = None) -> bool:
        return await self.manager.aacquire_lock(key, holder, acquire_timeout, hold_timeout)

    def release_lock(self, key: str, holder: str) -> None:
        from tasks.settings import current
        from tasks.trial.hold import hold_at_release

        # the test hold's points "stored" and "release" (tests only; off by default)
        hold_at_release(key, current().model_copy(update=self.settings))
        self.manager.release_lock(key, holder)

    def is_locked(self, key: str) -> bool:
        return self.manager.is_locked(key)

    def is_lock_holder(self, key: str, holder: str) -> bool:
        return self.manager.is_lock_holder(key, holder)

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        return self.manager.wait_for_lock(key, timeout)

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        return await self.manager.await_for_lock(key, timeout)


#: The name tasks/trial/task.py configures the trial task with (and tests use with a
#: directory, i.e. file locks): the same class.
FlockLockManager = TrialLockManager
