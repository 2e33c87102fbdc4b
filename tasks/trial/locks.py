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

Redis outages and lost leases (design "renewal that detects a lost lease", docs/team.md):

* every Redis call of a trial waits out an outage with backoff (0.25 s doubling to 2 s), for
  up to ``PIPELINE_OUTAGE`` seconds (default 120) since Redis stopped answering; then it
  raises :class:`LockServiceDown`, and the run ends with that one line (the search loop ends a
  run on a :class:`tasks.errors.ServiceOutage`); finished trials are cached, a rerun resumes;
* the holder's renewal finds out when its lease is gone (Redis restarted without it, or the
  holder stalled past its lease: SIGSTOP, swapping). A lease that is free is taken again at
  once; a lease another run holds is *lost*: the training stops at its next epoch and raises
  :class:`LeaseLost`, a transient error, so Prefect retries the trial, whose new attempt waits
  for the other holder and takes its result from the cache. Before a result is committed the
  holder confirms its lease with Redis (:func:`ensure_lease`); a lease that had lapsed and was
  taken again counts only if no other run stored the result meanwhile. So a key is not
  trained twice, except in the moment between that check and the write (milliseconds).
* Redis keeps the leases on disk (``appendonly``, ``scripts/team-up.sh``): a restart loses
  none of them, and a holder keeps training through it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tasks.errors import ServiceOutage
from tasks.trial.faults import TransientTrainingError

logger = logging.getLogger(__name__)

#: How often a waiting run checks a held lock (seconds).
POLL_SECONDS = 0.2
#: Seconds a Redis lock outlives its last renewal, by default (``PIPELINE_LOCK_LEASE``): how
#: long a key whose holder was killed stays blocked. Its holder renews it every third of that.
LEASE_SECONDS = 30.0
#: Seconds a trial waits for an unreachable Redis, by default (``PIPELINE_OUTAGE``).
OUTAGE_SECONDS = 120.0
#: The longest pause between two tries of an unreachable Redis (seconds).
MAX_BACKOFF = 2.0


class LockServiceDown(ServiceOutage):
    """The trial locks' Redis did not answer for longer than ``PIPELINE_OUTAGE``."""


class LeaseLost(TransientTrainingError):
    """Another run holds the lease this trial's holder lost (it stalled, or Redis lost it):
    the trial stops; its retry takes the other run's result from the cache."""


def default_lock_directory() -> Path:
    """Beside Prefect's local result storage: the cache the locks protect."""
    from prefect.settings import get_current_settings

    storage = Path(get_current_settings().results.local_storage_path).expanduser()
    return storage.parent / f"{storage.name}-locks"


class FileLockManager:
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

    async def aacquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                            hold_timeout: float | None = None) -> bool:
        import anyio

        return await anyio.to_thread.run_sync(
            self.acquire_lock, key, holder, acquire_timeout, hold_timeout)

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

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_locked(key):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(POLL_SECONDS)
        return True

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        import anyio

        return await anyio.to_thread.run_sync(self.wait_for_lock, key, timeout)


# Renew the lease if it is the holder's, take it again if it is free; 1, 2, or 0 (another's).
_RENEW = """
local value = redis.call('get', KEYS[1])
if value == ARGV[1] then
  redis.call('pexpire', KEYS[1], ARGV[2])
  return 1
end
if not value then
  redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2])
  return 2
end
return 0
"""
# Delete the lease only if it is the holder's.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
HELD, RETAKEN, LOST = "held", "retaken", "lost"


@dataclass
class _Lease:
    holder: str
    lapsed: bool = False  # it was gone from Redis once and taken again
    lost: bool = False    # another holder has it


