"""Random search and the "best of N" study, without repeats and without the 10-hour wait.

    python flows/random_search.py --trials 12 --epochs 2              # a plain search
    python flows/random_search.py --study --n 10 20 50 100 200        # the exercise's study
    python flows/random_search.py --study --protocol repeats --repeats 3

Configs are drawn from the search space without repeats, reproducibly from --seed, and train
through the same cached task as the grid: a config trained before is never trained again.
The best trial is chosen by validation accuracy; the exercise's max test accuracy is shown
beside it, labelled as such.
"""

from __future__ import annotations

import argparse
import sys
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
from tasks.config import Backend, PositiveInt, Seed, SplitSpec, with_epochs
from tasks.data import prepare_data_task
from tasks.report_random import random_report
from tasks.runners import RunnerKind
from tasks.search_space import (
    DEFAULT_RANDOM_SPACE,
    SearchSpace,
    StudyPlan,
    draw_trial_keys,
    make_space,
    make_study_plan,
    sample_configs,
    study_configs,
    trainings_needed,
)
from tasks.training import count_sources, run_trials


@flow(name="random-search")
def random_search(
    space: SearchSpace = DEFAULT_RANDOM_SPACE,
    epochs: PositiveInt | None = None,
    trials: PositiveInt = 20,
    study: StudyPlan | None = None,
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
    """A plain search of ``trials`` random configs, or the best-of-N ``study``; returns the
    report folder. ``epochs``, when given, replaces ``space.epochs``."""
    space = with_epochs(space, epochs)
    handle = prepare_data_task(data, SplitSpec(train_samples=train_samples), data_dir)
    if study is None:
        draws = {(trials, 0): sample_configs(space, trials, seed)}
    else:
        draws = study_configs(study, space, seed)
    configs = [config for draw in draws.values() for config in draw]
    say(f"Random search: {len(configs)} trainings asked for, "
        f"{len({c.canonical_json() for c in configs})} distinct configurations")
    results = run_trials(configs, handle, runner, workers, dask_address,
                         backend, data_dir, progress_key="random-progress")
    counts = count_sources(results)
    say(f"Random search done: {counts['trained']} trained, {counts['cached']} from cache, "
        f"{counts['failed']} failed")
    draw_keys = None
    if study is not None:
        draw_keys = [(n, r, keys) for (n, r), keys in draw_trial_keys(draws, results).items()]
    folder = random_report(results, space, study, draw_keys, reports_dir, len(configs))
    say(f"Report: {folder}")
    return folder


def main(argv: list[str] | None = None) -> str:
    defaults = DEFAULT_RANDOM_SPACE.model_dump()
    parser = argparse.ArgumentParser(
        description="Random search over a space of trial configs (each value list below is "
                    "the space), or the best-of-N study; writes a report folder under reports/.",
    )
    add_hyperparameter_options(parser, defaults, many=True)
    group = parser.add_argument_group("search")
    group.add_argument("--trials", type=int, default=20,
                       help="plain search: number of distinct random configs (default: 20)")
    group.add_argument("--seed", type=int, default=0,
                       help="seed of the random draw (default: 0)")
    group.add_argument("--train-seed", type=int, default=0,
                       help="training seed of every trial (default: 0, shared with the grid)")
    group = parser.add_argument_group("best-of-N study")
    group.add_argument("--study", action="store_true",
                       help="run the best-of-N study instead of a plain search")
    group.add_argument("--n", type=int, nargs="+", default=[10, 20, 50, 100, 200],
                       help="the N values (default: 10 20 50 100 200)")
    group.add_argument("--protocol", choices=["pool", "repeats"], default="pool",
                       help="pool: train one pool, estimate every N from its subsets "
                            "(default, fewer trainings); repeats: the exercise's independent "
                            "draws per N")
    group.add_argument("--repeats", type=int, default=3,
                       help="repeats protocol: draws per N (default: 3)")
    group.add_argument("--pool-size", type=int, default=None,
                       help="pool protocol: trials in the pool (default: 2 x max N)")
    add_common_options(parser, epochs=defaults["epochs"])
    add_runner_options(parser)
    args = parser.parse_args(argv)
    quiet_logs(args.verbose)
    space = make_space(dropout=args.dropout, units=args.units, activation=args.activation,
                       learning_rate=args.learning_rate, batch_size=args.batch_size,
                       epochs=args.epochs, seed=args.train_seed)
    study = None
    if args.study:
        study = make_study_plan(n_values=args.n, protocol=args.protocol, repeats=args.repeats,
                                pool_size=args.pool_size)
        study_configs(study, space, args.seed)  # fails now if the space is too small
        say(f"Study needs {trainings_needed(study, space)} trainings before caching")
    elif args.trials > space.size or args.trials < 1:
        sample_configs(space, args.trials, args.seed)  # raises the clear error
    check_inputs(args)
    return random_search(space=space, trials=args.trials, study=study, seed=args.seed,
                         data=args.data, train_samples=args.train_samples,
                         reports_dir=args.reports_dir, data_dir=args.data_dir,
                         backend=args.backend, runner=args.runner, workers=args.workers,
                         dask_address=args.dask_address)


if __name__ == "__main__":
    sys.exit(run_cli(main))
