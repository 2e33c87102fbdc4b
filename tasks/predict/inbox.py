"""An inbox folder: each new file scored once by a model, however many runs look at once.

A file's key is the model's ``model_key`` plus the sha256 of the file's content: the same
file under another name is not scored again, a changed file is new, and another model scores
the inbox afresh. What happened to a key is recorded in the inbox's hidden ledger,
``<inbox>/.predict/<model_key>-<sha256>.json``: ``scored`` (with the report folder) or
``rejected`` (with its one line: a file that does not fit the model is not tried again).

Overlapping runs (a schedule and a manual run, two workers) claim a key under the trial locks
(:class:`tasks.trial.locks.TrialLockManager`: an OS file lock per key, released by the kernel
when its holder dies; a Redis lease where ``PIPELINE_LOCKS`` says so), without waiting: a key
another run holds is that run's to score; a key recorded meanwhile is skipped. The records
are written after the run's report is in place, then the keys are released: a run killed
before its report leaves its files new for the next run (scored at least once, never lost);
no two runs score one file.

Hidden files (``.name``), subfolders and names ending ``.tmp``, ``.part`` or ``.partial``
(a copy still being written) are not looked at.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.data.splits import file_sha256
from tasks.errors import UserError
from tasks.files import atomic_write_text

LEDGER = ".predict"
UNFINISHED = (".tmp", ".part", ".partial", ".crdownload")


@dataclass(frozen=True)
class InboxFile:
    """A new file of the inbox, claimed by this run: its path, content hash and key."""

    path: Path
    sha256: str
    key: str

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class Batch:
    """What a run found in the inbox: the files it claimed (``claimed``), those recorded
    before (``known``: scored, rejected) and those another run is scoring (``busy``)."""

    inbox: Path
    model_key: str
    claimed: list[InboxFile] = field(default_factory=list)
    known: dict[str, int] = field(default_factory=lambda: {"scored": 0, "rejected": 0})
    busy: list[str] = field(default_factory=list)
    outcome: dict[str, dict[str, Any]] = field(default_factory=dict)

    def record(self, claimed: InboxFile, status: str, **fields: Any) -> None:
        """Record ``claimed``'s outcome in the ledger (``scored``, ``rejected``)."""
        entry = {"file": claimed.name, "sha256": claimed.sha256, "model_key": self.model_key,
                 "status": status, **fields,
                 "at": datetime.now(UTC).isoformat(timespec="seconds")}
        atomic_write_text(record_path(self.inbox, claimed.key), json.dumps(entry, indent=1))
        self.outcome[claimed.key] = entry

    def summary(self) -> str:
        """``Inbox …: 3 new files: 2 scored, 1 rejected; 5 seen before; 1 another run's``."""
        scored = sum(e["status"] == "scored" for e in self.outcome.values())
        rejected = sum(e["status"] == "rejected" for e in self.outcome.values())
        seen = self.known["scored"] + self.known["rejected"]
        line = (f"Inbox {self.inbox}: {len(self.claimed)} new file(s): {scored} scored, "
                f"{rejected} rejected; {seen} seen before ({self.known['scored']} scored, "
                f"{self.known['rejected']} rejected)")
        return line + (f"; {len(self.busy)} being scored by another run" if self.busy else "")


def inbox_files(inbox: Path) -> list[Path]:
    """The files the inbox holds now (module doc: what is left out), by name."""
    return sorted(p for p in inbox.iterdir()
                  if p.is_file() and not p.name.startswith(".")
                  and not p.name.lower().endswith(UNFINISHED))


def record_path(inbox: Path, key: str) -> Path:
    return inbox / LEDGER / f"{key}.json"


def read_record(inbox: Path, key: str) -> dict[str, Any] | None:
    try:
        return json.loads(record_path(inbox, key).read_text())
    except (OSError, ValueError):
        return None


