"""The model-based search: an Optuna study driven by ask/tell, on the same trial unit.

Each config the sampler asks for runs as the cached, retried ``train_trial_task``, so a config
that a grid, a random search or an earlier tune already trained costs nothing. Up to
``workers`` trials run at once; the TPE sampler is Optuna's with ``constant_liar=True``: while
a trial runs, it counts as a bad result, so the next trials asked meanwhile go elsewhere instead
of piling onto the same region.

The study lives in an Optuna storage (default ``sqlite:///data/optuna.db``) under a name, so a
tune resumes and extends across runs: ``--trials`` is the number of finished (complete or
pruned) trials the study should hold. A tune counts the finished trials when it starts and
finishes the rest itself: ``to_finish = trials - finished at its start``.

A tune starts warm (``warm_start``, :meth:`TuneProposer.import_cached`): before its first
ask, every completed trial of the result cache that lies in the study's space (same epochs,
seed, protocol, data and backend; from grids, random searches, studies, other tunes) and is
not in the study yet is added to it as a complete trial with its per-epoch values and the
user attribute ``imported``; none is trained. Imported trials inform the sampler (TPE models
from them at once) but do not count toward ``trials``: that is the number of the study's
*own* finished trials, those its sampler asked for.

Several tunes of one study at once (other processes, other machines on a shared database)
are allowed. Each finishes its own ``to_finish`` trials, whatever the others do meanwhile, so
two tunes started on one study before either finished a trial add up: on an empty study, tune A
``--trials 4`` and tune B ``--trials 4`` each see 0 finished, each finish 4, and the study ends
with 8 (a tune started later counts what is finished by then: B started when A had finished 3
finishes 1). Each trial is told once, by the tune that asked it. Tunes started at the same
point get samplers seeded apart (:func:`make_sampler`), so they do not draw the same configs.

Trials left running by a dead tune are recovered by heartbeats (Optuna's, on its RDBStorage):
the tune records a heartbeat every :data:`HEARTBEAT_INTERVAL` s for each trial it holds (asked,
not yet told) from a small background thread (with ask/tell, Optuna records none itself).
At start-up and before each ask, a tune fails the running trials whose last heartbeat is older
than :data:`GRACE_PERIOD` s (``optuna.storages.fail_stale_trials``) and enqueues their configs,
so they are asked again first (if they had finished training, the cache has them). A live
tune's trials keep beating, so another tune starting never fails them. The price: a tune
restarted at once after a kill finds the dead trials still fresh and recovers them at its
first ask after the grace period (or the next tune does). A tune that stops with trials in
hand but is not killed (an exception, Ctrl-C) fails and enqueues them at once
(:meth:`TuneProposer.close`, also at exit). A running trial without any heartbeat (left by a
tune from before heartbeats) is failed once it started more than the grace period ago.
Start-up and each ask hold the storage's lock (:func:`tasks.search.optuna_storage.storage_lock`):
on SQLite two processes could otherwise both pop the same enqueued trial (measured: with the
ask unlocked, two tunes at once told one trial twice in 3 runs of 3) or fail the same stale
one, since SQLite ignores ``SELECT ... FOR UPDATE``. Tells and heartbeats take no lock.

Why heartbeats on the SQLite RDBStorage and not Optuna's JournalStorage (which Optuna
recommends for several processes on one machine), measured with two processes started at the
same instant on a new storage, 30 ask/tell trials each, 3 runs per design: the RDBStorage
without a lock lost one process to ``UNIQUE constraint failed: alembic_version.version_num``
in 3 of 3 runs; with the creation lock, 0 errors and 60 complete trials in 3 of 3 (10 to 20 s
for the 30 trials, heartbeats and stale checks included); the journal file, 0 errors, 60
trials, about 3 s. The journal is faster, but the difference is noise beside trials that train
for seconds to minutes, and it has no heartbeats: a tune starting could not tell a killed
tune's running trials from a live one's, so it would fail both (finding 2 of the issue) or
neither (a killed run's trials never recovered). And a journal file is not a URL: the pruned
workers, the reports, the grid and random exports and optuna-dashboard all reach the studies
by ``sqlite:///...``.

A tune may have more objectives than the validation accuracy (``objectives``,
:data:`OBJECTIVES`): ``["val_accuracy", "params"]`` makes a multi-objective study (directions
maximize, minimize; metric names as given) told ``(val_accuracy, float(param_count))`` per
trial, whose Pareto front (``study.best_trials``) optuna-dashboard and the report show. The
same samplers (Optuna's TPE handles several objectives, constant liar included; random). No
pruner: Optuna cannot prune a multi-objective study (:func:`check_objectives` refuses it), and
the per-epoch validation accuracy is written as the trial's intermediate values without a
pruner asked. The objectives are part of the study's identity: a study refuses a run that asks
for others. One objective (the default) is the single-objective study as before.

Only a pruned tune's workers talk to the storage (each epoch, to ask the pruner); otherwise
the parent tells the study each trial's epochs. So a tune without pruning runs on any Dask
cluster, and a pruned one needs a storage its workers reach: local worker processes always
do; remote ones need a shared storage URL (``--storage postgresql://...``).
"""

