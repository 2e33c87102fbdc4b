"""The ensemble in reports: the step that builds and exports it (``--ensemble K`` on every
search), its section of ``report.md`` with its figure, and the report of
``python flows/ensemble.py --from-report DIR``."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import pandas as pd
from prefect import task
from pydantic import Field

from tasks.console import say
from tasks.data.splits import DataHandle
from tasks.ensemble.choose import MAX_PICKS, choose_ensemble
from tasks.errors import UserError
from tasks.export.exporter import MODEL_FOLDER, ModelExport, Selection
from tasks.files import atomic_write_parquet, atomic_write_text
from tasks.reports.folder import (
    RunFolder,
    default_reports_dir,
    export_chosen,
    markdown_table,
    publish_model,
    publish_table,
)
from tasks.trial.result import TrialResult

#: The flows' ``ensemble`` parameter (``--ensemble K``).
Ensemble = Annotated[int | None, Field(
    ge=1, le=MAX_PICKS,
    description="export an ensemble of the search's trials instead of its best one: K greedy "
                "picks with replacement on the validation split's probabilities (Caruana et "
                "al.), from the weights the search stored; nothing is trained "
                "(docs/models.md#ensembles)",
    json_schema_extra={"group": "model", "metavar": "K"})]


def check_model_choice(refit: bool, ensemble: int | None) -> None:
    """``--refit`` and ``--ensemble`` both say what the exported model is: one of them."""
    if refit and ensemble:
        raise UserError(f"refit=True with ensemble={ensemble}: the exported model is either "
                        "the best trial refitted on train + validation (--refit) or an "
                        "ensemble of the search's own trials (--ensemble, never refitted); "
                        "leave out one of them")


#: The ensemble's figure and table in a run folder.
FIGURE, TABLE = "ensemble.png", "ensemble.parquet"


def build_ensemble(run_path: Path, results: Sequence[TrialResult], data: DataHandle, k: int,
                   selection: Selection, best_key: str | None = None) -> ModelExport:
    """Choose the ensemble of ``k`` picks among ``results``, export it to ``run_path/model``
    and write its table and figure beside it; returns the export."""
    from tasks.export.ensemble import export_ensemble
    from tasks.reports.figures.ensemble import plot_ensemble_curve

    choice = choose_ensemble(results, data, k, best_key=best_key)
    say(f"Ensemble: {k} greedy picks among {choice.pool.line()}: "
        f"{len(choice.members)} member(s); probabilities {choice.computed} computed, "
        f"{choice.read} from the cache; validation {choice.val_accuracy:.4f}, test "
        f"{choice.test_accuracy:.4f} (best single: test "
        f"{float(choice.best_single.test_accuracy):.4f})")
    model = export_ensemble(choice, data, run_path / MODEL_FOLDER, selection)
    atomic_write_parquet(choice.curve, run_path / TABLE)
    plot_ensemble_curve(choice.curve, float(choice.best_single.val_accuracy),
                        float(choice.best_single.test_accuracy), run_path / FIGURE,
                        title=f"Ensemble selection over {len(choice.pool.trials)} trials of "
                              f"the {selection.run}")
    return model


def export_run_model(run: RunFolder, results: Sequence[TrialResult], best: pd.Series | None,
                     data: DataHandle | None, kind: str, refit: bool = False,
                     ensemble: int | None = None) -> ModelExport | None:
    """The run's ``model/``: the chosen trial's (``best``, refitted with ``refit``:
    :func:`tasks.reports.folder.export_chosen`), or with ``ensemble`` an ensemble of that many
    greedy picks among the run's trials, as the report step "ensemble" (should it fail, the
    rest of the report is still written, then the run ends with its error line)."""
    if not ensemble:
        return export_chosen(run, results, best, data, kind, refit)
    if data is None or best is None:
        return None
    completed = len({r.trial_key for r in results if r.status == "completed"})
    selection = Selection(kind, completed, report=run.final.name)
    model = None
    with run.later_step("ensemble"):
        model = build_ensemble(run.path, results, data, ensemble, selection,
                               best_key=best["trial_key"])
    return model


def ensemble_section(model: ModelExport | None) -> str:
    """The report's "Ensemble" section for an ensemble's export (from its ``model.json``);
    "" for a single model."""
    if model is None or not model.ensemble:
        return ""
    record = json.loads((model.folder / "model.json").read_text())
    ensemble, comparison = record["ensemble"], record["comparison"]
    single, mine, top = (comparison["best_single"], comparison["ensemble"],
                         comparison["top_k_average"])
    rows = [
        {"model": f"**the ensemble** (`{model.folder.name}/`)",
         "trials": f"{mine['members']} ({mine['picks']} picks)",
         "validation accuracy": mine["val_accuracy"], "test accuracy": mine["test_accuracy"],
         "parameters": f"{mine['param_count']:,}",
         "ms per input (batch 256)": f"{mine['latency_ms']['batch_256']:.4f}"},
        {"model": "the best single trial by validation",
         "trials": f"1 (`{single['trial_key']}`)",
         "validation accuracy": single["val_accuracy"],
         "test accuracy": single["test_accuracy"],
         "parameters": f"{single['param_count']:,}" if single["param_count"] else "",
         "ms per input (batch 256)": f"{single['latency_ms']['batch_256']:.4f}"},
        {"model": f"plain average of the top {top['k']} by validation",
         "trials": str(top["k"]), "validation accuracy": top["val_accuracy"],
         "test accuracy": top["test_accuracy"], "parameters": "",
         "ms per input (batch 256)": ""},
    ]
    members = [{"member": m["name"], "trial key": f"`{m['trial_key']}`", "picks": m["picks"],
                "weight": f"{m['weight']:.3g}", "network": m["label"],
                "validation accuracy": m["val_accuracy"], "test accuracy": m["test_accuracy"]}
               for m in ensemble["members"]]
    probabilities = ensemble["probabilities"]
    return f"""
