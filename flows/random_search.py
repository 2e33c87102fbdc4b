"""Random search and the "best of N" study, without repeats and without the 10-hour wait.

    python flows/random_search.py --trials 12 --epochs 2              # a plain search
    python flows/random_search.py --study                             # the exercise's study
    python flows/random_search.py --study --protocol repeats --repeats 3

Configs are drawn from the search space without repeats, reproducibly from --draw-seed (a
larger --trials extends a smaller one), and train through the same cached task as the grid: a
config trained before is never trained again. The best trial is chosen by validation
accuracy; the exercise's max test accuracy is shown beside it, labelled as such.
"""

from __future__ import annotations

import sys

from prefect import flow

from tasks.best_of_n import StudyPlan, make_study_plan
from tasks.cli import flow_main, run_cli
from tasks.config import Backend, NonNegativeInt, PositiveInt, Seed
from tasks.runners import RunnerKind
from tasks.search import run_search
from tasks.search_space import DEFAULT_RANDOM_SPACE, SearchSpace, make_space
from tasks.strategy_random import BestOfNStudy, RandomSearch


@flow(name="random-search")
def random_search(
    space: SearchSpace = DEFAULT_RANDOM_SPACE,
    epochs: PositiveInt | None = None,
    trials: PositiveInt = 20,
    study: StudyPlan | None = None,
    draw_seed: Seed = 0,
    data: str | None = None,
    train_samples: PositiveInt | None = None,
    reports_dir: str | None = None,
    data_dir: str | None = None,
    backend: Backend = "compiled",
    runner: RunnerKind = "auto",
    workers: PositiveInt | None = None,
    dask_address: str | None = None,
    max_failures: NonNegativeInt | None = 0,
) -> str:
    """A plain search of ``trials`` random configs, or the best-of-N ``study``; returns the
    report folder. ``epochs``, when given, replaces ``space.epochs``."""
    strategy = (RandomSearch(space, trials, draw_seed) if study is None
                else BestOfNStudy(space, study, draw_seed))
    options = {k: v for k, v in locals().items() if k not in ("trials", "study", "strategy")}
    return run_search(strategy, **options)


def check(kwargs: dict) -> None:
    """Cross-field rules, before anything starts: the draw must fit the space."""
    space = kwargs.get("space", DEFAULT_RANDOM_SPACE)
    if "epochs" in kwargs:
        space = space.model_copy(update={"epochs": kwargs["epochs"]})
    study, seed = kwargs.get("study"), kwargs.get("draw_seed", 0)
    strategy = (RandomSearch(space, kwargs.get("trials", 20), seed) if study is None
                else BestOfNStudy(space, study, seed))
    strategy.configs()  # raises the one-line error of a draw that cannot be made


def main(argv: list[str] | None = None) -> str:
    return flow_main(random_search, "Random search over a space of trial configs (each value "
                     "list below is the space), or the best-of-N study; writes a report folder "
                     "under reports/.", argv, expand=("space", "study"),
                     make={"space": make_space, "study": make_study_plan}, check=check)


if __name__ == "__main__":
    sys.exit(run_cli(main))