class RedisLeaseLockManager:
    """A Prefect lock manager (``prefect.locking.protocol.LockManager``) on Redis whose locks
    are leases: taken for ``lease`` seconds, renewed by a background thread every third of
    that while held, checked for loss, and every call waiting out an outage of Redis for up to
    ``outage`` seconds (module doc). One per process and settings
    (:func:`redis_lease_lock_manager`); it pickles as its settings."""

    def __init__(self, connection_url: str, lease: float = LEASE_SECONDS,
                 outage: float = OUTAGE_SECONDS):
        self.connection_url = connection_url
        self.lease = float(lease)
        self.outage = float(outage)
        self._client: Any = None
        self._leases: dict[str, _Lease] = {}
        self._guard = threading.Lock()     # the fields
        self._io = threading.RLock()       # a lease's renewal against its release
        self._renewer: threading.Thread | None = None
        self._down_since: float | None = None

    def __reduce__(self):
        return redis_lease_lock_manager, (self.connection_url, self.lease, self.outage)

    @property
    def address(self) -> str:
        """``host:port`` of the Redis (no password)."""
        parts = urlsplit(self.connection_url)
        return f"{parts.hostname}:{parts.port or 6379}"

    def _redis(self):
        if self._client is None:
            import redis

            # no retries of its own (this class waits out an outage), bounded socket waits
            self._client = redis.Redis.from_url(self.connection_url, socket_timeout=5,
                                                socket_connect_timeout=5, retry=None)
        return self._client

    @staticmethod
    def _name(key: str) -> str:
        return f"lock:{key}"  # prefect-redis' names

    # -- calls that wait out an outage ----------------------------------------------------
    def _unreachable(self, error: BaseException) -> bool:
        import redis

        return (isinstance(error, (redis.ConnectionError, redis.TimeoutError, OSError))
                and not isinstance(error, redis.AuthenticationError))

    def _went_down(self) -> float:
        with self._guard:
            if self._down_since is None:
                self._down_since = time.monotonic()
                logger.warning("the trial locks' Redis at %s does not answer; waiting for it "
                               "(up to %g s)", self.address, self.outage)
            return self._down_since

    def _came_back(self) -> None:
        with self._guard:
            if self._down_since is not None:
                logger.warning("the trial locks' Redis at %s answers again, after %.1f s",
                               self.address, time.monotonic() - self._down_since)
                self._down_since = None

    def down_message(self) -> str:
        return (f"the trial locks' Redis at {self.address} did not answer for {self.outage:g} "
                "s (PIPELINE_OUTAGE); finished trials are cached: once it is back "
                "(scripts/up.sh --team), rerun the same command to resume")

    def _call(self, call):
        """``call()``, tried again with backoff while Redis is unreachable, until it has been
        so for ``outage`` seconds: then :class:`LockServiceDown`."""
        delay = 0.25
        while True:
            try:
                value = call()
            except Exception as exc:
                if not self._unreachable(exc):
                    raise
                since = self._went_down()
                left = since + self.outage - time.monotonic()
                if left <= 0:
                    raise LockServiceDown(self.down_message()) from exc
                time.sleep(min(delay, left))
                delay = min(2 * delay, MAX_BACKOFF)
                continue
            self._came_back()
            return value

    # -- the lock manager protocol ----------------------------------------------------------
    def acquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                     hold_timeout: float | None = None) -> bool:
        """Wait (up to ``acquire_timeout`` seconds; None: as long as it takes) for the key's
        lease. ``hold_timeout`` is not used: the lease is renewed while held."""
        with self._guard:
            held = self._leases.get(key)
            if held is not None and held.holder == holder and not held.lost:
                return True
        deadline = None if acquire_timeout is None else time.monotonic() + acquire_timeout
        name, lease_ms = self._name(key), int(self.lease * 1000)
        while True:
            if self._call(lambda: self._redis().set(name, holder, nx=True, px=lease_ms)):
                with self._guard:
                    self._leases[key] = _Lease(holder)
                self._start_renewing()
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(POLL_SECONDS)

    async def aacquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                            hold_timeout: float | None = None) -> bool:
        import anyio

        return await anyio.to_thread.run_sync(
            self.acquire_lock, key, holder, acquire_timeout, hold_timeout)

    def release_lock(self, key: str, holder: str) -> None:
        """Delete the lease if it is still the holder's. Never raises: a lease lost to another
        holder is not this one's to release, and one Redis cannot be told about expires
        within the lease."""
        with self._io:
            with self._guard:
                held = self._leases.get(key)
                if held is None or held.holder != holder:
                    return
                del self._leases[key]
            if held.lost:
                return
            try:
                self._call(lambda: self._redis().eval(_RELEASE, 1, self._name(key), holder))
            except LockServiceDown:
                logger.warning("the lease of %s could not be released (Redis away); it "
                               "expires within %g s", key, self.lease)

    def forget(self, key: str, holder: str) -> None:
        """Drop the local record of a lease another holder has now (nothing to release)."""
        with self._guard:
            held = self._leases.get(key)
            if held is not None and held.holder == holder:
                del self._leases[key]

    def is_locked(self, key: str) -> bool:
        with self._guard:
            held = self._leases.get(key)
            if held is not None and not held.lost:
                return True  # held here (no call: Prefect asks this just before writing)
        return bool(self._call(lambda: self._redis().exists(self._name(key))))

    def is_lock_holder(self, key: str, holder: str) -> bool:
        with self._guard:
            held = self._leases.get(key)
            return held is not None and held.holder == holder and not held.lost

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_locked(key):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(POLL_SECONDS)
        return True

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        import anyio

        return await anyio.to_thread.run_sync(self.wait_for_lock, key, timeout)

    # -- leases: renewal, loss ------------------------------------------------------------
    def lost(self, key: str, holder: str) -> bool:
        """True once the renewal found the holder's lease held by another (no Redis call)."""
        with self._guard:
            held = self._leases.get(key)
            return held is None or held.holder != holder or held.lost

    def confirm(self, key: str, holder: str) -> str:
        """Ask Redis (waiting out an outage) whether the holder still holds the key: renew it
        and answer :data:`HELD`; :data:`RETAKEN` if it had lapsed and is the holder's again
        (whoever else trained the key meanwhile: see :func:`ensure_lease`); :data:`LOST` if
        another holder has it."""
        with self._io:
            with self._guard:
                held = self._leases.get(key)
            if held is None or held.holder != holder or held.lost:
                return LOST
            status = self._renew(key, held)
        if status == 0:
            return LOST
        return RETAKEN if held.lapsed else HELD

    def _renew(self, key: str, held: _Lease, wait: bool = True) -> int:
        """One renewal of a lease (the caller holds ``_io``): 1 renewed, 2 taken again,
        0 lost (the lease then records it)."""
        def renew():
            return int(self._redis().eval(_RENEW, 1, self._name(key), held.holder,
                                          int(self.lease * 1000)))

        status = self._call(renew) if wait else renew()
        with self._guard:
            if status == 2 and not held.lapsed:
                held.lapsed = True
                logger.warning("the lease of %s had lapsed (Redis lost it, or its holder "
                               "stalled past %g s); it is free, and held again", key,
                               self.lease)
            elif status == 0 and not held.lost:
                held.lost = True
                logger.warning("the lease of %s was lost to another holder (this one stalled "
                               "past %g s, or Redis lost it); its trial stops", key,
                               self.lease)
        return status

    def _start_renewing(self) -> None:
        with self._guard:
            if self._renewer is None or not self._renewer.is_alive():
                self._renewer = threading.Thread(target=self._renew_while_held, daemon=True,
                                                 name="redis-lease-renewal")
                self._renewer.start()

    def _renew_while_held(self) -> None:
        """Renew every held lease every third of the lease; while Redis is away, try again
        every few seconds (a lease that lapsed meanwhile is taken back the moment it answers,
        before another run's waiter polls it). Ends when nothing is held."""
        delay = 0.25
        while True:
            with self._guard:
                held = [(key, lease) for key, lease in self._leases.items() if not lease.lost]
                if not self._leases:
                    self._renewer = None
                    return
            wait = self.lease / 3
            try:
                for key, lease in held:
                    with self._io:
                        if self._leases.get(key) is lease:  # not released meanwhile
                            self._renew(key, lease, wait=False)
                self._came_back()
                delay = 0.25
            except Exception as exc:
                if not self._unreachable(exc):
                    logger.warning("lease renewal failed: %s", exc)
                else:
                    self._went_down()
                wait = min(delay, wait)
                delay = min(2 * delay, MAX_BACKOFF)
            time.sleep(wait)