## Ensemble

{ensemble['k']} greedy picks with replacement (Caruana et al., ICML 2004) among
{ensemble['pool']}, on the validation split's class probabilities (ties: the lower log loss);
nothing was trained. The members' probabilities: {probabilities['computed']} computed from
their weights, {probabilities['read_from_cache']} read from the trials' caches. The exported
model ([card]({model.folder.name}/MODEL.md)) averages its members' softmax outputs with their
weights; on the raw test split it scores **{model.test_accuracy:.4f}**.

{markdown_table(rows)}

![Ensemble selection: accuracy by the number of picks]({FIGURE})

Members (weight = picks / {ensemble['k']}):

{markdown_table(members)}

Every k from 1 to {ensemble['k']}: `{TABLE}`.
"""


# --------------------------------------------------------------------------------------------
# python flows/ensemble.py --from-report DIR
# --------------------------------------------------------------------------------------------
def write_ensemble_report(results: Sequence[TrialResult], data: DataHandle, k: int,
                          selection: Selection, sources: Sequence[str | os.PathLike],
                          best_key: str | None = None,
                          reports_dir: str | os.PathLike | None = None) -> Path:
    """A run folder (``ensemble-…``) with the ensemble of ``k`` picks among the trials of the
    reports ``sources`` (``results``, their trials tables' rows): ``model/``,
    ``ensemble.parquet``, ``ensemble.png``, ``report.md``; returns its path."""
    named = ", ".join(f"`{Path(source)}`" for source in sources)
    with RunFolder(reports_dir or default_reports_dir(), "ensemble") as run:
        model = build_ensemble(run.path, results, data, k, selection, best_key)
        run.keep(MODEL_FOLDER)
        with run.step("report.md"):
            atomic_write_text(run.path / "report.md", f"""# Ensemble report

The ensemble of the trials of {"the report" if len(sources) == 1 else "the reports"} {named}
({selection.run}, {selection.trials} completed trials), on their data (fingerprint
`{data.fingerprint}`).

- the model: {model.line()}
{ensemble_section(model)}""")
    publish_model("ensemble", model, run.final)
    curve = json.loads((run.final / MODEL_FOLDER / "model.json").read_text())["ensemble"]["curve"]
    publish_table("ensemble-curve", curve, "Ensemble selection: accuracy by the number of picks")
    return run.final


@task(name="ensemble-report")
def write_ensemble_report_task(results: list[TrialResult], data: DataHandle, k: int,
                               selection: Selection, sources: list[str],
                               best_key: str | None = None,
                               reports_dir: str | None = None) -> str:
    return str(write_ensemble_report(results, data, k, selection, sources, best_key,
                                     reports_dir))
