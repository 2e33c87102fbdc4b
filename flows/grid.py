"""Grid search: one cached, retried training task per cell, and a grid report.

    python flows/grid.py --data ../shared/data/mnist.npz
    python flows/grid.py --dropout 0 0.5 --units 16 64 --epochs 2    # a 2 x 2 grid
    python flows/grid.py --units 128 --dropout 0.3 --refit    # the best cell, refitted
    python flows/grid.py --ensemble 10      # an ensemble of the cells (10 greedy picks)

The default is the exercise's grid: dropout {0, 0.1, 0.3, 0.5, 0.8} x units {16, 32, 64, 128,
256}, batch 32, 10 epochs. A rerun trains nothing; a larger grid trains only its new cells.
With --refit the best cell's config is retrained on train + validation and that model is the
one exported (docs/models.md#refit); with --ensemble K, an ensemble of the grid's cells,
chosen on validation from their stored weights (docs/models.md#ensembles).
"""

from __future__ import annotations

import sys
import time

from prefect import flow

from tasks.cli import flow_main, run_cli
from tasks.config import with_epochs
from tasks.data.task import prepare_data_task
from tasks.export.refit import Refit
from tasks.reports.ensemble import Ensemble, check_model_choice
from tasks.reports.grid import write_grid_report_task
from tasks.run_options import Epochs, FanOut, RunOptions
from tasks.search.loop import finish_run, run_trials
from tasks.search.proposers import grid_proposer
from tasks.search.space import DEFAULT_GRID, SearchSpace, make_space


@flow(name="grid-search")
def grid_search(
    space: SearchSpace = DEFAULT_GRID,
    epochs: Epochs = None,
    run: RunOptions = RunOptions(),
    fan_out: FanOut = FanOut(),
    refit: Refit = False,
    ensemble: Ensemble = None,
) -> str:
    """Train every cell of ``space`` (cached) and write the grid report; returns its folder.
    ``epochs``, when given, replaces ``space.epochs``; ``refit``: the exported model is the
    best cell's config retrained on train + validation; ``ensemble``: it is an ensemble of
    that many greedy picks among the cells."""
    check_model_choice(refit, ensemble)
    started = time.perf_counter()
    space = with_epochs(space, epochs)
    data = prepare_data_task(run.data, run.split(), run.data_dir, run.label)
    results = run_trials(grid_proposer(space, data), data, run, fan_out)
    report = write_grid_report_task(results, space, run.reports_dir,
                                    time.perf_counter() - started, run.optuna_storage(),
                                    data=data, refit=refit, ensemble=ensemble)
    return finish_run(results, report, fan_out.max_failures)


def main(argv: list[str] | None = None) -> str:
    return flow_main(grid_search, "Grid search over the trial config's fields (each value "
                     "list below is one axis; the grid is their product): one cached, retried "
                     "training task per cell, then a report folder under reports/.", argv,
                     expand=("space", "run", "fan_out"), make={"space": make_space},
                     check=lambda kwargs: check_model_choice(kwargs.get("refit", False),
                                                             kwargs.get("ensemble")))


if __name__ == "__main__":
    sys.exit(run_cli(main))
