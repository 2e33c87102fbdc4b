"""The combined report of the whole exercise: baseline, grid and random search in one page."""

from __future__ import annotations

import os
import re
from pathlib import Path

from prefect import task

from tasks.files import atomic_write_text
from tasks.reports.folder import RunFolder, default_reports_dir

SECTIONS = (("Baseline", "baseline"), ("Grid search", "grid"), ("Random search", "random"))


def _relinked(markdown: str, folder: Path, root: Path) -> str:
    """A sub-report's markdown with its headings pushed one level down and its image links
    made relative to the combined report's folder."""
    prefix = os.path.relpath(folder, root)
    markdown = re.sub(r"^(#+) ", r"#\1 ", markdown, flags=re.MULTILINE)
    return re.sub(r"\]\(([^)/:]+\.png)\)", lambda m: f"]({prefix}/{m.group(1)})", markdown)


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
        for title, key in SECTIONS:
            if key not in folders:
                continue
            folder = Path(folders[key])
            sub = (folder / "report.md").read_text()
            # the final folder's parent is `root`, so links are relative to it
            parts.append(f"\n---\n\n# {title}\n\n" + _relinked(sub, folder, run.final))
        atomic_write_text(run.path / "report.md", "\n".join(parts) + "\n")
    return run.final


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
