"""The whole exercise: baseline, grid search and the random-search study, as three subflows
with one combined report.

    python flows/exercise.py --data ../shared/data/mnist.npz
    python flows/exercise.py --train-samples 5000 --epochs 1 --n 2 4 --pool-size 8   # a demo

Every trial goes through the shared cache, so rerunning (or resuming after a crash) trains
only what is missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect import flow

from flows.grid import grid_search
from flows.random_search import random_search
from flows.train import baseline
from tasks.cli import (
    add_common_options,
    add_runner_options,
    check_inputs,
    quiet_logs,
    run_cli,
    say,
)
from tasks.config import Backend, PositiveInt, Seed, TrialConfig, make_config
from tasks.report_exercise import exercise_report
from tasks.runners import RunnerKind
from tasks.search_space import (
    DEFAULT_GRID,
    DEFAULT_RANDOM_SPACE,
    SearchSpace,
    StudyPlan,
    make_study_plan,
    study_configs,
)


@flow(name="exercise")
def exercise(
    baseline_config: TrialConfig = TrialConfig(),
    grid: SearchSpace = DEFAULT_GRID,
    random_space: SearchSpace = DEFAULT_RANDOM_SPACE,
    study: StudyPlan = StudyPlan(),
    epochs: PositiveInt | None = None,
    seed: Seed = 0,
    data: str | None = None,
    train_samples: PositiveInt | None = None,
    reports_dir: str | None = None,
    data_dir: str | None = None,
    backend: Backend = "compiled",
    runner: RunnerKind = "auto",
    workers: PositiveInt | None = None,
    dask_address: str | None = None,
) -> str:
    """Run the baseline, the grid and the best-of-N study; write one combined report.
    ``epochs``, when given, replaces the epochs of all three."""
    common = dict(epochs=epochs, data=data, train_samples=train_samples, reports_dir=reports_dir,
                  data_dir=data_dir, backend=backend)
    fan_out = dict(runner=runner, workers=workers, dask_address=dask_address)
    folders = {
        "baseline": baseline(config=baseline_config, **common),
        "grid": grid_search(space=grid, **common, **fan_out),
        "random": random_search(space=random_space, study=study, seed=seed, **common,
                                **fan_out),
    }
    folder = exercise_report(folders, reports_dir)
    say(f"Report: {folder}")
    return folder


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description="The whole exercise: baseline network, grid search (dropout x units) and "
                    "the random-search best-of-N study, with one combined report.")
    parser.add_argument("--n", type=int, nargs="+", default=[10, 20, 50, 100, 200],
                        help="best-of-N study: the N values (default: 10 20 50 100 200)")
    parser.add_argument("--protocol", choices=["pool", "repeats"], default="pool",
                        help="best-of-N protocol (default: pool)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats protocol: draws per N")
    parser.add_argument("--pool-size", type=int, default=None,
                        help="pool protocol: pool size (default: 2 x max N)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random draws")
    add_common_options(parser, epochs=10)
    add_runner_options(parser)
    args = parser.parse_args(argv)
    quiet_logs(args.verbose)
    baseline_config = make_config(epochs=args.epochs)
    grid = DEFAULT_GRID.model_copy(update={"epochs": args.epochs})
    space = DEFAULT_RANDOM_SPACE.model_copy(update={"epochs": args.epochs})
    study = make_study_plan(n_values=args.n, protocol=args.protocol, repeats=args.repeats,
                            pool_size=args.pool_size)
    study_configs(study, space, args.seed)
    check_inputs(args)
    return exercise(baseline_config=baseline_config, grid=grid, random_space=space, study=study,
                    seed=args.seed, data=args.data, train_samples=args.train_samples,
                    reports_dir=args.reports_dir, data_dir=args.data_dir, backend=args.backend,
                    runner=args.runner, workers=args.workers, dask_address=args.dask_address)


if __name__ == "__main__":
    sys.exit(run_cli(main))
