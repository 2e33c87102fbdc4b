"""A dead tune's running trials, recovered: failed, and their configs enqueued so that they
are asked again first (``docs/tune.md``, "Dead tunes"). Callers hold the storage lock
(:func:`tasks.search.optuna_storage.storage_lock`): each stale trial is failed once.

A running trial belongs to a dead tune when:

* its heartbeat is older than the grace period (``PIPELINE_TUNE_GRACE``; Optuna's own
  ``fail_stale_trials``): its tune on any machine stopped beating;
* it has no heartbeat attribute: every live ask sets it under the storage lock, so a running
  trial without it, seen under that lock, is an ask cut off half-way (its database restarting)
  or a tune from before heartbeats: failed at once;
* its owner (host, pid and the process's start time, set at the ask) is a process of this
  host that is gone: failed at once, without waiting out the grace period (a rerun started
  right after a run that died).
"""

from __future__ import annotations

import os
import socket
from typing import Any

from tasks.search.tune.heartbeats import HEARTBEAT_ATTR

#: The system attribute of a trial naming the tune process that asked it.
OWNER_ATTR = "owner"


def this_owner() -> dict[str, Any]:
    """This process as a trial's owner: host, pid and the process's start time."""
    import psutil

    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": round(psutil.Process().create_time(), 2)}


def owner_gone(owner: Any) -> bool:
    """Whether ``owner`` (:func:`this_owner` of the process that asked a trial) is a process of
    this host that no longer runs. An owner on another host is never known to be gone here:
    its heartbeat decides."""
    import psutil

    if not isinstance(owner, dict) or owner.get("host") != socket.gethostname():
        return False
    try:
        started = round(psutil.Process(int(owner["pid"])).create_time(), 2)
    except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, TypeError, ValueError):
        return True
    return abs(started - float(owner.get("started", started))) > 0.05  # the pid reused


def ask_again(study, trial) -> None:
    """Optuna's callback for a trial failed as stale: enqueue its config, asked again first."""
    if trial.params:
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


def recover(study, storage, study_id: int) -> None:
    """Fail the running trials of dead tunes (module doc) and enqueue their configs."""
    import optuna

    optuna.storages.fail_stale_trials(study)  # enqueues them (ask_again)
    fail_dead(study, storage, study_id)


def fail_dead(study, storage, study_id: int) -> None:
    """Fail, and enqueue the configs of, the running trials without a heartbeat attribute or
    whose owner is gone (module doc). Under the storage lock."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.system_attrs
        if (HEARTBEAT_ATTR not in attrs or owner_gone(attrs.get(OWNER_ATTR))) \
                and fail_trial(storage, study_id, trial.number):
            ask_again(study, trial)
