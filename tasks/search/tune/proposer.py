"""The tune as a proposer of the one loop (:class:`tasks.search.loop.Proposer`): Optuna's
ask and tell on a study, each config trained as the cached, retried trial task. What a tune
counts, how tunes of one study overlap and how a dead one's trials come back are in
``docs/tune.md``.
"""

from __future__ import annotations

import atexit
import contextlib
import time
import weakref
from collections.abc import Sequence

from tasks.config import trial_key
from tasks.console import say
from tasks.data.splits import DataHandle
from tasks.search.loop import Ask, Plan
from tasks.search.optuna_storage import (
    IMPORTED_ATTR,
    OBJECTIVE,
    open_storage,
    quiet_optuna,
    result_attrs,
    storage_lock,
)
from tasks.search.tune.heartbeats import (
    HEARTBEAT_ATTR,
    HEARTBEAT_INTERVAL,
    Heartbeats,
)
from tasks.search.tune.objectives import check_objectives, objective_values
from tasks.search.tune.recovery import (
    OWNER_ATTR,
    ask_again,
    fail_dead,
    fail_trial,
    recover,
    this_owner,
)
from tasks.search.tune.samplers import make_sampler
from tasks.search.tune.study import count_start, open_study
from tasks.search.tune.warm_start import add_missing, held_keys, warm_start_trials
from tasks.search.tune_space import TuneSpace
from tasks.settings import current
from tasks.trial.pruning import TrialLink
from tasks.trial.result import TrialResult

#: Asks in a row of configs the study already held before the run after which a tune stops:
#: its sampler keeps returning to what it knows (a small or exhausted space).
MAX_KNOWN_IN_A_ROW = 25
#: ``trials`` of a tune bounded by its budget alone (no --trials given).
UNBOUNDED = 1_000_000


