"""Grid search: one cached, retried training task per cell, and a grid report.

    python flows/grid.py --data ../shared/data/mnist.npz
    python flows/grid.py --dropout 0 0.5 --units 16 64 --epochs 2    # a 2 x 2 grid

The default is the exercise's grid: dropout {0, 0.1, 0.3, 0.5, 0.8} x units {16, 32, 64, 128,
256}, batch 32, 10 epochs. A rerun trains nothing; a larger grid trains only its new cells.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect import flow

from tasks.cli import (
    add_common_options,
    add_hyperparameter_options,
    add_runner_options,
    check_inputs,
    quiet_logs,
    run_cli,
    say,
)
from tasks.config import Backend, PositiveInt, SplitSpec, with_epochs
from tasks.data import prepare_data_task
from tasks.report_grid import grid_report
from tasks.runners import RunnerKind
from tasks.search_space import DEFAULT_GRID, SearchSpace, expand_grid, make_space
from tasks.training import count_sources, run_trials


@flow(name="grid-search")
def grid_search(
    space: SearchSpace = DEFAULT_GRID,
    epochs: PositiveInt | None = None,
    data: str | None = None,
    train_samples: PositiveInt | None = None,
    reports_dir: str | None = None,
    data_dir: str | None = None,
    backend: Backend = "compiled",
    runner: RunnerKind = "auto",
    workers: PositiveInt | None = None,
    dask_address: str | None = None,
) -> str:
    """Train every cell of ``space`` (cached) and write the grid report; returns its folder.
    ``epochs``, when given, replaces ``space.epochs``."""
    started = time.perf_counter()
    space = with_epochs(space, epochs)
    handle = prepare_data_task(data, SplitSpec(train_samples=train_samples), data_dir)
    configs = expand_grid(space)
    say(f"Grid: {len(configs)} cells ({space.describe()})")
    results = run_trials(configs, handle, runner, workers, dask_address,
                         backend, data_dir, progress_key="grid-progress")
    counts = count_sources(results)
    say(f"Grid done: {counts['trained']} trained, {counts['cached']} from cache, "
        f"{counts['failed']} failed")
    folder = grid_report(results, space, reports_dir, time.perf_counter() - started)
    say(f"Report: {folder}")
    return folder


def main(argv: list[str] | None = None) -> str:
    defaults = DEFAULT_GRID.model_dump()
    parser = argparse.ArgumentParser(
        description="Grid search over the trial config's fields: one cached, retried training "
                    "task per cell, then a report folder under reports/.",
    )
    add_hyperparameter_options(parser, defaults, many=True)
    parser.add_argument("--seed", type=int, default=0,
                        help="training seed of every cell (default: 0)")
    add_common_options(parser, epochs=defaults["epochs"])
    add_runner_options(parser)
    args = parser.parse_args(argv)
    quiet_logs(args.verbose)
    space = make_space(dropout=args.dropout, units=args.units, activation=args.activation,
                       learning_rate=args.learning_rate, batch_size=args.batch_size,
                       epochs=args.epochs, seed=args.seed)
    check_inputs(args)
    return grid_search(space=space, data=args.data, train_samples=args.train_samples,
                       reports_dir=args.reports_dir, data_dir=args.data_dir,
                       backend=args.backend, runner=args.runner, workers=args.workers,
                       dask_address=args.dask_address)


if __name__ == "__main__":
    sys.exit(run_cli(main))
