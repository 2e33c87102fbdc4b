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
from tasks.config import Backend, PositiveInt, SplitSpec, TrialConfig, make_config, with_epochs
from tasks.data import prepare_data_task
from tasks.report_baseline import baseline_report_task
from tasks.training import run_trials, weights_exist


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
    [result] = run_trials([config], handle, "threads", 1, None, backend, data_dir,
                          progress_key="baseline-progress")
    if result.status == "completed" and not weights_exist(result):
        # a cached result whose weights file is gone (deleted, another --data-dir): the
        # report needs the weights, so train again and store the new result
        say(f"The cached baseline's weights are missing ({result.weights_path}): retraining")
        [result] = run_trials([config], handle, "threads", 1, None, backend, data_dir,
                              progress_key="baseline-progress", refresh=True)
    if result.status != "completed":
        raise RuntimeError(f"baseline training failed: {result.error}")
    folder = baseline_report_task(result, handle, reports_dir)
    say(f"Report: {folder}")
    return folder


def main(argv: list[str] | None = None) -> str:
    return flow_main(baseline, "Train the exercise's baseline network on MNIST and write its "
                     "report (a folder under reports/).", argv, expand=("config",),
                     make={"config": make_config})


if __name__ == "__main__":
    sys.exit(run_cli(main))
