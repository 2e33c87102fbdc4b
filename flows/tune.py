"""Model-based search: Optuna's TPE (or random) sampler, optional pruning, on the cached trial.

    python flows/tune.py --trials 50                                # TPE, the notebook's space
    python flows/tune.py --trials 80                                # extends the same study
    python flows/tune.py --space-file examples/space.toml --study-name continuous
    python flows/tune.py --learning-rate log_uniform:1e-5:1e-1 --pruner median --trials 40

Every asked config trains as the same cached task as the grid and the random search (anything
trained before costs nothing). The study lives in an Optuna storage, so a killed tune resumes
and a larger --trials extends it; `optuna-dashboard sqlite:///data/optuna.db` shows it.
"""

from __future__ import annotations

import sys
from typing import Literal

from prefect import flow

from tasks.cli import flow_main, run_cli
from tasks.config import Backend, NonNegativeInt, PositiveInt, Seed
from tasks.runners import RunnerKind
from tasks.search import run_search
from tasks.strategy_tpe import TuneSearch
from tasks.tune_space import DEFAULT_TUNE_SPACE, TuneSpace, make_tune_space, read_space_file


@flow(name="tune")
def tune(
    space: TuneSpace = DEFAULT_TUNE_SPACE,
    epochs: PositiveInt | None = None,
    trials: PositiveInt = 50,
    sampler: Literal["tpe", "random"] = "tpe",
    pruner: Literal["none", "median", "hyperband"] = "none",
    sampler_seed: Seed = 0,
    study_name: str = "tune",
    storage: str | None = None,
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
    """Run the Optuna study ``study_name`` until it holds ``trials`` finished trials and write
    its report; returns the report folder. ``epochs``, when given, replaces ``space.epochs``."""
    strategy = TuneSearch(space, trials, sampler, pruner, sampler_seed, study_name, storage)
    options = {k: v for k, v in locals().items()
               if k not in ("space", "trials", "sampler", "pruner", "sampler_seed",
                            "study_name", "storage", "strategy")}
    return run_search(strategy, **options)


def check(kwargs: dict) -> None:
    """Cross-field rules, before anything starts."""
    if not kwargs.get("study_name", "tune").strip():
        from tasks.errors import UserError

        raise UserError("study_name='': give the study a name")


def main(argv: list[str] | None = None) -> str:
    return flow_main(
        tune, "Model-based search with Optuna (TPE or random sampler, optional pruning) over "
        "a space of distributions; every trial is the same cached training task as the grid's "
        "and the random search's. Each dimension below is kind:arguments: choice:A,B,C | "
        "uniform:LOW:HIGH[:DECIMALS] | log_uniform:LOW:HIGH[:DIGITS] | int:LOW:HIGH | "
        "int_log:LOW:HIGH.", argv, expand=("space",), make={"space": make_tune_space},
        check=check, files={"space": read_space_file},
        help_texts={"trials": "finished (complete or pruned) trials the study should hold; a "
                              "larger number extends an earlier tune of the same study"})


if __name__ == "__main__":
    sys.exit(run_cli(main))