_MANAGERS: dict[tuple[str, float, float], RedisLeaseLockManager] = {}
_MANAGERS_GUARD = threading.Lock()


def redis_lease_lock_manager(url: str, lease: float = LEASE_SECONDS,
                             outage: float = OUTAGE_SECONDS) -> RedisLeaseLockManager:
    """This process's :class:`RedisLeaseLockManager` on ``url``
    (``redis://:PASSWORD@HOST:PORT/DB``) with these settings: one per process, so its leases
    share one renewal thread and one connection pool however many copies of the trial task a
    worker unpickles."""
    try:
        import redis  # noqa: F401
    except ImportError as exc:  # pragma: no cover (the extra is not installed)
        from tasks.errors import UserError

        raise UserError("PIPELINE_LOCKS is a Redis URL but the redis client is not "
                        'installed: pip install -e ".[team]"') from exc
    settings = (url, float(lease), float(outage))
    with _MANAGERS_GUARD:
        if settings not in _MANAGERS:
            _MANAGERS[settings] = RedisLeaseLockManager(*settings)
        return _MANAGERS[settings]


def _lease_manager(lock_manager: Any) -> RedisLeaseLockManager | None:
    manager = getattr(lock_manager, "manager", lock_manager)  # a TrialLockManager's choice
    return manager if isinstance(manager, RedisLeaseLockManager) else None


