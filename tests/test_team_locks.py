"""The trial task's lock manager and the Optuna storage lock choose the team stack's services
only when told to (PIPELINE_LOCKS, a PostgreSQL storage URL), and travel to worker processes
as settings, never as connections, with the run's lease and outage bound where it set them
(tasks.trial.locks, tasks.search.optuna_storage)."""

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
    from tasks.trial.locks import LEASE_SECONDS, OUTAGE_SECONDS, TrialLockManager

    monkeypatch.setenv("PIPELINE_LOCKS", REDIS_URL)
    monkeypatch.delenv("PIPELINE_LOCK_LEASE", raising=False)
    monkeypatch.delenv("PIPELINE_OUTAGE", raising=False)
    manager = TrialLockManager()
    # what a worker process receives: no connection, no choice made yet
    twin = pickle.loads(pickle.dumps(manager))
    assert twin.__getstate__() == {"directory": None, "settings": {}} and twin._manager is None
    redis_manager = manager.manager
    assert type(redis_manager).__name__ == "RedisLeaseLockManager"
    assert redis_manager.connection_url == REDIS_URL and redis_manager.lease == LEASE_SECONDS
    assert redis_manager.outage == OUTAGE_SECONDS
    # the Redis manager itself pickles as its settings (clients rebuilt on the other side)
    copy = pickle.loads(pickle.dumps(redis_manager))
    assert copy.connection_url == REDIS_URL and copy.lease == LEASE_SECONDS
    assert copy._client is None and copy._renewer is None
    # and the whole trial task still pickles as Dask and the process pool send it
    import cloudpickle

    from tasks.trial.task import train_trial_task

    sent = cloudpickle.loads(cloudpickle.dumps(train_trial_task))
    assert isinstance(sent.cache_policy.lock_manager, TrialLockManager)


def test_a_runs_lease_and_outage_bound_travel_with_its_trials(monkeypatch):
    """A run that sets PIPELINE_LOCK_LEASE / PIPELINE_OUTAGE gives them to the workers
    that train its trials (they started with their own environment); one that sets nothing
    leaves the workers' own."""
    pytest.importorskip("prefect_redis")
    import cloudpickle

    from tasks.trial.task import train_trial_task

    monkeypatch.setenv("PIPELINE_LOCK_LEASE", "4")
    monkeypatch.setenv("PIPELINE_OUTAGE", "3")
    sent = cloudpickle.dumps(train_trial_task)  # in the submitting process
    monkeypatch.setenv("PIPELINE_LOCKS", REDIS_URL)  # the worker's environment
    monkeypatch.setenv("PIPELINE_LOCK_LEASE", "60")
    monkeypatch.delenv("PIPELINE_OUTAGE")
    worker = cloudpickle.loads(sent).cache_policy.lock_manager.manager
    assert (worker.lease, worker.outage) == (4.0, 3.0)
    monkeypatch.delenv("PIPELINE_LOCK_LEASE")
    sent = cloudpickle.dumps(train_trial_task)  # a run that sets nothing
    monkeypatch.setenv("PIPELINE_LOCK_LEASE", "60")
    worker = cloudpickle.loads(sent).cache_policy.lock_manager.manager
    assert (worker.lease, worker.outage) == (60.0, 120.0)


def test_the_locks_setting_takes_a_redis_url_or_nothing():
    from tasks.errors import UserError
    from tasks.settings import Settings

    assert Settings.from_environment({}).locks is None
    assert Settings.from_environment({"PIPELINE_LOCKS": REDIS_URL}).locks == REDIS_URL
    with pytest.raises(UserError, match="PIPELINE_LOCKS='flock'"):
        Settings.from_environment({"PIPELINE_LOCKS": "flock"})
    assert Settings.from_environment({"PIPELINE_LOCK_LEASE": "5"}).lock_lease == 5
    with pytest.raises(UserError, match="PIPELINE_LOCK_LEASE"):
        Settings.from_environment({"PIPELINE_LOCK_LEASE": "0.5"})  # at least 1 s
    with pytest.raises(UserError, match="PIPELINE_OUTAGE"):
        Settings.from_environment({"PIPELINE_OUTAGE": "-1"})


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
