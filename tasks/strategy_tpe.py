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

from collections.abc import Sequence
from dataclasses import dataclass, replace

from tasks.config import TrialConfig
from tasks.data import DataHandle
from tasks.errors import UserError
from tasks.optuna_study import OBJECTIVE
from tasks.training import TrialLink, TrialResult
from tasks.tune_space import TuneSpace

SAMPLERS: tuple[str, ...] = ("tpe", "random")
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
    """The ask/tell side of a tune (see :class:`tasks.training.Proposer`)."""

    def __init__(self, search: TuneSearch, data: DataHandle, backend: str):
        import optuna
        from optuna.trial import TrialState

        from tasks.optuna_study import quiet_optuna, storage_url
        from tasks.pruning import make_pruner

        quiet_optuna()
        self.search, self.space = search, search.space
        self.epochs = search.space.epochs
        self.url = storage_url(search.storage)
        self.study = optuna.create_study(
            study_name=search.study_name, storage=self.url, direction="maximize",
            pruner=make_pruner(search.pruner, self.space.epochs), load_if_exists=True)
        identity = study_identity(self.space, data, backend)
        known = {k: self.study.user_attrs.get(k) for k in identity}
        if any(v is not None for v in known.values()) and known != identity:
            changed = ", ".join(k for k in identity if known[k] != identity[k])
            raise UserError(
                f"study '{search.study_name}' in {self.url} was run with another {changed}: "
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
        self.study.sampler = make_sampler(search.sampler, search.seed, len(every))
        self.to_finish = max(0, search.trials - self.finished_before)
        self.asked = 0
        self.running: dict[int, object] = {}

    def remaining(self) -> int:
        return self.to_finish

    def ask(self) -> tuple[TrialConfig, TrialLink] | None:
        if self.asked >= self.to_finish:
            return None
        trial = self.study.ask(self.space.distributions())
        config = self.space.config(trial.params)
        trial.set_user_attr("config", config.model_dump(mode="json"))
        self.asked += 1
        link = TrialLink(storage=self.url, study=self.search.study_name,
                         trial_id=trial._trial_id, pruner=self.search.pruner)
        self.running[trial._trial_id] = trial
        return config, link

    def tell(self, config: TrialConfig, link: TrialLink | None, result: TrialResult) -> None:
        from optuna.trial import TrialState

        from tasks.optuna_study import result_attrs

        trial = self.running.pop(link.trial_id)
        for key, value in result_attrs(result).items():
            trial.set_user_attr(key, value)
        if result.status == "failed":
            self.study.tell(trial, state=TrialState.FAIL)
            return
        if result.cached or link.pruner == "none":
            # not reported by a pruned worker: trained before (the cache, or this run), or
            # trained without a pruner (see run_adaptive)
            for row in result.history:
                trial.report(float(row["val_accuracy"]), int(row["epoch"]))
        if result.status == "pruned":
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            self.study.tell(trial, result.val_accuracy)


@dataclass(frozen=True)
class TuneSearch:
    """An Optuna study of ``trials`` finished trials over ``space`` (module doc)."""

    space: TuneSpace
    trials: int = 50
    sampler: str = "tpe"
    pruner: str = "none"
    seed: int = 0
    study_name: str = "tune"
    storage: str | None = None
    name: str = "tune"
    title: str = "Tune"

    def with_space(self, space: TuneSpace) -> TuneSearch:
        return replace(self, space=space)

    def proposer(self, data: DataHandle, backend: str) -> TuneProposer:
        return TuneProposer(self, data, backend)

    def announce(self, proposer: TuneProposer) -> str:
        return (f"Tune '{self.study_name}' ({self.sampler} sampler, pruner {self.pruner}): "
                f"{proposer.finished_before} finished trials in the study, "
                f"{proposer.to_finish} more to reach {self.trials}")

    def report(self, results: list[TrialResult], configs: Sequence[TrialConfig],
               reports_dir: str | None, wall_seconds: float) -> str:
        from tasks.report_tune import write_tune_report_task

        return write_tune_report_task(self.study_name, self.storage, results, self.space,
                                      self.sampler, self.pruner, reports_dir)