from __future__ import annotations

import atexit
import datetime
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from tasks.config import trial_key
from tasks.console import say
from tasks.data.mnist import DataHandle
from tasks.errors import UserError
from tasks.search.loop import Ask, Plan
from tasks.search.optuna_storage import (
    IMPORTED_ATTR,
    OBJECTIVE,
    frozen_trial,
    open_storage,
    quiet_optuna,
    result_attrs,
    storage_lock,
)
from tasks.search.tune_space import TuneSpace
from tasks.trial import pruning
from tasks.trial.pruning import TrialLink
from tasks.trial.result import TrialResult

SamplerName = Literal["tpe", "random"]
SAMPLERS: tuple[str, ...] = get_args(SamplerName)
#: Asks in a row of configs the study already held before the run after which a tune stops:
#: its sampler keeps returning to what it knows (a small or exhausted space).
MAX_KNOWN_IN_A_ROW = 25
#: ``trials`` of a tune bounded by its budget alone (no --trials given).
UNBOUNDED = 1_000_000
#: Random configs before TPE starts modelling (Optuna's default).
TPE_STARTUP_TRIALS = 10
#: Seconds between two heartbeats of a trial a tune holds.
HEARTBEAT_INTERVAL = 10
#: Seconds without a heartbeat after which a running trial is a dead tune's: failed, asked
#: again. Long beside the interval, so that a busy machine never fails a live tune's trial.
GRACE_PERIOD = 60
#: The study's system attribute [trials when a tune last started, tunes started there].
STARTS_ATTR = "tune_starts"
#: The system attribute of a trial whose tune records heartbeats (its interval): a running
#: trial without it, older than the grace period, was left by a tune from before heartbeats.
HEARTBEAT_ATTR = "heartbeat_interval"


@dataclass(frozen=True)
class Objective:
    """One thing a tune optimizes: its direction, its name in figures, and its value in a
    trial result (None: the result does not hold it)."""

    direction: str
    label: str
    of: Callable[[TrialResult], float | None]


def _param_count(result: TrialResult) -> float | None:
    return None if result.param_count is None else float(result.param_count)


def _latency(result: TrialResult) -> float | None:
    from tasks.trial.latency import latency_of

    return latency_of(result)  # a cached trial's measured from its weights, once


#: The objectives a tune can take, by their ``--objectives`` name; the first is always
#: ``val_accuracy``. A new one (a cost a trial result records) is one more entry.
OBJECTIVES: dict[str, Objective] = {
    OBJECTIVE: Objective("maximize", "val accuracy", lambda r: r.val_accuracy),
    "params": Objective("minimize", "trainable parameters", _param_count),
    "latency": Objective("minimize", "inference ms per image", _latency),
}
#: Objectives that make sense but that no trial records yet: refused, saying why.
NOT_RECORDED: dict[str, str] = {}


def check_objectives(objectives: Sequence[str] | str, pruner: str = "none") -> list[str]:
    """The objectives' names (``["val_accuracy", "params"]``; ``"val_accuracy,params"`` is
    read too), checked: known and recorded, each once, ``val_accuracy`` first, and no
    ``pruner`` with more than one (Optuna cannot prune a multi-objective study). A bad list is
    one UserError line naming what is allowed."""
    given = [objectives] if isinstance(objectives, str) else list(objectives)
    names = [n.strip() for text in given for n in str(text).split(",") if n.strip()]
    shown = ",".join(names) or ",".join(map(str, given))
    allowed = f"allowed: {', '.join(OBJECTIVES)} ({OBJECTIVE} first)"
    if not names:
        raise UserError(f"objectives={shown!r}: none given; {allowed}")
    for name in names:
        if name in NOT_RECORDED:
            raise UserError(f"objectives={shown!r}: {NOT_RECORDED[name]}; {allowed}")
        if name not in OBJECTIVES:
            raise UserError(f"objectives={shown!r}: unknown objective {name!r}; {allowed}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"objectives={shown!r}: {', '.join(repeated)} given more than once; "
                        "each objective once")
    if names[0] != OBJECTIVE:
        raise UserError(f"objectives={shown!r}: the first objective must be {OBJECTIVE} (what "
                        f"the search selects on); {allowed}")
    if len(names) > 1 and pruner != "none":
        raise UserError(f"pruner={pruner!r} with {len(names)} objectives: Optuna cannot prune "
                        "a multi-objective study; use --pruner none")
    return names


