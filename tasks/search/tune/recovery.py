"""A dead tune's running trials, recovered: failed, and their configs enqueued so that they
are asked again first (``docs/tune.md``, "Dead tunes"). Callers hold the storage lock
(:func:`tasks.search.optuna_storage.storage_lock`): each stale trial is failed once.
"""

from __future__ import annotations

import datetime

from tasks.search.tune.heartbeats import HEARTBEAT_ATTR


def ask_again(study, trial) -> None:
    """Optuna's callback for a trial failed as stale: enqueue its config, asked again first."""
    study.enqueue_trial(trial.params, skip_if_exists=False)


def fail_trial(storage, study_id: int, number: int) -> bool:
    """Fail the running trial ``number`` of the study; False if it is finished already."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
    try:
        return storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except UpdateFinishedTrialError:
        return False


def recover(study, storage, study_id: int, grace_period: int) -> None:
    """Fail the running trials of dead tunes and enqueue their configs: those whose heartbeat
    is stale, and those that never had one and started more than ``grace_period`` s ago."""
    import optuna
    from optuna.trial import TrialState

    optuna.storages.fail_stale_trials(study)  # enqueues them (ask_again)
    oldest = datetime.datetime.now() - datetime.timedelta(seconds=grace_period)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if HEARTBEAT_ATTR not in trial.system_attrs and trial.datetime_start is not None \
                and trial.datetime_start < oldest and fail_trial(storage, study_id,
                                                                 trial.number):
            ask_again(study, trial)


def fail_unsampled(study, storage, study_id: int) -> None:
    """Fail the running trials that have no parameters and were never held (no heartbeat):
    an ask that failed half-way (its database restarting) created them."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not trial.params and HEARTBEAT_ATTR not in trial.system_attrs:
            fail_trial(storage, study_id, trial.number)
