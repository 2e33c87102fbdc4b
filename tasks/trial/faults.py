"""Which failures are worth another attempt, and fault injection to prove it.

Transient: injected faults, flaky I/O (a shared filesystem, a full disk being cleaned), a
lost worker. Anything else (bad data, a bad config, a bug) fails at once, with its message.
Fault injection is for tests and demos: ``PIPELINE_FAULTS='[{"units": 16, "times": 1}]'``.
"""

from __future__ import annotations

from tasks.config import TrialConfig
from tasks.settings import current


class TransientTrainingError(RuntimeError):
    """A failure worth retrying (injected in tests; also raised for flaky I/O)."""


#: Errors worth another attempt.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (TransientTrainingError, OSError)
#: The delays before each retry of a training task, in seconds (jittered by half), and so the
#: number of retries: ``$PIPELINE_RETRY_DELAYS`` (default 2,8), read once, when the task is
#: declared (a worker process reads the same environment).
TRIAL_RETRY_DELAYS = current().retry_delays
TRIAL_RETRIES = len(TRIAL_RETRY_DELAYS)


def is_transient(error: object) -> bool:
    return isinstance(error, TRANSIENT_ERRORS)


def is_worker_loss(error: object) -> bool:
    """True for the error of a trial whose worker process died under it: a process pool
    broken by a killed worker, or a Dask worker lost more often than Dask retries a task."""
    from concurrent.futures.process import BrokenProcessPool

    return isinstance(error, BrokenProcessPool) or type(error).__name__ == "KilledWorker"


def retry_only_transient(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry a failed attempt only for a transient error."""
    return is_transient(state.data)


def maybe_inject_fault(config: TrialConfig, attempt: int) -> None:
    """Raise a TransientTrainingError for configs matched by ``$PIPELINE_FAULTS``.

    Each rule is a JSON object of config fields to match plus ``times``: the number of
    attempts that fail (``-1``: every attempt), and optionally ``"error": "deterministic"``
    to raise a ValueError instead, which is never retried.
    """
    fields = config.model_dump()
    for rule in current().faults:
        rule = dict(rule)
        times = int(rule.pop("times", 1))
        kind = rule.pop("error", "transient")
        if all(fields.get(k) == v for k, v in rule.items()):
            if times < 0 or attempt <= times:
                error = ValueError if kind == "deterministic" else TransientTrainingError
                raise error(f"injected {kind} fault for {config.label()} (attempt {attempt})")
