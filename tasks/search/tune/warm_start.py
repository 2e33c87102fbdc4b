"""A warm start: the result cache's completed trials that lie in a study's space, added to it
as complete trials (attribute ``imported``), so that its sampler models from them at once
(``docs/tune.md``, "Warm starts").

In two steps, so that the storage lock is held only for the second: :func:`warm_start_trials`
builds the candidates and their objectives' values (a latency is measured with TensorFlow),
then :func:`add_missing`, under the lock, adds those the study does not hold by then.
"""

from __future__ import annotations

from collections.abc import Sequence

from tasks.data.splits import DataHandle
from tasks.search.optuna_bulk import add_trials
from tasks.search.optuna_storage import IMPORTED_ATTR, frozen_trial
from tasks.search.tune.objectives import objective_values
from tasks.search.tune_space import TuneSpace


def held_keys(study) -> set[str]:
    """The trial keys of every trial the study holds (any state)."""
    return {t.user_attrs.get("trial_key") for t in study.get_trials(deepcopy=False)}


def warm_start_trials(space: TuneSpace, objectives: Sequence[str], data: DataHandle,
                      backend: str, held: set[str]) -> list:
    """Frozen trials of every completed result of the cache on ``data`` and ``backend`` that
    lies in ``space``, is not in ``held`` and, for several objectives, has all their values.
    No lock is needed: nothing is written."""
    from tasks.trial.store import cached_results

    multi = len(objectives) > 1
    distributions = space.distributions()
    trials = []
    for result in cached_results(data.fingerprint, backend):
        if (result.status != "completed" or result.trial_key in held
                or space.params_of(result.config) is None):
            continue
        values = objective_values(objectives, result) if multi else None
        if multi and values is None:
            continue
        trial = frozen_trial(0, result, distributions, values)
        trial.set_user_attr(IMPORTED_ATTR, True)
        trials.append(trial)
    return trials


def add_missing(study, trials: list) -> int:
    """Add the ``trials`` whose key the study does not hold now; returns how many. Called under
    the storage lock: two tunes starting at once import each trial once."""
    have = held_keys(study)
    new = [t for t in trials if t.user_attrs.get("trial_key") not in have]
    if new:
        add_trials(study, new)  # one transaction: the lock is held for a second, not a minute
    return len(new)