def check_inbox(inbox: str | os.PathLike) -> Path:
    """The inbox folder, readable, with a writable ledger; one line otherwise."""
    path = Path(inbox).expanduser()
    if not path.is_dir():
        raise UserError(f"--inbox {inbox}: no such folder")
    try:
        (path / LEDGER).mkdir(exist_ok=True)
        probe = path / LEDGER / f".write-test-{uuid.uuid4().hex}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"--inbox {inbox}: its ledger {path / LEDGER} is not writable "
                        f"({exc.strerror or exc})") from None
    return path


@contextlib.contextmanager
def claim_new_files(inbox: str | os.PathLike, model_key: str,
                    locks=None) -> Iterator[Batch]:
    """Claim the inbox's files that ``model_key`` has not scored or rejected and no other run
    holds; the keys stay held until the block ends (record outcomes inside it)."""
    from tasks.settings import current
    from tasks.trial.locks import TrialLockManager

    folder = check_inbox(inbox)
    if locks is None:  # the team's Redis where set; else OS file locks beside the ledger, so
        # every run reading this inbox (any Prefect settings, any thread) meets the same ones
        locks = (TrialLockManager() if current().locks
                 else TrialLockManager(folder / LEDGER / "locks"))
    holder = f"predict-{os.getpid()}-{uuid.uuid4().hex}"
    batch = Batch(folder, model_key)
    held: list[str] = []
    try:
        for path in inbox_files(folder):
            try:
                sha = file_sha256(path)
            except OSError:  # gone or unreadable meanwhile: next run
                continue
            key = f"{model_key}-{sha}"
            if _known(batch, key):
                continue
            if not locks.acquire_lock(f"predict-{key}", holder, acquire_timeout=0):
                batch.busy.append(path.name)
                continue
            held.append(f"predict-{key}")
            if _known(batch, key):  # recorded by a run that just released it
                continue
            batch.claimed.append(InboxFile(path, sha, key))
        yield batch
    finally:
        for key in held:
            with contextlib.suppress(Exception):
                locks.release_lock(key, holder)


def _known(batch: Batch, key: str) -> bool:
    record = read_record(batch.inbox, key)
    if record is None:
        return False
    status = record.get("status")
    batch.known[status if status in batch.known else "scored"] += 1
    return True


# --------------------------------------------------------------------------------------------
# Reading the claimed files, recording what became of them
# --------------------------------------------------------------------------------------------
def read_claimed(model, batch: Batch, label: str = "label"):
    """Each claimed file read as ``model`` takes it (:func:`tasks.predict.inputs.
    read_for_model`): (the files that fit, as one :class:`tasks.predict.inputs.Inputs`, or
    None; key -> the one line of each file that does not)."""
    from tasks.predict.inputs import combine, read_for_model

    parts, rejected = [], {}
    for claimed in batch.claimed:
        try:
            parts.append(read_for_model(model, claimed.path, "all", label))
        except UserError as exc:
            rejected[claimed.key] = str(exc)
    inputs = combine(parts, str(batch.inbox), f"{len(parts)} new file(s) of the inbox")
    return inputs, rejected


def inbox_note(batch: Batch, rejected: dict[str, str]) -> dict[str, Any]:
    """The inbox part of the run's report: the folder, the files scored and rejected."""
    names = {c.key: c.name for c in batch.claimed}
    return {"folder": str(batch.inbox),
            "scored": [c.name for c in batch.claimed if c.key not in rejected],
            "rejected": {names[key]: line for key, line in rejected.items()},
            "summary": (f"{len(batch.claimed)} new file(s) for model key {batch.model_key}: "
                        f"{len(batch.claimed) - len(rejected)} scored, {len(rejected)} "
                        "rejected")}


def record_outcomes(batch: Batch, rejected: dict[str, str], report: str = "") -> None:
    """Record every claimed file: rejected (its line) or scored (the report folder)."""
    for claimed in batch.claimed:
        if claimed.key in rejected:
            batch.record(claimed, "rejected", error=rejected[claimed.key])
        elif report:
            batch.record(claimed, "scored", report=report)
