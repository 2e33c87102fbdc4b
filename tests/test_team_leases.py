"""The trial locks' Redis leases against a real Redis of their own (a ``redis-server`` started
here on a free port, as the team stack runs it: a password, the append-only file), through
restarts and stalls (tasks.trial.leases):

* a lease renewed while its holder lives, free within the lease once it is killed;
* Redis restarted while a lease is held and another run waits: both wait it out, the lease
  survives (append-only file), the waiter gets the key once it is released;
* Redis away longer than the outage bound: one clear error, ``LockServiceDown``;
* a holder stalled (SIGSTOP) past its lease while another run takes the key: the holder's
  renewal finds the lease lost, and the trial would stop (``LeaseLost``);
* a lease Redis lost while its holder trains, free again: taken back, and it counts only if no
  other run stored the key's result meanwhile.

No team stack needed; skipped where ``redis-server`` is not installed (the tests never install
it).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import PROJECT_ROOT

pytestmark = [pytest.mark.slow]

PASSWORD = "lease-test-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server on a free port, stopped and started at will, its data in ``folder``."""

    def __init__(self, folder: Path, appendonly: bool = True):
        self.folder, self.port, self.appendonly = folder, free_port(), appendonly
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://:{PASSWORD}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--requirepass",
             PASSWORD, "--dir", str(self.folder), "--save", "",
             "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = self.client()
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()  # Redis writes its append-only file and exits
            self.process.wait(timeout=30)
            self.process = None

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=PASSWORD)


