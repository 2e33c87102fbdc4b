"""The combined report of the whole exercise: baseline, grid and random search in one page."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from prefect import task

from tasks.files import atomic_write_text
from tasks.reports.folder import RunFolder, default_reports_dir, publish_model_link

SECTIONS = (("Baseline", "baseline"), ("Grid search", "grid"), ("Random search", "random"))


def _relinked(markdown: str, folder: Path, root: Path) -> str:
    """A sub-report's markdown with its headings pushed one level down and its links to its
    images and its model folder made relative to the combined report's folder."""
    prefix = os.path.relpath(folder, root)
    markdown = re.sub(r"^(#+) ", r"#\1 ", markdown, flags=re.MULTILINE)
    return re.sub(r"\]\(([^)/:]+\.png|model/[^):]*)\)", lambda m: f"]({prefix}/{m.group(1)})",
                  markdown)


def write_exercise_report(folders: dict[str, str], reports_dir: str | os.PathLike | None = None
                          ) -> Path:
    """One ``report.md`` that holds the three sub-reports (their figures stay in their own
    folders, linked relatively)."""
    root = Path(reports_dir or default_reports_dir())
    with RunFolder(root, "exercise") as run:
        parts = ["# MNIST with fully connected networks, grid and random search\n",
                 "The whole exercise in one report. Each part's own folder holds its figures, "
                 "tables and Parquet files:\n"]
        for title, key in SECTIONS:
            if key in folders:
                parts.append(f"- {title}: `{folders[key]}`")
        parts += models_text(folders, run.final)
        for title, key in SECTIONS:
            if key not in folders:
                continue
            folder = Path(folders[key])
            sub = (folder / "report.md").read_text()
            # the final folder's parent is `root`, so links are relative to it
            parts.append(f"\n---\n\n# {title}\n\n" + _relinked(sub, folder, run.final))
        atomic_write_text(run.path / "report.md", "\n".join(parts) + "\n")
    best = best_part_model(folders)
    if best is not None:
        publish_model_link("exercise", best, "the best of the parts' models by validation "
                                             "accuracy: model.keras, model.json, MODEL.md")
    return run.final


def part_models(folders: dict[str, str]) -> list[tuple[str, Path, dict]]:
    """(part, model folder, model.json) of every part whose report holds a model."""
    found = []
    for _, key in SECTIONS:
        folder = Path(folders[key]) / "model" if key in folders else None
        if folder is not None and (folder / "model.json").is_file():
            found.append((key, folder, json.loads((folder / "model.json").read_text())))
    return found


def chosen_val_accuracy(record: dict) -> float:
    """The validation accuracy a part's model was chosen by: the search model's where the
    exported model is a refit (which trained on the validation split)."""
    refit = record.get("refit")
    return float(refit["search_model"]["val_accuracy"] if refit
                 else record["scores"]["val_accuracy"])


def models_text(folders: dict[str, str], root: Path) -> list[str]:
    """The combined report's lines on the models: the best of the parts' models by validation
    accuracy, linked (relative to ``root``, the combined report's folder), and each part's."""
    models = part_models(folders)
    if not models:
        return []
    best = max(models, key=lambda m: chosen_val_accuracy(m[2]))
    titles = dict((key, title) for title, key in SECTIONS)

    def link(folder: Path) -> str:
        where = os.path.relpath(folder, root)
        return f"[`{where}/`]({where}/MODEL.md)"

    def refitted(record: dict) -> str:
        return " (refit on train + validation)" if record.get("refit") else ""

    key, folder, record = best
    scores = record["scores"]
    lines = ["", f"**The model**: the best of the parts' models by validation accuracy is the "
             f"{titles[key].lower()}'s: validation {chosen_val_accuracy(record):.4f}, test "
             f"**{scores['test_accuracy']:.4f}**{refitted(record)}, trial key "
             f"`{record['trial']['trial_key']}`, {link(folder)}. Each part's model:", ""]
    for key, folder, record in models:
        lines.append(f"- {titles[key]}: validation {chosen_val_accuracy(record):.4f}, "
                     f"test {record['scores']['test_accuracy']:.4f}{refitted(record)}, "
                     f"{link(folder)}")
    if any(record.get("refit") for _, _, record in models):
        lines += ["", "A refit model's validation figure is its search model's, the one it was "
                      "chosen by (the refit trained on the validation split); its test figure "
                      "is the refit's own."]
    return lines


def best_part_model(folders: dict[str, str]) -> Path | None:
    """The model folder of the part whose model has the best validation accuracy."""
    models = part_models(folders)
    return max(models, key=lambda m: chosen_val_accuracy(m[2]))[1] if models else None


def check_report_failures(folders: list[str], report: str | os.PathLike,
                          tolerated: int | None = 0) -> None:
    """Raise :class:`TrialsFailed` when the searches whose report folders are given failed more
    trials than ``tolerated`` in all (read from their ``trials.parquet``; None: no check)."""
    import pandas as pd

    from tasks.errors import TrialsFailed

    failed = total = 0
    for folder in folders:
        trials = pd.read_parquet(Path(folder) / "trials.parquet").drop_duplicates("trial_key")
        failed += int((trials["status"] == "failed").sum())
        total += len(trials)
    if tolerated is not None and failed > tolerated:
        allowed = f"; {tolerated} tolerated" if tolerated else ""
        raise TrialsFailed(f"{failed} of {total} trials failed{allowed} (see report {report})")


@task(name="exercise-report")
def write_exercise_report_task(folders: dict[str, str], reports_dir: str | None = None) -> str:
    """Write the combined report of the whole exercise."""
    return str(write_exercise_report(folders, reports_dir))
