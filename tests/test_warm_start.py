"""A tune's warm start (tasks.search.tune.warm_start): the cache's trials of the study's space
and their objectives' values are computed before the storage's lock is taken (a latency is
measured with TensorFlow, and every other tune and export would wait for it), and under the
lock only the trials the study does not hold by then are added. No training: the cache is a
list of synthetic results."""

import pytest

from tasks.config import SplitSpec
from tasks.search import optuna_storage
from tasks.search.optuna_storage import IMPORTED_ATTR, storage_url
from tasks.search.tune import objectives, warm_start
from tasks.search.tune.proposer import TuneProposer
from tasks.search.tune_space import make_tune_space
from tasks.trial.result import TrialResult

SPACE = {"units": "choice:8,16,32", "dropout": "choice:0,0.1", "activation": "choice:relu",
         "learning_rate": "choice:0.001", "batch_size": "choice:100", "epochs": 1}
GOALS = ["val_accuracy", "latency"]


@pytest.fixture
def handle(mnist_file):
    from tasks.data.prepare import prepare_data

    handle, _ = prepare_data(mnist_file, SplitSpec())
    return handle


def cache_of(space, handle) -> list[TrialResult]:
    """Three completed trials of ``space``, as the result cache would hold them."""
    results = []
    for units in (8, 16, 32):
        config = space.config({"units": units, "dropout": 0.0, "activation": "relu",
                               "learning_rate": 0.001, "batch_size": 100})
        value = units / 100
        results.append(TrialResult(
            trial_key=config.canonical_json(), config=config,
            data_fingerprint=handle.fingerprint, val_accuracy=value, test_accuracy=value,
            train_seconds=1.0, cached=True, history=[{"epoch": 1.0, "val_accuracy": value}]))
    return results


def lock_held() -> bool:
    """Whether this thread holds a storage lock now."""
    return any(getattr(optuna_storage._held, "depth", {}).values())


def test_a_warm_start_measures_outside_the_lock_and_adds_only_what_is_missing(handle,
                                                                                monkeypatch):
    space = make_tune_space(**SPACE)
    cache = cache_of(space, handle)
    measured_under_lock: list[bool] = []

    def latency(result: TrialResult) -> float:
        measured_under_lock.append(lock_held())
        return result.config.units / 1000

    monkeypatch.setattr("tasks.trial.store.cached_results", lambda fingerprint, backend: cache)
    monkeypatch.setitem(objectives.OBJECTIVES, "latency",
                        objectives.Objective("minimize", "inference ms per image", latency))
    proposer = TuneProposer(space, handle, "compiled", storage_url(), trials=1,
                            study_name="warm-outside-lock", objectives=GOALS)
    try:
        assert measured_under_lock == [False, False, False]
        assert proposer.imported == 3
        imported = [t for t in proposer.study.trials if t.user_attrs.get(IMPORTED_ATTR)]
        assert sorted(t.values[1] for t in imported) == [0.008, 0.016, 0.032]
        # candidates built before another tune added them: none is added twice
        late = warm_start.warm_start_trials(space, GOALS, handle, "compiled", held=set())
        assert len(late) == 3 and warm_start.add_missing(proposer.study, late) == 0
        assert len(proposer.study.trials) == 3
    finally:
        proposer.close()
