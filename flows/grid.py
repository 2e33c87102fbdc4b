"""Grid search: one cached, retried training task per cell, and a grid report.

    python flows/grid.py --data ../shared/data/mnist.npz
    python flows/grid.py --dropout 0 0.5 --units 16 64 --epochs 2    # a 2 x 2 grid

The default is the exercise's grid: dropout {0, 0.1, 0.3, 0.5, 0.8} x units {16, 32, 64, 128,
256}, batch 32, 10 epochs. A rerun trains nothing; a larger grid trains only its new cells.
"""

from __future__ import annotations

import sys

from prefect import flow

from tasks.cli import flow_main, run_cli
from tasks.config import Backend, NonNegativeInt, PositiveInt
from tasks.runners import RunnerKind
from tasks.search import run_search
from tasks.search_space import DEFAULT_GRID, SearchSpace, make_space
from tasks.strategy_grid import GridSearch


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
    max_failures: NonNegativeInt | None = 0,
) -> str:
    """Train every cell of ``space`` (cached) and write the grid report; returns its folder.
    ``epochs``, when given, replaces ``space.epochs``."""
    return run_search(GridSearch(space), **locals())


def main(argv: list[str] | None = None) -> str:
    return flow_main(grid_search, "Grid search over the trial config's fields (each value "
                     "list below is one axis; the grid is their product): one cached, retried "
                     "training task per cell, then a report folder under reports/.", argv,
                     expand=("space",), make={"space": make_space})


if __name__ == "__main__":
    sys.exit(run_cli(main))
