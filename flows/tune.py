"""Model-based search: Optuna's TPE (or random) sampler, optional pruning, on the cached trial.

    python flows/tune.py --trials 50                                # TPE, the notebook's space
    python flows/tune.py --trials 80                                # extends the same study
    python flows/tune.py --space-file examples/space.toml --study-name continuous
    python flows/tune.py --learning-rate log_uniform:1e-5:1e-1 --pruner median --trials 40
    python flows/tune.py --budget 10m --study-name ten-minutes      # 10 training minutes
    python flows/tune.py --objectives val_accuracy params --study-name small  # Pareto front
    python flows/tune.py --trials 50 --refit       # the study's best trial, refitted
    python flows/tune.py --trials 50 --ensemble 10  # the study's trials as one model

Every asked config trains as the same cached task as the grid and the random search (anything
trained before costs nothing). The study lives in an Optuna storage (``optuna.db`` in the data
directory unless --storage says otherwise), so a killed tune resumes and a larger --trials
extends it; `optuna-dashboard sqlite:///data/optuna.db` shows it. A new study starts warm:
every completed trial of the cache in its space is added to it first, trained by nobody
(--no-warm-start: a cold start).
"""

from __future__ import annotations

import sys
from typing import Annotated

from prefect import flow
from pydantic import Field

from tasks.cli import flow_main, run_cli
from tasks.config import PositiveInt, Seed, with_epochs
from tasks.data.task import prepare_data_task
from tasks.errors import UserError
from tasks.export.refit import Refit
from tasks.reports.ensemble import Ensemble, check_model_choice
from tasks.reports.tune import write_tune_report_task
from tasks.run_options import Budget, Epochs, FanOut, RunOptions
from tasks.search.loop import finish_run, run_trials
from tasks.search.spending import make_spending
from tasks.search.tune.objectives import NOT_RECORDED, OBJECTIVES, check_objectives
from tasks.search.tune.proposer import UNBOUNDED, TuneProposer
from tasks.search.tune.samplers import SamplerName
from tasks.search.tune_space import (
    DEFAULT_TUNE_SPACE,
    TuneSpace,
    make_tune_space,
    read_space_file,
)
from tasks.trial.pruning import PrunerName

Trials = Annotated[PositiveInt | None, Field(
    description="finished (complete or pruned) trials of its own the study should hold, "
                "imported ones not counted; a larger number extends an earlier tune of the "
                "same study (default: 50; with --budget: as many as the budget buys)")]
WarmStart = Annotated[bool, Field(
    description="before the first ask, add every completed trial of the cache that lies in "
                "the space (same epochs, data, backend and protocol: from grids, random "
                "searches, studies, other tunes) to the study, without training it")]
Sampler = Annotated[SamplerName, Field(
    description="tpe: Optuna's TPE (model-based, constant liar for the trials running at "
                "once); random: uniform draws, for comparison")]
Pruner = Annotated[PrunerName, Field(
    description="stop hopeless trials after an epoch: median (below the median of earlier "
                "trials at that epoch) or hyperband; none: every trial trains all its epochs")]
SamplerSeed = Annotated[Seed, Field(
    description="seed of the sampler (a resumed study continues from its own state)")]
Objectives = Annotated[list[str], Field(
    description="what the study optimizes: "
                + ", ".join(f"{name} ({goal.label}, {goal.direction}d)"
                            for name, goal in OBJECTIVES.items())
                + "; val_accuracy first; more than one makes a multi-objective study whose "
                "Pareto front optuna-dashboard and the report show (no pruner then)"
                + (f"; not yet: {', '.join(NOT_RECORDED)} (not recorded)" if NOT_RECORDED
                   else "") + ". E.g. val_accuracy latency or val_accuracy,params")]
StudyName = Annotated[str, Field(
    description="the Optuna study: a tune with the same name resumes and extends it")]
Storage = Annotated[str | None, Field(
    description="Optuna storage URL (default: $PIPELINE_OPTUNA_STORAGE, else "
                "sqlite:///<data dir>/optuna.db)")]


@flow(name="tune")
def tune(
    space: TuneSpace = DEFAULT_TUNE_SPACE,
    epochs: Epochs = None,
    trials: Trials = None,
    budget: Budget = None,
    warm_start: WarmStart = True,
    sampler: Sampler = "tpe",
    pruner: Pruner = "none",
    objectives: Objectives = ["val_accuracy"],  # noqa: B006 (read, never changed)
    sampler_seed: SamplerSeed = 0,
    study_name: StudyName = "tune",
    storage: Storage = None,
    run: RunOptions = RunOptions(),
    fan_out: FanOut = FanOut(),
    refit: Refit = False,
    ensemble: Ensemble = None,
) -> str:
    """Run the Optuna study ``study_name`` until it holds ``trials`` finished trials and write
    its report (on a ``budget``: until it is spent); returns the report folder. ``epochs``,
    when given, replaces ``space.epochs``. ``objectives``: more than one makes a
    multi-objective study (no pruner). ``refit``: the exported model is the study's best
    trial's config retrained on train + validation; ``ensemble``: it is an ensemble of that
    many greedy picks among the study's trials."""
    check_model_choice(refit, ensemble)
    # here too: a deployment's run is not checked by the command line's check()
    objectives = check_objectives(objectives, pruner)
    space = with_epochs(space, epochs)
    storage = run.optuna_storage(storage)
    data = prepare_data_task(run.data, run.split(), run.data_dir, run.label)
    spending = make_spending(budget, data, run.backend)
    wanted = trials if trials is not None else (UNBOUNDED if budget is not None else 50)
    proposer = TuneProposer(space, data, run.backend, storage, wanted, sampler, pruner,
                            sampler_seed, study_name, warm_start=warm_start,
                            objectives=objectives)
    results = run_trials(proposer, data, run, fan_out, spending=spending)
    report = write_tune_report_task(study_name, storage, results, space, sampler, pruner,
                                    run.reports_dir,
                                    spending.summary() if spending else None,
                                    proposer.imported, data=data, refit=refit,
                                    ensemble=ensemble)
    return finish_run(results, report, fan_out.max_failures)


def check(kwargs: dict) -> None:
    """Cross-field rules, before anything starts."""
    if not kwargs.get("study_name", "tune").strip():
        raise UserError("study_name='': give the study a name")
    check_objectives(kwargs.get("objectives", ["val_accuracy"]), kwargs.get("pruner", "none"))
    check_model_choice(kwargs.get("refit", False), kwargs.get("ensemble"))


def main(argv: list[str] | None = None) -> str:
    return flow_main(
        tune, "Model-based search with Optuna (TPE or random sampler, optional pruning) over "
        "a space of distributions; every trial is the same cached training task as the grid's "
        "and the random search's. Each dimension below is kind:arguments: choice:A,B,C | "
        "uniform:LOW:HIGH[:DECIMALS] | log_uniform:LOW:HIGH[:DIGITS] | int:LOW:HIGH | "
        "int_log:LOW:HIGH, or the values to choose from (--layers 1 2 3).", argv,
        expand=("space", "run", "fan_out"),
        make={"space": make_tune_space}, check=check, files={"space": read_space_file})


if __name__ == "__main__":
    sys.exit(run_cli(main))