def _held_lease(transaction: Any = None):
    """(lease manager, key, holder) of the running trial's Redis lease, or None (no
    transaction, not serializable, file locks)."""
    from prefect.transactions import IsolationLevel, get_transaction

    transaction = transaction or get_transaction()
    if (transaction is None or not transaction.key or transaction.store is None
            or transaction.isolation_level != IsolationLevel.SERIALIZABLE):
        return None
    manager = _lease_manager(transaction.store.lock_manager)
    if manager is None:
        return None
    return manager, transaction.key, transaction._holder


def stop_if_lease_lost(on_epoch=None):
    """An engine ``on_epoch`` callback that first raises :class:`LeaseLost` once the running
    trial's lease is another holder's (no Redis call: the renewal found out), then calls
    ``on_epoch``. Outside a trial task with Redis leases: ``on_epoch`` itself."""
    held = _held_lease()
    if held is None:
        return on_epoch
    manager, key, holder = held

    def checked(row):
        if manager.lost(key, holder):
            raise LeaseLost(f"the trial's lease ({key}) is another run's now: it trains it")
        return on_epoch(row) if on_epoch is not None else None

    return checked


def ensure_lease(transaction: Any = None) -> None:
    """In a trial task, after training, before Prefect commits its result: confirm with Redis
    that this attempt still holds its key's lease (waiting out an outage, up to the bound).
    Raise :class:`LeaseLost` (transient: the retry takes the result from the cache) if another
    holder has it, or if it had lapsed and another run stored the key's result meanwhile."""
    held = _held_lease(transaction)
    if held is None:
        return
    manager, key, holder = held
    from prefect.transactions import get_transaction

    transaction = transaction or get_transaction()
    status = manager.confirm(key, holder)
    if status == HELD:
        return
    if status == RETAKEN:
        if transaction.overwrite or not transaction.store.exists(key=key):
            return
        manager.release_lock(key, holder)
        raise LeaseLost(f"the trial's lease ({key}) had lapsed, and another run stored its "
                        "result meanwhile")
    manager.forget(key, holder)
    raise LeaseLost(f"the trial's lease ({key}) is another run's now: it trains it")


#: The lock settings a run's trials carry to the processes that train them, when the run set
#: them (its environment): a test, or a run that wants a shorter lease, needs no restart of the
#: workers.
RUN_LOCK_SETTINGS = ("lock_lease", "outage")


def run_lock_settings() -> dict[str, float]:
    """This process's :data:`RUN_LOCK_SETTINGS` that its environment sets."""
    from tasks.settings import current

    settings = current()
    return {name: getattr(settings, name) for name in RUN_LOCK_SETTINGS
            if name in settings.model_fields_set}


class TrialLockManager:
    """The trial task's lock manager: with ``directory``, OS file locks there
    (:class:`FileLockManager`); without, ``PIPELINE_LOCKS`` decides, read when first used in
    the process that trains: unset, file locks beside the result storage; a Redis URL, Redis
    leases (module doc). Pickles as its ``directory`` and the submitting run's lock settings
    (:func:`run_lock_settings`): a worker process chooses its locks for itself, with the
    run's lease and outage bound where the run set them."""

    def __init__(self, directory: str | os.PathLike | None = None,
                 settings: dict[str, float] | None = None):
        self.directory = Path(directory) if directory is not None else None
        self.settings = dict(settings or {})
        self._manager: Any = None
        self._guard = threading.Lock()

    def __getstate__(self) -> dict:
        return {"directory": self.directory, "settings": self.settings or run_lock_settings()}

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
                    values = {name: getattr(settings, name) for name in RUN_LOCK_SETTINGS}
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
