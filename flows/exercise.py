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
from tasks.cli import flow_main, run_cli, say
from tasks.config import TrialConfig, make_config
from tasks.export.refit import Refit
from tasks.reports.exercise import check_report_failures, write_exercise_report_task
from tasks.run_options import DrawSeed, Epochs, FanOut, RunOptions
from tasks.search.best_of_n import StudyPlan, make_study_plan, study_configs
from tasks.search.space import DEFAULT_GRID, DEFAULT_RANDOM_SPACE, SearchSpace, make_space


@flow(name="exercise")
def exercise(
    baseline_config: TrialConfig = TrialConfig(),
    grid: SearchSpace = DEFAULT_GRID,
    random_space: SearchSpace = DEFAULT_RANDOM_SPACE,
    study: StudyPlan = StudyPlan(),
    epochs: Epochs = None,
    draw_seed: DrawSeed = 0,
    run: RunOptions = RunOptions(),
    fan_out: FanOut = FanOut(),
    refit: Refit = False,
) -> str:
    """Run the baseline, the grid and the best-of-N study; write one combined report.
    ``epochs``, when given, replaces the epochs of all three; ``refit``: each part's model is
    its chosen config retrained on train + validation."""
    # failures are counted once, below, over both searches
    each = fan_out.model_copy(update={"max_failures": None})
    folders = {
        "baseline": baseline(config=baseline_config, epochs=epochs, run=run, refit=refit),
        "grid": grid_search(space=grid, epochs=epochs, run=run, fan_out=each, refit=refit),
        "random": random_search(space=random_space, epochs=epochs, study=study,
                                draw_seed=draw_seed, run=run, fan_out=each, refit=refit),
    }
    folder = write_exercise_report_task(folders, run.reports_dir)
    say(f"Report: {folder}")
    check_report_failures([folders["grid"], folders["random"]], folder, fan_out.max_failures)
    return folder


def check(kwargs: dict) -> None:
    """The study must fit the random space (before anything starts)."""
    study = kwargs.get("study", StudyPlan())
    study_configs(study, kwargs.get("random_space", DEFAULT_RANDOM_SPACE),
                  kwargs.get("draw_seed", 0))


def main(argv: list[str] | None = None) -> str:
    return flow_main(exercise, "The whole exercise: baseline network, grid search (dropout x "
                     "units) and the random-search best-of-N study, with one combined report. "
                     "Every default of the exercise is an option: the baseline's network "
                     "(--baseline-...), the grid's axes (--grid-...), the random search's "
                     "space (--random-...) and the study's plan.", argv,
                     expand=("baseline_config", "grid", "random_space", "study", "run",
                             "fan_out"),
                     prefixes={"baseline_config": "baseline", "grid": "grid",
                               "random_space": "random"},
                     make={"baseline_config": make_config, "grid": make_space,
                           "random_space": make_space, "study": make_study_plan},
                     check=check)


if __name__ == "__main__":
    sys.exit(run_cli(main))
