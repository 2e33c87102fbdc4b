"""Baseline: the exercise's first network, trained and reported end to end.

    python flows/train.py --data ../shared/data/mnist.npz
    python flows/train.py --from-report reports/grid-...     # refit a report's model

Load, validate and split MNIST -> train Dense(128, relu) -> Dropout(0.3) -> Dense(10) ->
softmax with Adam, batch 1000, 10 epochs (cached: a rerun trains nothing) -> report: model
summary, history table and plot, Train/Validation/Test table, confusion matrix, predictions
for the first test images, misclassified images.

``--from-report DIR`` trains no baseline: it retrains the model an earlier run chose (its
``model/model.json``) on train + validation, on that run's data, and writes a refit report
whose ``model/`` is the refit model (docs/models.md#refit).
"""

from __future__ import annotations

import sys
from typing import Annotated

from prefect import flow
from pydantic import Field

from tasks.cli import flow_main, run_cli, say
from tasks.config import TrialConfig, make_config, with_epochs
from tasks.data.task import prepare_data_task
from tasks.errors import UserError
from tasks.export.refit import Refit, read_report_model
from tasks.reports.baseline import baseline_report_task
from tasks.reports.refit import write_refit_report_task
from tasks.run_options import Epochs, FanOut, RunOptions
from tasks.search.loop import run_trials
from tasks.search.proposers import ListProposer
from tasks.trial.result import weights_exist

ONE_THREAD = FanOut(runner="threads", workers=1)

FromReport = Annotated[str | None, Field(
    description="a run's report folder (reports/grid-..., or its model/ folder): train no "
                "baseline; retrain the model that run chose on train + validation (a refit) "
                "and write a refit report; the data and split are the report's unless "
                "--data and the split options say",
    json_schema_extra={"group": "model", "metavar": "DIR"})]


@flow(name="baseline")
def baseline(
    config: TrialConfig = TrialConfig(),
    epochs: Epochs = None,
    run: RunOptions = RunOptions(),
    refit: Refit = False,
    from_report: FromReport = None,
) -> str:
    """Train the baseline network and write its full report; returns the report folder.
    ``epochs``, when given, replaces ``config.epochs``; ``refit``: the exported model is the
    baseline's config retrained on train + validation; ``from_report``: refit that report's
    model instead (:func:`refit_from_report`)."""
    if from_report is not None:
        return refit_from_report(from_report, run)
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
    folder = baseline_report_task(result, data, run.reports_dir, refit)
    say(f"Report: {folder}")
    return folder


@flow(name="refit")
def refit_from_report(from_report: str, run: RunOptions = RunOptions()) -> str:
    """The model the run of report ``from_report`` chose, retrained on train + validation:
    its data (the report's, checked by fingerprint) -> the chosen trial (from the cache) ->
    its refit (a cached trial) -> the refit report; returns its folder."""
    chosen = read_report_model(from_report)
    refuse_ensemble(chosen)
    run = chosen.run_options(run)
    data = prepare_data_task(run.data, run.split(), run.data_dir, run.label)
    chosen.check_data(data)
    [result] = run_trials(ListProposer([chosen.config], data, "chosen", "The report's trial"),
                          data, run, ONE_THREAD)
    if result.status != "completed":
        raise RuntimeError(f"the report's trial {chosen.trial_key} failed: {result.error}")
    folder = write_refit_report_task(result, data, chosen.selection, str(chosen.folder),
                                     run.reports_dir)
    say(f"Report: {folder}")
    return folder


def check(kwargs: dict) -> None:
    """``--from-report``: the network is the report's (no baseline options beside it), and
    the run's data and split are the report's where the command line gives none (so the
    data check before the run reads the report's data)."""
    folder = kwargs.get("from_report")
    if folder is None:
        return
    given = [name for name in ("epochs", "refit") if kwargs.get(name)]
    if given or kwargs.get("config", TrialConfig()) != TrialConfig():
        shown = ", ".join(f"--{name}" for name in given) or "the network's options"
        raise UserError(f"--from-report takes the network from the report and always refits: "
                        f"leave out {shown}")
    chosen = read_report_model(folder)
    refuse_ensemble(chosen)
    kwargs["run"] = chosen.run_options(kwargs.get("run", RunOptions()))


def refuse_ensemble(chosen) -> None:
    """A refit retrains one network: an ensemble's report has none to give."""
    if chosen.ensemble:
        raise UserError(f"{chosen.folder}: its model is an ensemble of the search's trials; a "
                        "refit retrains one network: give the report of a run without "
                        "--ensemble, or train its best single trial's config with "
                        "flows/train.py and that trial's options")


def main(argv: list[str] | None = None) -> str:
    return flow_main(baseline, "Train the exercise's baseline network on MNIST and write its "
                     "report (a folder under reports/); or, with --from-report DIR, retrain "
                     "the model of an earlier run's report on train + validation.", argv,
                     expand=("config", "run"), make={"config": make_config}, check=check)


if __name__ == "__main__":
    sys.exit(run_cli(main))
