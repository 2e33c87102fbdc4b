"""Trial locks across machines: Redis leases (``PIPELINE_LOCKS`` is a Redis URL; the
choice between these and OS file locks: :mod:`tasks.trial.locks`). About 400 lines: the lease
manager, its renewal thread and the checks a trial makes around its lease share one state.

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

import logging
import threading
import time
from dataclasses import dataclass
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


class PollingLockManager:
    """What both lock managers share: waiting for a key by polling ``is_locked``, and the
    protocol's async methods as their blocking ones in a worker thread."""

    def is_locked(self, key: str) -> bool:
        raise NotImplementedError

    def acquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                     hold_timeout: float | None = None) -> bool:
        raise NotImplementedError

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_locked(key):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(POLL_SECONDS)
        return True

    async def aacquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                            hold_timeout: float | None = None) -> bool:
        import anyio

        return await anyio.to_thread.run_sync(
            self.acquire_lock, key, holder, acquire_timeout, hold_timeout)

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        import anyio

        return await anyio.to_thread.run_sync(self.wait_for_lock, key, timeout)


class RedisLeaseLockManager(PollingLockManager):
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
