"""Baseline: the exercise's first network, trained and reported end to end.

    python flows/train.py --data ../shared/data/mnist.npz

Load, validate and split MNIST -> train Dense(128, relu) -> Dropout(0.3) -> Dense(10) ->
softmax with Adam, batch 1000, 10 epochs (cached: a rerun trains nothing) -> report: model
summary, history table and plot, Train/Validation/Test table, confusion matrix, predictions
for the first test images, misclassified images.
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
    check_inputs,
    quiet_logs,
    run_cli,
    say,
)
from tasks.config import (
    Backend,
    PositiveInt,
    SplitSpec,
    TrialConfig,
    make_config,
    with_epochs,
)
from tasks.data import prepare_data_task
from tasks.report_baseline import baseline_report
from tasks.training import run_trials


@flow(name="baseline")
def baseline(
    config: TrialConfig = TrialConfig(),
    epochs: PositiveInt | None = None,
    data: str | None = None,
    train_samples: PositiveInt | None = None,
    reports_dir: str | None = None,
    data_dir: str | None = None,
    backend: Backend = "compiled",
) -> str:
    """Train the baseline network and write its full report; returns the report folder.
    ``epochs``, when given, replaces ``config.epochs``."""
    config = with_epochs(config, epochs)
    handle = prepare_data_task(data, SplitSpec(train_samples=train_samples), data_dir)
    [result] = run_trials([config], handle, "threads", 1, None, backend,
                          data_dir, progress_key="baseline-progress")
    if result.status != "completed":
        raise RuntimeError(f"baseline training failed: {result.error}")
    folder = baseline_report(result, handle, reports_dir)
    say(f"Report: {folder}")
    return folder


def main(argv: list[str] | None = None) -> str:
    defaults = TrialConfig().model_dump()
    parser = argparse.ArgumentParser(
        description="Train the exercise's baseline network on MNIST and write its report "
                    "(a folder under reports/).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_hyperparameter_options(parser, defaults, many=False)
    parser.add_argument("--seed", type=int, default=0, help="seed for init, dropout, shuffling")
    add_common_options(parser, epochs=defaults["epochs"])
    args = parser.parse_args(argv)
    quiet_logs(args.verbose)
    config = make_config(units=args.units, dropout=args.dropout, activation=args.activation,
                         learning_rate=args.learning_rate, batch_size=args.batch_size,
                         epochs=args.epochs, seed=args.seed)
    check_inputs(args)
    return baseline(config=config, data=args.data, train_samples=args.train_samples,
                    reports_dir=args.reports_dir, data_dir=args.data_dir, backend=args.backend)


if __name__ == "__main__":
    sys.exit(run_cli(main))