@pytest.fixture
def redis_server(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    pytest.importorskip("redis")
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def manager(url: str, lease: float = 30.0, outage: float = 120.0):
    from tasks.trial.leases import RedisLeaseLockManager

    return RedisLeaseLockManager(url, lease=lease, outage=outage)  # its own, not the process's


def test_a_redis_restart_is_waited_out_and_the_lease_survives_it(redis_server):
    holder, waiter = manager(redis_server.url, lease=6), manager(redis_server.url, lease=6)
    assert holder.acquire_lock("k", "holder")
    got = {}
    thread = threading.Thread(
        target=lambda: got.update(ok=waiter.acquire_lock("k", "waiter", acquire_timeout=60)))
    thread.start()
    time.sleep(0.5)
    redis_server.stop()
    time.sleep(3)  # away 3 s: both sides retry meanwhile
    redis_server.start()
    from tasks.trial.leases import HELD

    assert holder.confirm("k", "holder") == HELD  # the lease came back from the file
    assert thread.is_alive() and not got  # the waiter still waits, no error
    holder.release_lock("k", "holder")
    thread.join(timeout=30)
    assert got == {"ok": True}
    assert redis_server.client().get("lock:k") == b"waiter"
    waiter.release_lock("k", "waiter")
    assert not waiter.is_locked("k")


def test_an_outage_past_the_bound_ends_in_one_clear_error(redis_server):
    from tasks.errors import ServiceOutage
    from tasks.trial.leases import LockServiceDown

    locks = manager(redis_server.url, outage=1.5)
    redis_server.stop()
    started = time.monotonic()
    with pytest.raises(LockServiceDown) as raised:
        locks.acquire_lock("k", "holder")
    took = time.monotonic() - started
    assert 1.4 <= took <= 5, took  # waited the bound, with backoff, then gave up
    message = str(raised.value)
    assert isinstance(raised.value, ServiceOutage) and "\n" not in message
    assert f"127.0.0.1:{redis_server.port}" in message and PASSWORD not in message
    assert "PIPELINE_OUTAGE" in message and "rerun" in message


KILLED_HOLDER = """
import sys, time
from tasks.trial.leases import RedisLeaseLockManager
locks = RedisLeaseLockManager(sys.argv[1], lease=float(sys.argv[2]))
assert locks.acquire_lock("k", "killed holder")
print("held", flush=True)
time.sleep(600)
"""


def test_a_lease_is_renewed_while_held_and_free_within_the_lease_once_its_holder_is_killed(
        redis_server):
    lease = 2.0
    holder = subprocess.Popen([sys.executable, "-c", KILLED_HOLDER, redis_server.url,
                               str(lease)], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        waiting = manager(redis_server.url, lease=lease)
        # renewed by its live holder: still held after more than two leases
        assert not waiting.acquire_lock("k", "waiting run", acquire_timeout=5)
        os.kill(holder.pid, signal.SIGKILL)  # kill -9: nothing released
        killed = time.monotonic()
        assert waiting.acquire_lock("k", "waiting run", acquire_timeout=30)
        took = time.monotonic() - killed
        assert took <= lease + 1.5, took  # free once the lease ran out, not for ever
        waiting.release_lock("k", "waiting run")
        assert not waiting.is_locked("k")
    finally:
        holder.kill()
        holder.wait()


HOLDER = """
import sys, time
from tasks.trial.leases import RedisLeaseLockManager
locks = RedisLeaseLockManager(sys.argv[1], lease=float(sys.argv[2]))
assert locks.acquire_lock("k", "stalled holder")
print("held", flush=True)
while not locks.lost("k", "stalled holder"):
    time.sleep(0.1)
print("lost", locks.confirm("k", "stalled holder"), flush=True)
"""


def test_a_holder_stalled_past_its_lease_finds_it_lost_to_the_run_that_took_it(redis_server):
    lease = 1.5
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, redis_server.url, str(lease)],
                              cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        os.kill(holder.pid, signal.SIGSTOP)  # a stall (swapping, a long pause) past the lease
        other = manager(redis_server.url, lease=30)
        assert other.acquire_lock("k", "other run", acquire_timeout=30)
        os.kill(holder.pid, signal.SIGCONT)
        # the holder's renewal finds the key another's: lost, and Redis confirms it
        assert holder.stdout.readline().strip() == "lost lost"
        assert holder.wait(timeout=30) == 0
        assert redis_server.client().get("lock:k") == b"other run"  # the other run keeps it
    finally:
        holder.kill()
        holder.wait()


def test_a_lease_redis_lost_is_taken_back_and_counts_only_if_nobody_stored_the_result(
        redis_server):
    from prefect.transactions import IsolationLevel

    from tasks.trial.leases import RETAKEN, LeaseLost, ensure_lease

    locks = manager(redis_server.url, lease=3)
    stored: set[str] = set()
    transaction = SimpleNamespace(
        key="k", _holder="holder", overwrite=False,
        isolation_level=IsolationLevel.SERIALIZABLE,
        store=SimpleNamespace(lock_manager=locks, exists=lambda key: key in stored))
    assert locks.acquire_lock("k", "holder")
    ensure_lease(transaction)  # held: nothing to say
    redis_server.client().delete("lock:k")  # Redis lost it (a restart without its file)
    deadline = time.monotonic() + 10
    while redis_server.client().get("lock:k") != b"holder":  # the renewal takes it back
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert not locks.lost("k", "holder")
    assert locks.confirm("k", "holder") == RETAKEN
    ensure_lease(transaction)  # nobody stored the result meanwhile: the holder's result counts
    stored.add("k")  # ... but had another run stored it, this attempt stops
    with pytest.raises(LeaseLost, match="another run stored"):
        ensure_lease(transaction)
    assert redis_server.client().get("lock:k") is None  # released for the retry


def test_a_lease_another_run_holds_stops_the_trial_at_its_next_epoch(redis_server,
                                                                     monkeypatch):
    from prefect.transactions import IsolationLevel

    from tasks.trial import leases as lock_module

    locks = manager(redis_server.url, lease=3)
    transaction = SimpleNamespace(
        key="k", _holder="holder", overwrite=False,
        isolation_level=IsolationLevel.SERIALIZABLE,
        store=SimpleNamespace(lock_manager=locks, exists=lambda key: False))
    held_lease = lock_module._held_lease  # as inside the trial task's transaction
    monkeypatch.setattr(lock_module, "_held_lease", lambda t=None: held_lease(t or transaction))
    assert locks.acquire_lock("k", "holder")
    epochs = []
    on_epoch = lock_module.stop_if_lease_lost(epochs.append)
    on_epoch({"epoch": 1})
    redis_server.client().set("lock:k", "another run")  # the key is another's now
    deadline = time.monotonic() + 10
    while not locks.lost("k", "holder"):  # the renewal finds out
        assert time.monotonic() < deadline
        time.sleep(0.1)
    with pytest.raises(lock_module.LeaseLost):
        on_epoch({"epoch": 2})
    assert epochs == [{"epoch": 1}]
    with pytest.raises(lock_module.LeaseLost, match="another run's"):
        lock_module.ensure_lease(transaction)
    locks.release_lock("k", "holder")  # a lost lease: nothing to release, no error
    assert redis_server.client().get("lock:k") == b"another run"
