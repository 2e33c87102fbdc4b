"""The whole exercise: baseline, grid search and the random-search study, as three subflows
with one combined report.

    python flows/exercise.py --data ../shared/data/mnist.npz
    python flows/exercise.py --train-samples 5000 --epochs 1 --n 2 4 --pool-size 8   # a demo

Every trial goes through the shared cache, so rerunning (or resuming after a crash) trains
only what is missing.
"""

from __future__ import annotations

import sys

from prefect import flow

from flows.grid import grid_search
from flows.random_search import random_search
from flows.train import baseline
from tasks.best_of_n import StudyPlan, make_study_plan, study_configs
from tasks.cli import flow_main, run_cli, say
from tasks.config import Backend, NonNegativeInt, PositiveInt, Seed, TrialConfig
from tasks.report_exercise import check_report_failures, write_exercise_report_task
from tasks.runners import RunnerKind
from tasks.search_space import DEFAULT_GRID, DEFAULT_RANDOM_SPACE, SearchSpace


@flow(name="exercise")
def exercise(
    baseline_config: TrialConfig = TrialConfig(),
    grid: SearchSpace = DEFAULT_GRID,
    random_space: SearchSpace = DEFAULT_RANDOM_SPACE,
    study: StudyPlan = StudyPlan(),
    epochs: PositiveInt | None = None,
    draw_seed: Seed = 0,
    data: str | None = None,
    train_samples: PositiveInt | None = None,
    reports_dir: str | None = None,
    data_dir: str | None = None,
    backend: Backend = "compiled",
    runner: RunnerKind = "auto",
    workers: PositiveInt | None = None,
    dask_address: str | None = None,
    max_failures: NonNegativeInt = 0,
) -> str:
    """Run the baseline, the grid and the best-of-N study; write one combined report.
    ``epochs``, when given, replaces the epochs of all three."""
    common = dict(epochs=epochs, data=data, train_samples=train_samples, reports_dir=reports_dir,
                  data_dir=data_dir, backend=backend)
    fan_out = dict(runner=runner, workers=workers, dask_address=dask_address,
                   max_failures=None)  # failures are counted once, below, over both searches
    folders = {
        "baseline": baseline(config=baseline_config, **common),
        "grid": grid_search(space=grid, **common, **fan_out),
        "random": random_search(space=random_space, study=study, draw_seed=draw_seed, **common,
                                **fan_out),
    }
    folder = write_exercise_report_task(folders, reports_dir)
    say(f"Report: {folder}")
    check_report_failures([folders["grid"], folders["random"]], folder, max_failures)
    return folder


def check(kwargs: dict) -> None:
    """The study must fit the random space (before anything starts)."""
    study = kwargs.get("study", StudyPlan())
    study_configs(study, DEFAULT_RANDOM_SPACE, kwargs.get("draw_seed", 0))


def main(argv: list[str] | None = None) -> str:
    return flow_main(exercise, "The whole exercise: baseline network, grid search (dropout x "
                     "units) and the random-search best-of-N study, with one combined report.",
                     argv, expand=("study",), make={"study": make_study_plan}, check=check)


if __name__ == "__main__":
    sys.exit(run_cli(main))
