"""Random search and the "best of N" study, without repeats and without the 10-hour wait.

    python flows/random_search.py --trials 12 --epochs 2              # a plain search
    python flows/random_search.py --study                             # the exercise's study
    python flows/random_search.py --study --protocol repeats --repeats 3
    python flows/random_search.py --budget 10m                        # 10 training minutes
    python flows/random_search.py --trials 12 --refit     # the best trial, refitted
    python flows/random_search.py --study --ensemble 10   # the study's trials as one model

Configs are drawn from the search space without repeats, reproducibly from --draw-seed (a
larger --trials extends a smaller one), and train through the same cached task as the grid: a
config trained before is never trained again. The best trial is chosen by validation
accuracy; the exercise's max test accuracy is shown beside it, labelled as such.
"""

from __future__ import annotations

import sys
from typing import Annotated

from prefect import flow
from pydantic import Field

from tasks.cli import flow_main, run_cli
from tasks.config import PositiveInt, with_epochs
from tasks.data.splits import dataset_info
from tasks.data.task import prepare_data_task
from tasks.errors import UserError
from tasks.export.refit import Refit
from tasks.reports.ensemble import Ensemble, check_model_choice
from tasks.reports.random_search import write_random_report_task
from tasks.run_options import Budget, DrawSeed, Epochs, FanOut, RunOptions
from tasks.search.best_of_n import StudyPlan, make_study_plan
from tasks.search.loop import finish_run, run_trials
from tasks.search.proposers import StudyDraws, random_proposer
from tasks.search.space import DEFAULT_RANDOM_SPACE, SearchSpace, make_space, sample_configs
from tasks.search.spending import make_spending

#: The most configs a budgeted search draws when --trials does not say.
BUDGET_DRAWS = 10_000

Trials = Annotated[PositiveInt | None, Field(
    description="plain search: number of distinct random configs (default: 20; with --budget: "
                f"the most it may buy, default every config of the space up to {BUDGET_DRAWS})")]


def plain_trials(trials: int | None, budget: str | None, space: SearchSpace) -> int:
    """How many configs a plain search draws."""
    if trials is not None:
        return trials
    return min(space.size, BUDGET_DRAWS) if budget is not None else 20


Study = Annotated[StudyPlan | None, Field(description="run the best-of-N study instead of a "
                                                      "plain search")]


@flow(name="random-search")
def random_search(
    space: SearchSpace = DEFAULT_RANDOM_SPACE,
    epochs: Epochs = None,
    trials: Trials = None,
    study: Study = None,
    budget: Budget = None,
    draw_seed: DrawSeed = 0,
    run: RunOptions = RunOptions(),
    fan_out: FanOut = FanOut(),
    refit: Refit = False,
    ensemble: Ensemble = None,
) -> str:
    """A plain search of ``trials`` random configs (on a ``budget``: as many as it buys), or
    the best-of-N ``study``; returns the report folder. ``epochs``, when given, replaces
    ``space.epochs``; ``refit``: the exported model is the best trial's config retrained on
    train + validation; ``ensemble``: it is an ensemble of that many greedy picks among the
    trials."""
    check_model_choice(refit, ensemble)
    space = with_epochs(space, epochs)
    data = prepare_data_task(run.data, run.split(), run.data_dir, run.label)
    spending = make_spending(budget, data, run.backend)
    if study is None:
        count = plain_trials(trials, budget, space)
        proposer = random_proposer(space, count, draw_seed, data, budgeted=budget is not None)
        draws = None
    else:
        study_draws = StudyDraws(space, study, draw_seed)
        proposer, draws = study_draws.proposer(data), study_draws.keys(data, run.backend)
    results = run_trials(proposer, data, run, fan_out, spending=spending)
    report = write_random_report_task(
        results, space, study, draws, run.reports_dir,
        len(results) if spending else len(proposer.configs), run.optuna_storage(),
        spending.summary() if spending else None, dataset_info(data).name, data=data,
        refit=refit, ensemble=ensemble)
    return finish_run(results, report, fan_out.max_failures)


def check(kwargs: dict) -> None:
    """Cross-field rules, before anything starts: the draw must fit the space."""
    space = with_epochs(kwargs.get("space", DEFAULT_RANDOM_SPACE), kwargs.get("epochs"))
    study, seed = kwargs.get("study"), kwargs.get("draw_seed", 0)
    budget = kwargs.get("budget")
    check_model_choice(kwargs.get("refit", False), kwargs.get("ensemble"))
    if study is not None and budget is not None:
        raise UserError(f"budget={budget!r} with --study: a budget applies to a plain search "
                        "(the study's draws are fixed by its plan); leave out one of them")
    if study is None:  # raises the one-line error of a draw that cannot be made
        sample_configs(space, plain_trials(kwargs.get("trials"), budget, space), seed)
    else:
        StudyDraws(space, study, seed)


def main(argv: list[str] | None = None) -> str:
    return flow_main(random_search, "Random search over a space of trial configs (each value "
                     "list below is the space), or the best-of-N study; writes a report folder "
                     "under reports/.", argv, expand=("space", "study", "run", "fan_out"),
                     make={"space": make_space, "study": make_study_plan}, check=check)


if __name__ == "__main__":
    sys.exit(run_cli(main))
