"""An ensemble of a search already done: its trials as one model, nothing trained.

    python flows/ensemble.py --from-report reports/random-...                 # 25 picks
    python flows/ensemble.py --from-report reports/tune-... --ensemble 10
    python flows/ensemble.py --from-report reports/random-... reports/tune-...  # one pool

Reads the report's ``trials.parquet`` (a grid's, a random search's or study's, a tune's) and
its data (the report's ``model/model.json``: the same data and split, checked by fingerprint),
picks K members greedily with replacement on the validation split's class probabilities
(Caruana et al., ICML 2004; computed once per trial from its stored weights and cached beside
them), and writes an ``ensemble-…`` report folder whose ``model/`` is the ensemble: one
``model.keras``, ``model.json`` and a card that compares it with the best single trial. A
trial whose weights are gone is skipped (and counted): this never trains. Searches take the
same as ``--ensemble K`` (docs/models.md#ensembles). Several reports of the same data (the
same fingerprint) make one pool: a study's and a tune's trials together.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import pandas as pd
from prefect import flow
from pydantic import Field

from tasks.cli import flow_main, run_cli, say
from tasks.data.task import prepare_data_task
from tasks.errors import UserError
from tasks.export.exporter import Selection, result_from_row
from tasks.export.refit import read_report_model
from tasks.reports.ensemble import write_ensemble_report_task
from tasks.run_options import RunOptions
from tasks.trial.result import TrialResult

DEFAULT_PICKS = 25
TRIALS_TABLE = "trials.parquet"

FromReport = Annotated[list[str] | None, Field(
    description="a search's report folder (reports/grid-..., reports/random-..., "
                "reports/tune-...), or several of the same data: their trials.parquet give the "
                "candidates, the first one's model/model.json the data and split (unless "
                "--data and the split options say)",
    json_schema_extra={"group": "model", "metavar": "DIR"})]
Picks = Annotated[int, Field(
    ge=1, le=1000, description="greedy picks with replacement (a trial picked twice weighs "
                               "twice); the report shows every k up to it",
    json_schema_extra={"group": "model", "metavar": "K"})]


def report_trials(folder: str | Path) -> list[TrialResult]:
    """The trials of the report folder ``folder`` (its ``trials.parquet``); one line if it has
    none or it is not one this pipeline wrote."""
    folder = Path(folder).expanduser()
    path = folder / TRIALS_TABLE
    if not path.is_file():
        kind = ("a baseline's or a refit's report holds one trial"
                if (folder / "history.parquet").is_file() or folder.name.startswith(
                    ("baseline-", "refit-")) else "no such report folder"
                if not folder.is_dir() else "not a search's report folder")
        raise UserError(f"{folder}: no {TRIALS_TABLE} here ({kind}); an ensemble needs a "
                        "search's report: reports/grid-..., reports/random-..., "
                        "reports/tune-...")
    try:
        frame = pd.read_parquet(path)
        return [result_from_row(row) for _, row in frame.iterrows()]
    except Exception as exc:  # noqa: BLE001 (any unreadable table: one line)
        raise UserError(f"{path}: not a trials table this pipeline wrote ({exc})") from None


def folders(from_report: str | list[str] | None) -> list[str]:
    """``--from-report``'s folders (one text: one folder)."""
    if not from_report:
        raise UserError("give --from-report DIR: the report folder of a search "
                        "(reports/grid-..., reports/random-..., reports/tune-...)")
    return [from_report] if isinstance(from_report, str) else list(from_report)


@flow(name="ensemble")
def ensemble_from_report(from_report: FromReport = None, ensemble: Picks = DEFAULT_PICKS,
                         run: RunOptions = RunOptions()) -> str:
    """The ensemble of ``ensemble`` greedy picks among the trials of the report(s)
    ``from_report``, on their data (checked by fingerprint): an ``ensemble-…`` report folder
    whose ``model/`` is the ensemble; returns its path."""
    sources = folders(from_report)
    results = [result for folder in sources for result in report_trials(folder)]
    reports = [read_report_model(folder) for folder in sources]
    run = reports[0].run_options(run)
    data = prepare_data_task(run.data, run.split(), run.data_dir, run.label)
    for chosen in reports:
        chosen.check_data(data)
    completed = len({r.trial_key for r in results if r.status == "completed"})
    selection = Selection(" + ".join(dict.fromkeys(c.selection.run for c in reports)),
                          completed, report=", ".join(Path(f).name for f in sources))
    # one report: its own choice is the single model to beat; several: the pool's best
    best_key = reports[0].trial_key if len(reports) == 1 else None
    folder = write_ensemble_report_task(results, data, ensemble, selection, sources, best_key,
                                        run.reports_dir)
    say(f"Report: {folder}")
    return folder


def check(kwargs: dict) -> None:
    """Before anything starts: the folder is a search's report; the data and split are the
    report's where the command line gives none."""
    sources = folders(kwargs.get("from_report"))
    for folder in sources:
        report_trials(folder)
        read_report_model(folder)
    kwargs["run"] = read_report_model(sources[0]).run_options(kwargs.get("run", RunOptions()))


def main(argv: list[str] | None = None) -> str:
    return flow_main(ensemble_from_report, "Build an ensemble of a search's trials (greedy "
                     "selection with replacement on the validation split, from their stored "
                     "weights: nothing is trained) and write a report folder under reports/ "
                     "whose model/ is the ensemble.", argv, expand=("run",), check=check)


if __name__ == "__main__":
    sys.exit(run_cli(main))