def make_sampler(name: str, seed: int, resumed_at: int = 0, start: int = 0):
    """Optuna's sampler ``name``. A resumed study gets a seed of its own (``resumed_at``: its
    trials so far), so a random sampler does not ask the first run's configs again; so does
    each tune started at the same point (``start``: how many started there before it), so two
    tunes at once do not ask the same configs."""
    import optuna

    seed = seed + 1_000_003 * resumed_at + 7_919 * start
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True,
                                          n_startup_trials=TPE_STARTUP_TRIALS)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise UserError(f"sampler={name!r}: allowed {', '.join(SAMPLERS)}")


def study_identity(space: TuneSpace, data: DataHandle, backend: str) -> dict:
    """What must not change within one study: values are comparable only on the same space,
    epochs, data and backend."""
    return {"space": space.model_dump(mode="json"), "data": data.fingerprint,
            "backend": backend}


def ask_again(study, trial) -> None:
    """Optuna's callback for a trial failed as stale: enqueue its config, asked again first."""
    study.enqueue_trial(trial.params, skip_if_exists=False)


class Heartbeats:
    """A background thread recording a heartbeat every ``interval`` s for each trial held
    (asked and not yet told); the first one at once, when the trial is taken."""

    def __init__(self, storage, interval: int):
        self.storage, self.interval = storage, interval
        self.held: dict[int, tuple[int, dict[str, Any]]] = {}  # number -> (id, params)
        self.guard = threading.Lock()
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None

    def hold(self, number: int, trial_id: int, params: dict[str, Any]) -> None:
        self.storage.record_heartbeat(trial_id)
        with self.guard:
            self.held[number] = (trial_id, params)
            if self.thread is None:
                self.thread = threading.Thread(target=self.beat, name="optuna-heartbeats",
                                               daemon=True)
                self.thread.start()

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


