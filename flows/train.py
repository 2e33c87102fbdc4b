"""Baseline: the exercise's first network, trained and reported end to end.

    python flows/train.py --data ../shared/data/mnist.npz

Load, validate and split MNIST -> train Dense(128, relu) -> Dropout(0.3) -> Dense(10) ->
softmax with Adam, batch 1000, 10 epochs (cached: a rerun trains nothing) -> report: model
summary, history table and plot, Train/Validation/Test table, confusion matrix, predictions
for the first test images, misclassified images.
"""

from __future__ import annotations

import sys

from prefect import flow

from tasks.cli import flow_main, run_cli, say
from tasks.config import TrialConfig, make_config, with_epochs
from tasks.data.task import prepare_data_task
from tasks.reports.baseline import baseline_report_task
from tasks.run_options import Epochs, FanOut, RunOptions
from tasks.search.loop import run_trials
from tasks.search.proposers import ListProposer
from tasks.trial.result import weights_exist

ONE_THREAD = FanOut(runner="threads", workers=1)


@flow(name="baseline")
def baseline(
    config: TrialConfig = TrialConfig(),
    epochs: Epochs = None,
    run: RunOptions = RunOptions(),
) -> str:
    """Train the baseline network and write its full report; returns the report folder.
    ``epochs``, when given, replaces ``config.epochs``."""
    config = with_epochs(config, epochs)
    data = prepare_data_task(run.data, run.split(), run.data_dir, run.label)
    [result] = run_trials(ListProposer([config], data, "baseline", "Baseline"), data, run,
                          ONE_THREAD)
    if result.status == "completed" and not weights_exist(result):
        # a cached result whose weights file is gone (deleted, another --data-dir): the
        # report needs the weights, so train again and store the new result
        say(f"The cached baseline's weights are missing ({result.weights_path}): retraining")
        [result] = run_trials(ListProposer([config], data, "baseline", "Baseline"), data, run,
                              ONE_THREAD, refresh=True)
    if result.status != "completed":
        raise RuntimeError(f"baseline training failed: {result.error}")
    folder = baseline_report_task(result, data, run.reports_dir)
    say(f"Report: {folder}")
    return folder


def main(argv: list[str] | None = None) -> str:
    return flow_main(baseline, "Train the exercise's baseline network on MNIST and write its "
                     "report (a folder under reports/).", argv, expand=("config", "run"),
                     make={"config": make_config})


if __name__ == "__main__":
    sys.exit(run_cli(main))
