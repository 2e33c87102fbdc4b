"""The loop's admission hook: what decides whether a config may start now, plugged into the
one loop (:func:`tasks.search.loop.run_trials`) as Optuna's callbacks are into its optimize
loop. The budget of training minutes is one (:class:`tasks.search.spending.Spending`); the
loop never asks which kind it has.
"""

from __future__ import annotations

from enum import Enum
from typing import Protocol

from tasks.config import TrialConfig
from tasks.trial.result import TrialResult


class Verdict(Enum):
    START = "start"  # it fits: train it
    WAIT = "wait"  # it does not fit yet: wait for a trial in flight, then ask again
    STOP = "stop"  # it does not fit and nothing is in flight: the search ends


class Admission(Protocol):
    """A limit on what a run trains. The loop asks :meth:`admit` before it starts a config
    the search did not hold, calls :meth:`started` when it does and :meth:`charge` with every
    trained trial's result. With one, the number of trials is not known in advance: the
    progress is :meth:`share`."""

    def describe(self, runner: str) -> str:
        """The terminal's line before the first trial (``runner``: ``processes x 2``)."""

    def admit(self, config: TrialConfig) -> Verdict:
        """Whether ``config`` may start now, later (trials in flight) or never."""

    def started(self, config: TrialConfig) -> None:
        """``config`` was admitted and started."""

    def charge(self, result: TrialResult) -> None:
        """A trained trial was told (one this hook did not admit costs nothing)."""

    def status(self) -> str:
        """The note on each trial's terminal line."""

    def share(self) -> float:
        """How much of the limit is used (1.0: all of it), for the progress artifact."""

    def closing_line(self) -> str:
        """The terminal's line after the last trial."""
