"""The model-based search: an Optuna study driven by ask/tell, on the same trial unit.

Each config the sampler asks for runs as the cached, retried ``train_trial_task``, so a config
that a grid, a random search or an earlier tune already trained costs nothing. Up to
``workers`` trials run at once; the TPE sampler is Optuna's with ``constant_liar=True``: while
a trial runs, it counts as a bad result, so the next trials asked meanwhile go elsewhere instead
of piling onto the same region.

The study lives in an Optuna storage (default ``sqlite:///data/optuna.db``) under a name, so a
tune resumes and extends across runs: ``--trials`` is the number of finished (complete or
pruned) trials the study should hold. Trials a killed run left running are marked failed and
their configs asked again first (if they had finished training, the cache has them).

Only a pruned tune's workers talk to the storage (each epoch, to ask the pruner); otherwise
the parent tells the study each trial's epochs. So a tune without pruning runs on any Dask
cluster, and a pruned one needs a storage its workers reach: local worker processes always
do; remote ones need a shared storage URL (``--storage postgresql://…``).
"""

from __future__ import annotations

from typing import Literal, get_args

from tasks.data.mnist import DataHandle
from tasks.errors import UserError
from tasks.search.loop import Ask, Plan
from tasks.search.optuna_storage import OBJECTIVE, quiet_optuna, result_attrs
from tasks.search.tune_space import TuneSpace
from tasks.trial import pruning
from tasks.trial.pruning import TrialLink
from tasks.trial.result import TrialResult

SamplerName = Literal["tpe", "random"]
SAMPLERS: tuple[str, ...] = get_args(SamplerName)
#: Random configs before TPE starts modelling (Optuna's default).
TPE_STARTUP_TRIALS = 10


def make_sampler(name: str, seed: int, resumed_at: int = 0):
    """Optuna's sampler ``name``. A resumed study gets a seed of its own (``resumed_at``: its
    trials so far), so a random sampler does not ask the first run's configs again."""
    import optuna

    seed = seed + 1_000_003 * resumed_at
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


class TuneProposer:
    """An Optuna study of ``trials`` finished trials over ``space`` as a proposer (module doc;
    :class:`tasks.search.loop.Proposer`). ``storage``: the storage URL."""

    name = "tune"
    title = "Tune"

    def __init__(self, space: TuneSpace, data: DataHandle, backend: str, storage: str,
                 trials: int = 50, sampler: str = "tpe", pruner: str = "none", seed: int = 0,
                 study_name: str = "tune"):
        import optuna
        from optuna.trial import TrialState

        quiet_optuna()
        self.space, self.url, self.study_name = space, storage, study_name
        self.trials, self.sampler_name, self.pruner = trials, sampler, pruner
        self.study = optuna.create_study(
            study_name=study_name, storage=storage, direction="maximize",
            pruner=pruning.make_pruner(pruner, space.epochs), load_if_exists=True)
        identity = study_identity(space, data, backend)
        known = {k: self.study.user_attrs.get(k) for k in identity}
        if any(v is not None for v in known.values()) and known != identity:
            changed = ", ".join(k for k in identity if known[k] != identity[k])
            raise UserError(
                f"study '{study_name}' in {storage} was run with another {changed}: "
                "its values would not compare; give a new --study-name (or the same space, "
                "epochs, data and backend)")
        for key, value in identity.items():
            self.study.set_user_attr(key, value)
        self.study.set_user_attr("kind", "tune")
        self.study.set_metric_names([OBJECTIVE])
        # a killed run's unfinished trials: fail them, ask their configs again first
        for trial in self.study.get_trials(deepcopy=False,
                                           states=(TrialState.RUNNING, TrialState.WAITING)):
            if trial.state == TrialState.RUNNING:
                self.study.enqueue_trial(trial.params, skip_if_exists=False)
                self.study.tell(trial.number, state=TrialState.FAIL)
        every = self.study.get_trials(deepcopy=False)
        self.finished_before = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                                   for t in every)
        # a seed of its own per resume point (the trials so far, failed ones included), so a
        # resumed study's sampler does not repeat the first run's draws
        self.study.sampler = make_sampler(sampler, seed, len(every))
        self.to_finish = max(0, trials - self.finished_before)
        self.asked = 0
        self._results: list[TrialResult] = []

    def plan(self) -> Plan:
        return Plan(trials=self.to_finish, epochs=self.space.epochs)

    def describe(self) -> str:
        return (f"Tune '{self.study_name}' ({self.sampler_name} sampler, pruner {self.pruner}): "
                f"{self.finished_before} finished trials in the study, "
                f"{self.to_finish} more to reach {self.trials}")

    def ask(self) -> Ask | None:
        if self.asked >= self.to_finish:
            return None
        trial = self.study.ask(self.space.distributions())
        config = self.space.config(trial.params)
        trial.set_user_attr("config", config.model_dump(mode="json"))
        self.asked += 1
        # the worker talks to the study only to be pruned; otherwise the epochs are told from
        # here (a remote worker need not reach the storage)
        link = (None if self.pruner == "none" else
                TrialLink(storage=self.url, study=self.study_name, trial_number=trial.number,
                          pruner=self.pruner))
        return Ask(config, link, token=trial)

    def tell(self, asked: Ask, result: TrialResult) -> None:
        from optuna.trial import TrialState

        trial = asked.token
        self._results.append(result)
        for key, value in result_attrs(result).items():
            trial.set_user_attr(key, value)
        if result.status == "failed":
            self.study.tell(trial, state=TrialState.FAIL)
            return
        if result.cached or asked.link is None:
            # not reported by a pruned worker: trained before (the cache, or this run), or
            # trained without a pruner
            for row in result.history:
                trial.report(float(row["val_accuracy"]), int(row["epoch"]))
        if result.status == "pruned":
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            self.study.tell(trial, result.val_accuracy)

    def results(self) -> list[TrialResult]:
        """In the order the trials finished."""
        return list(self._results)
