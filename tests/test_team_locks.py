"""The trial task's lock manager and the Optuna storage lock choose the team stack's services
only when told to (PIPELINE_LOCKS, a PostgreSQL storage URL), and travel to worker processes
as settings, never as connections (tasks.trial.locks, tasks.search.optuna_storage)."""

from __future__ import annotations

import pickle

import pytest

REDIS_URL = "redis://:secret@127.0.0.1:1/0"  # nothing listens there: nothing may connect


def test_without_the_setting_the_trial_task_keeps_file_locks(monkeypatch, tmp_path):
    from tasks.trial.locks import FileLockManager, FlockLockManager, TrialLockManager
    from tasks.trial.task import train_trial_task

    monkeypatch.delenv("PIPELINE_LOCKS", raising=False)
    manager = train_trial_task.cache_policy.lock_manager
    assert isinstance(manager, TrialLockManager) and FlockLockManager is TrialLockManager
    assert isinstance(manager.manager, FileLockManager)
    # a directory given is always file locks there, whatever the setting
    monkeypatch.setenv("PIPELINE_LOCKS", REDIS_URL)
    assert isinstance(TrialLockManager(tmp_path).manager, FileLockManager)


def test_a_redis_url_gives_redis_leases_chosen_in_the_process_that_trains(monkeypatch):
    pytest.importorskip("prefect_redis")
    from tasks.trial.locks import LEASE_SECONDS, TrialLockManager

    monkeypatch.setenv("PIPELINE_LOCKS", REDIS_URL)
    manager = TrialLockManager()
    # what a worker process receives: no connection, no choice made yet
    twin = pickle.loads(pickle.dumps(manager))
    assert twin.__getstate__() == {"directory": None} and twin._manager is None
    redis_manager = manager.manager
    assert type(redis_manager).__name__ == "RedisLeaseLockManager"
    assert redis_manager.connection_url == REDIS_URL and redis_manager.lease == LEASE_SECONDS
    # the Redis manager itself pickles as its settings (clients rebuilt on the other side)
    copy = pickle.loads(pickle.dumps(redis_manager))
    assert copy.connection_url == REDIS_URL and copy.lease == LEASE_SECONDS
    assert copy._locks == {} and copy._renewer is None
    # and the whole trial task still pickles as Dask and the process pool send it
    import cloudpickle

    from tasks.trial.task import train_trial_task

    sent = cloudpickle.loads(cloudpickle.dumps(train_trial_task))
    assert isinstance(sent.cache_policy.lock_manager, TrialLockManager)


def test_the_locks_setting_takes_a_redis_url_or_nothing():
    from tasks.errors import UserError
    from tasks.settings import Settings

    assert Settings.from_environment({}).locks is None
    assert Settings.from_environment({"PIPELINE_LOCKS": REDIS_URL}).locks == REDIS_URL
    with pytest.raises(UserError, match="PIPELINE_LOCKS='flock'"):
        Settings.from_environment({"PIPELINE_LOCKS": "flock"})


def test_the_storage_lock_is_a_file_lock_on_sqlite_an_advisory_lock_on_postgresql(
        monkeypatch, tmp_path):
    from tasks.search import optuna_storage

    taken = []
    monkeypatch.setattr(optuna_storage, "advisory_lock",
                        lambda url: (taken.append(url), _nothing())[1])
    sqlite = f"sqlite:///{tmp_path / 'optuna.db'}"
    with optuna_storage.storage_lock(sqlite):
        assert (tmp_path / "optuna.db.lock").exists()
    assert taken == []
    postgres = "postgresql+psycopg://mnist:secret@127.0.0.1:1/optuna"
    with optuna_storage.storage_lock(postgres), optuna_storage.storage_lock(postgres):
        pass  # reentrant: taken once
    assert taken == [postgres]
    with optuna_storage.storage_lock("mysql://u:p@127.0.0.1:1/optuna"):
        pass  # no lock for other databases
    assert taken == [postgres]


def _nothing():
    import contextlib

    return contextlib.nullcontext()