class TuneProposer:
    """An Optuna study of ``trials`` finished trials over ``space`` as a proposer (module doc;
    :class:`tasks.search.loop.Proposer`). ``storage``: the storage URL. ``objectives``: what
    the study optimizes (:func:`check_objectives`; more than one: a multi-objective study).
    ``heartbeat_interval``, ``grace_period``: seconds (module doc)."""

    name = "tune"
    title = "Tune"

    def __init__(self, space: TuneSpace, data: DataHandle, backend: str, storage: str,
                 trials: int = 50, sampler: str = "tpe", pruner: str = "none", seed: int = 0,
                 study_name: str = "tune", *, warm_start: bool = True,
                 objectives: Sequence[str] = (OBJECTIVE,),
                 heartbeat_interval: int = HEARTBEAT_INTERVAL,
                 grace_period: int = GRACE_PERIOD):
        import optuna
        from optuna.trial import TrialState

        quiet_optuna()
        self.objectives = check_objectives(objectives, pruner)
        self.multi = len(self.objectives) > 1
        self.space, self.url, self.study_name = space, storage, study_name
        self.trials, self.sampler_name, self.pruner = trials, sampler, pruner
        self.grace_period = grace_period
        # one tune starts at a time on a storage: the study's creation, its attributes, the
        # stale trials failed and enqueued once, the finished trials counted
        with storage_lock(storage):
            self.storage = open_storage(storage, heartbeat_interval=heartbeat_interval,
                                        grace_period=grace_period,
                                        heartbeat_stale_trial_callback=ask_again)
            directions = ({"directions": [OBJECTIVES[n].direction for n in self.objectives]}
                          if self.multi else {"direction": "maximize"})
            self.study = optuna.create_study(
                study_name=study_name, storage=self.storage,
                pruner=pruning.make_pruner(pruner, space.epochs), load_if_exists=True,
                **directions)
            self.study_id = self.storage.get_study_id_from_name(study_name)
            self.check_study_objectives()
            identity = study_identity(space, data, backend)
            known = {k: self.study.user_attrs.get(k) for k in identity}
            if any(v is not None for v in known.values()) and known != identity:
                changed = ", ".join(k for k in identity if known[k] != identity[k])
                raise UserError(
                    f"study '{study_name}' in {storage} was run with another {changed}: "
                    "its values would not compare; give a new --study-name (or the same "
                    "space, epochs, data and backend)")
            for key, value in identity.items():
                if known[key] != value:
                    self.study.set_user_attr(key, value)
            if self.study.user_attrs.get("kind") != "tune":
                self.study.set_user_attr("kind", "tune")
            if self.study.metric_names != self.objectives:
                self.study.set_metric_names(self.objectives)
            self.recover()
            self.imported = self.import_cached(data, backend) if warm_start else 0
            every = self.study.get_trials(deepcopy=False)
            self.imported_total = sum(bool(t.user_attrs.get(IMPORTED_ATTR)) for t in every)
            # the configs whose results the study held before this run (imported or its own)
            self.known_keys = {t.user_attrs.get("trial_key") for t in every
                               if t.state == TrialState.COMPLETE}
            # --trials counts the study's own trials (asked by its sampler), not imported ones
            self.finished_before = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                                       and not t.user_attrs.get(IMPORTED_ATTR) for t in every)
            point, started = self.storage.get_study_system_attrs(self.study_id).get(
                STARTS_ATTR, [-1, 0])
            started = started if point == len(every) else 0
            self.storage.set_study_system_attr(self.study_id, STARTS_ATTR,
                                               [len(every), started + 1])
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

    def check_study_objectives(self) -> None:
        """Refuse a study created with other objectives (``create_study`` loads an existing
        study whatever directions it is given): its values would not compare."""
        held = [d.name.lower() for d in self.study.directions]
        names = self.study.metric_names
        wanted = [OBJECTIVES[n].direction for n in self.objectives]
        if held == wanted and names in (None, self.objectives):
            return
        was = ",".join(names) if names else f"{len(held)} objective(s) ({', '.join(held)})"
        raise UserError(
            f"study '{self.study_name}' in {self.url} was run with objectives {was}, this run "
            f"asks for {','.join(self.objectives)}: its values would not compare; give a new "
            "--study-name (or the same --objectives)")

    def values(self, result: TrialResult) -> list[float] | None:
        """The objectives' values of ``result``; None if it lacks one (or it is NaN)."""
        values = [OBJECTIVES[n].of(result) for n in self.objectives]
        if any(v is None or v != v for v in values):
            return None
        return [float(v) for v in values]

    def import_cached(self, data: DataHandle, backend: str) -> int:
        """Warm start: add every completed trial of the cache that lies in this study's space
        (same epochs, seed and protocol, data and backend) and is not in the study yet, as a
        complete trial with its epochs' values; none is trained. Returns how many were added.
        Called under the storage lock (two tunes starting at once import once)."""
        from tasks.trial.store import cached_results

        have = {t.user_attrs.get("trial_key") for t in self.study.get_trials(deepcopy=False)}
        distributions = self.space.distributions()
        new = [r for r in cached_results(data.fingerprint, backend)
               if r.status == "completed" and r.trial_key not in have
               and self.space.params_of(r.config) is not None
               and (not self.multi or self.values(r) is not None)]
        if new:
            trials = [frozen_trial(0, r, distributions, self.values(r)) if self.multi
                      else frozen_trial(0, r, distributions) for r in new]
            for trial in trials:
                trial.set_user_attr(IMPORTED_ATTR, True)
            self.study.add_trials(trials)
        return len(new)

    def recover(self) -> None:
        """Fail the running trials of dead tunes and enqueue their configs (module doc):
        those whose heartbeat is stale, and those that never had one and are older than the
        grace period. Called under the storage lock."""
        import optuna
        from optuna.trial import TrialState

        optuna.storages.fail_stale_trials(self.study)  # enqueues them (ask_again)
        oldest = datetime.datetime.now() - datetime.timedelta(seconds=self.grace_period)
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if HEARTBEAT_ATTR not in trial.system_attrs and trial.datetime_start is not None \
                    and trial.datetime_start < oldest and self.fail(trial.number):
                ask_again(self.study, trial)

    def trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def fail(self, number: int) -> bool:
        """Fail the running trial ``number``; False if it is finished already."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        try:
            return self.storage.set_trial_state_values(self.trial_id(number), TrialState.FAIL)
        except UpdateFinishedTrialError:
            return False

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
            self.recover()
            trial = self.study.ask(self.space.distributions())
            trial_id = self.trial_id(trial.number)
            self.heartbeats.hold(trial.number, trial_id, dict(trial.params))
            self.storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR,
                                               self.heartbeats.interval)
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
            values = self.values(result)
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
        rather than after the grace period. Also called at exit."""
        held = self.heartbeats.stop()
        if not held:
            return
        with storage_lock(self.url):
            for number, (_, params) in sorted(held.items()):
                if self.fail(number):  # else: failed as stale by another tune, which enqueued it
                    self.study.enqueue_trial(params, skip_if_exists=False)


def close_at_exit(ref: weakref.ref) -> None:
    proposer = ref()
    if proposer is not None:
        try:
            proposer.close()
        except Exception as error:  # the storage may be gone: heartbeats recover them
            say(f"Tune: running trials not failed at exit ({error})")