class TuneProposer:
    """An Optuna study of ``trials`` finished trials over ``space`` as a proposer
    (``docs/tune.md``). ``storage``: the storage URL. ``objectives``: what the study
    optimizes (:func:`~tasks.search.tune.objectives.check_objectives`; more than one: a
    multi-objective study). ``heartbeat_interval``, ``grace_period``: seconds
    (:mod:`tasks.search.tune.heartbeats`)."""

    name = "tune"
    title = "Tune"

    def __init__(self, space: TuneSpace, data: DataHandle, backend: str, storage: str,
                 trials: int = 50, sampler: str = "tpe", pruner: str = "none", seed: int = 0,
                 study_name: str = "tune", *, warm_start: bool = True,
                 objectives: Sequence[str] = (OBJECTIVE,),
                 heartbeat_interval: int = HEARTBEAT_INTERVAL,
                 grace_period: int | None = None):
        from optuna.trial import TrialState

        quiet_optuna()
        self.objectives = check_objectives(objectives, pruner)
        self.multi = len(self.objectives) > 1
        self.space, self.url, self.study_name = space, storage, study_name
        self.trials, self.sampler_name, self.pruner = trials, sampler, pruner
        if grace_period is None:
            grace_period = round(current().tune_grace)
        self.grace_period = grace_period
        # one tune opens a study at a time on a storage: its creation, its attributes, the
        # stale trials failed and enqueued once
        with storage_lock(storage):
            self.storage = open_storage(storage, heartbeat_interval=heartbeat_interval,
                                        grace_period=grace_period,
                                        heartbeat_stale_trial_callback=ask_again)
            self.study = open_study(self.storage, storage, study_name, self.objectives,
                                    pruner, space, data, backend)
            self.study_id = self.storage.get_study_id_from_name(study_name)
            recover(self.study, self.storage, self.study_id)
        # the warm start's values (latencies measured with TensorFlow) outside the lock
        candidates = (warm_start_trials(space, self.objectives, data, backend,
                                        held_keys(self.study)) if warm_start else [])
        # the missing ones added and the finished trials counted at one point of the study
        with storage_lock(storage):
            self.imported = add_missing(self.study, candidates)
            every = self.study.get_trials(deepcopy=False)
            self.imported_total = sum(bool(t.user_attrs.get(IMPORTED_ATTR)) for t in every)
            # the configs whose results the study held before this run (imported or its own)
            self.known_keys = {t.user_attrs.get("trial_key") for t in every
                               if t.state == TrialState.COMPLETE}
            # --trials counts the study's own trials (asked by its sampler), not imported ones
            self.finished_before = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                                       and not t.user_attrs.get(IMPORTED_ATTR) for t in every)
            started = count_start(self.storage, self.study_id, len(every))
        self.heartbeats = Heartbeats(self.storage, heartbeat_interval)
        # a seed of its own per resume point (the trials so far, failed ones included), so a
        # resumed study's sampler does not repeat the first run's draws, and per tune started
        # at that point (tunes at once do not draw the same configs)
        self.study.sampler = make_sampler(sampler, seed, len(every), started)
        self.to_finish = max(0, trials - self.finished_before)
        self.asked = 0
        self.known_in_a_row = 0
        self.asked_keys: set[str] = set()  # asked by this run (in flight or told)
        self.seed = seed
        self.fingerprint, self.backend = data.fingerprint, backend
        self._results: list[TrialResult] = []
        atexit.register(close_at_exit, weakref.ref(self))

    def trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def fail(self, number: int) -> bool:
        """Fail the running trial ``number``; False if it is finished already."""
        return fail_trial(self.storage, self.study_id, number)

    def plan(self) -> Plan:
        return Plan(trials=self.to_finish, epochs=self.space.epochs)

    def describe(self) -> str:
        warm = (f"; warm start: {self.imported} trials imported from the cache now, "
                f"{self.imported_total} in all" if self.imported_total else "")
        goals = f", objectives {', '.join(self.objectives)}" if self.multi else ""
        return (f"Tune '{self.study_name}' ({self.sampler_name} sampler, pruner {self.pruner}"
                f"{goals}): "
                f"{self.finished_before} of its own finished trials in the study, "
                + (f"{self.to_finish} more to reach {self.trials}" if self.trials < UNBOUNDED
                   else "more until the budget is spent") + warm)

    def ask(self) -> Ask | None:
        if self.asked >= self.to_finish:
            return None
        trial = self.ask_study()
        config = self.space.config(trial.params)
        key = trial_key(config, self.fingerprint, self.backend)
        if key in self.known_keys or key in self.asked_keys:
            # the sampler proposes a trial the study held before this run, or one this run
            # asked already and is training (a warm TPE over a categorical space keeps
            # returning to its best ones): it would learn nothing from it, so a random config
            # the study does not hold is asked instead
            trial, config, key = self.replace_repeat(trial, key)
        self.asked_keys.add(key)
        trial.set_user_attr("config", config.model_dump(mode="json"))
        self.asked += 1
        known = key in self.known_keys
        self.known_in_a_row = self.known_in_a_row + 1 if known else 0
        if self.known_in_a_row >= MAX_KNOWN_IN_A_ROW:
            say(f"Tune: the sampler asked {MAX_KNOWN_IN_A_ROW} configs in a row that the study "
                "already held; stopping (the space is exhausted)")
            self.asked = self.to_finish
        # the worker talks to the study only to be pruned; otherwise the epochs are told from
        # here (a remote worker need not reach the storage)
        link = (None if self.pruner == "none" else
                TrialLink(storage=self.url, study=self.study_name, trial_number=trial.number,
                          pruner=self.pruner))
        return Ask(config, link, token=trial, known=known)

    def ask_study(self):
        """The study's next trial, held (heartbeats), under the storage's lock."""
        with storage_lock(self.url):  # one ask at a time: an enqueued trial is popped once
            recover(self.study, self.storage, self.study_id)
            try:
                trial = self.study.ask(self.space.distributions())
            except Exception:  # a restart mid-ask: not the half-made trial left running
                with contextlib.suppress(Exception):
                    fail_dead(self.study, self.storage, self.study_id)
                raise
            trial_id = trial._trial_id  # no storage call before it is held (a restart)
            # held first (the tune's exit fails it, whatever fails below); its owner, then the
            # heartbeat attribute, set under the lock: a running trial without the attribute
            # is an ask cut off half-way, failed at once by the next (tasks.search.tune.recovery)
            self.heartbeats.hold(trial.number, trial_id, dict(trial.params), beat=False)
            self.storage.set_trial_system_attr(trial_id, OWNER_ATTR, this_owner())
            self.storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR,
                                               self.heartbeats.interval)
            self.storage.record_heartbeat(trial_id)
        return trial

    def replace_repeat(self, trial, key: str):
        """Fail ``trial`` (a repeat of ``key``, which the study holds: attribute
        ``repeat_of``), enqueue a random config of the space the study does not hold and ask
        it. Returns (trial, config, key); the repeat itself if the space holds nothing new."""
        import numpy as np

        rng = np.random.default_rng([self.seed, trial.number])
        for _ in range(1000):
            params = {name: dim.round(dim.draw(rng))
                      for name, dim in self.space.dimensions().items()}
            config = self.space.config(params)
            candidate = trial_key(config, self.fingerprint, self.backend)
            if candidate not in self.known_keys and candidate not in self.asked_keys:
                break
        else:
            return trial, self.space.config(trial.params), key
        trial.set_user_attr("repeat_of", key)
        self.heartbeats.release(trial.number)
        with storage_lock(self.url):
            self.fail(trial.number)
            self.study.enqueue_trial(params, skip_if_exists=False)
        trial = self.ask_study()
        config = self.space.config(trial.params)
        return trial, config, trial_key(config, self.fingerprint, self.backend)

    def tell(self, asked: Ask, result: TrialResult) -> None:
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        trial = asked.token
        self._results.append(result)
        if result.status == "completed":  # asked again later: replaced (see ask)
            self.known_keys.add(result.trial_key)
        try:
            self.tell_study(asked, result)
        except (UpdateFinishedTrialError, ValueError):
            if self.storage.get_trial(self.trial_id(trial.number)).state != TrialState.FAIL:
                raise
            # this tune went silent for longer than the grace period and another one failed
            # the trial as stale (and asked its config again): this result stays in the cache
            say(f"Tune: trial {trial.number} was failed by another tune (no heartbeat for "
                f"{self.grace_period} s); its config is asked again there")
        finally:
            self.heartbeats.release(trial.number)
            if self.asked >= self.to_finish and not self.heartbeats.holding():
                self.heartbeats.stop()

    def tell_study(self, asked: Ask, result: TrialResult) -> None:
        from optuna.trial import TrialState

        trial = asked.token
        for key, value in result_attrs(result).items():
            trial.set_user_attr(key, value)
        if result.status == "failed":
            self.study.tell(trial, state=TrialState.FAIL)
            return
        if self.multi:
            # Optuna's trial.report refuses a multi-objective study (no pruning there): the
            # epochs go to the storage as the trial's intermediate values all the same
            trial_id = self.trial_id(trial.number)
            for row in result.history:
                if row.get("val_accuracy") == row.get("val_accuracy"):  # not NaN
                    self.storage.set_trial_intermediate_value(
                        trial_id, int(row["epoch"]), float(row["val_accuracy"]))
        elif result.cached or asked.link is None:
            # not reported by a pruned worker: trained before (the cache, or this run), or
            # trained without a pruner
            for row in result.history:
                trial.report(float(row["val_accuracy"]), int(row["epoch"]))
        if result.status == "pruned":
            self.study.tell(trial, state=TrialState.PRUNED)
        elif self.multi:
            values = objective_values(self.objectives, result)
            if values is None:  # a completed result without one of the objectives
                say(f"Tune: trial {trial.number} lacks one of {', '.join(self.objectives)}; "
                    "told as failed")
                self.study.tell(trial, state=TrialState.FAIL)
            else:
                self.study.tell(trial, values)
        else:
            self.study.tell(trial, result.val_accuracy)

    def results(self) -> list[TrialResult]:
        """In the order the trials finished."""
        return list(self._results)

    def withdraw(self, asked: Ask) -> None:
        """An asked trial the budget did not start: failed in the study and its config
        enqueued, so that the next tune of the study asks it first."""
        trial = asked.token
        self.heartbeats.release(trial.number)
        trial.set_user_attr("withdrawn", "not started: it did not fit in the budget")
        with storage_lock(self.url):
            if self.fail(trial.number):
                self.study.enqueue_trial(dict(trial.params), skip_if_exists=False)
        self.asked = self.to_finish  # nothing more is asked
        if not self.heartbeats.holding():
            self.heartbeats.stop()

    def close(self) -> None:
        """Stop the heartbeats. The trials still held (asked, never told: the run stopped
        early) are failed and their configs enqueued, so the next tune asks them first at once
        rather than after the grace period. Also called at exit. A storage that does not
        answer (a restart) is tried again with backoff for up to ``PIPELINE_OUTAGE`` s."""
        held = self.heartbeats.stop()
        started, delay = time.monotonic(), 0.25
        while held:
            try:
                with storage_lock(self.url):
                    for number, (_, params) in sorted(held.items()):
                        # else: failed as stale by another tune, which enqueued it
                        if self.fail(number):
                            self.study.enqueue_trial(params, skip_if_exists=False)
                        del held[number]
            except Exception:
                if time.monotonic() - started + delay > current().outage:
                    raise
                time.sleep(delay)
                delay = min(2 * delay, 2.0)


def close_at_exit(ref: weakref.ref) -> None:
    proposer = ref()
    if proposer is not None:
        try:
            proposer.close()
        except Exception as error:  # the storage may be gone: heartbeats recover them
            say(f"Tune: running trials not failed at exit ({error})")
