"""Heartbeats of the trials a tune holds (asked, not yet told), recorded from a small
background thread: with ask/tell, Optuna records none itself. They tell a live tune's running
trials from a dead one's (``docs/tune.md``, "Dead tunes").
"""

from __future__ import annotations

import threading
from typing import Any

from tasks.console import say

#: Seconds between two heartbeats of a trial a tune holds.
HEARTBEAT_INTERVAL = 10
#: The system attribute of a trial whose tune records heartbeats (its interval), set under the
#: storage lock by every ask: a running trial without it is a dead tune's (recovery.py). How
#: long a running trial may go without a heartbeat is ``PIPELINE_TUNE_GRACE`` (60 s).
HEARTBEAT_ATTR = "heartbeat_interval"


class Heartbeats:
    """A background thread recording a heartbeat every ``interval`` s for each trial held
    (asked and not yet told); the first one at once, when the trial is taken."""

    def __init__(self, storage, interval: int):
        self.storage, self.interval = storage, interval
        self.held: dict[int, tuple[int, dict[str, Any]]] = {}  # number -> (id, params)
        self.guard = threading.Lock()
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None

    def hold(self, number: int, trial_id: int, params: dict[str, Any],
             beat: bool = True) -> None:
        """Hold the trial (the first heartbeat at once, unless ``beat`` is False: the caller
        records it)."""
        with self.guard:  # held first: if the storage fails below, the tune's exit fails it
            self.held[number] = (trial_id, params)
            if self.thread is None:
                self.thread = threading.Thread(target=self.beat, name="optuna-heartbeats",
                                               daemon=True)
                self.thread.start()
        if beat:
            self.storage.record_heartbeat(trial_id)

    def release(self, number: int) -> None:
        with self.guard:
            self.held.pop(number, None)

    def holding(self) -> int:
        with self.guard:
            return len(self.held)

    def stop(self) -> dict[int, tuple[int, dict[str, Any]]]:
        """Stop beating; returns the trials still held (and forgets them)."""
        self.stopped.set()
        with self.guard:
            held, self.held = self.held, {}
        return held

    def beat(self) -> None:
        while not self.stopped.wait(self.interval):
            with self.guard:
                ids = [trial_id for trial_id, _ in self.held.values()]
            for trial_id in ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as error:  # a busy database: the next beat tries again
                    say(f"Tune: heartbeat of a running trial not recorded ({error}); "
                        "trying again")
