"""The refit's data: train + validation as one training split, derived from processed data.

A refit retrains the config a search chose on the training *and* the validation split (the
protocol of TensorFlow's tutorials, AutoGluon's ``refit_full``). The engine trains on a
:class:`~tasks.data.splits.DataHandle`, so the merged split is one more processed folder,
written here from the original's files, never from the source again:

* ``train`` = the original's train rows, then its validation rows (in that order);
* ``validation`` = the original's validation rows: the refit has trained on them, so its
  validation score is **no unbiased estimate** (the test split is the one to quote);
* ``test`` = the original's test rows.

The rows are the original's processed features, so the normalization is the training split's
(8-bit images: /255; standardized data: the training split's mean and standard deviation,
kept in the manifest), not recomputed on the merged rows. The folder's fingerprint is derived
from the original's (:func:`refit_fingerprint`), so a refit trial's key (config + fingerprint +
training code + backend) differs from every search trial's, and no original fingerprint or
trial key changes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from tasks.data.splits import (
    SPLITS,
    DataHandle,
    handle_of,
    read_manifest,
    read_split,
    write_processed,
)
from tasks.errors import DataError
from tasks.files import exclusive_lock

#: Part of every refit fingerprint: a change of how the merged split is made changes it.
REFIT_VERSION = "refit-train+validation-v1"


def refit_fingerprint(fingerprint: str) -> str:
    """The fingerprint of the merged data derived from the processed data ``fingerprint``."""
    return hashlib.sha256(f"{REFIT_VERSION}|{fingerprint}".encode()).hexdigest()[:20]


def _manifest(data: DataHandle) -> dict[str, Any]:
    manifest = read_manifest(Path(data.directory))
    if manifest is None:
        raise DataError(f"{data.directory}: processed data missing or damaged; run the data "
                        "step again (any flow on the same data rebuilds it)")
    return manifest


def refit_of(data: DataHandle) -> dict[str, Any] | None:
    """What the manifest of ``data`` says of its refit (the original's fingerprint and
    sizes), or None for data that is not a refit's."""
    manifest = json.loads((Path(data.directory) / "manifest.json").read_text())
    return manifest.get("dataset", {}).get("refit")


def refit_data(data: DataHandle) -> DataHandle:
    """The processed folder of ``data`` with train = train + validation (module doc), next
    to the original (``<data dir>/processed/<refit fingerprint>``); written once, reused
    after (its checksums checked, a damaged one rebuilt)."""
    manifest = _manifest(data)
    if manifest["dataset"].get("refit"):
        raise ValueError(f"{data.fingerprint} is a refit's data already (train + validation)")
    fingerprint = refit_fingerprint(data.fingerprint)
    directory = Path(data.directory).parent / fingerprint
    found = read_manifest(directory)
    if found is None:
        with exclusive_lock(directory.parent / f".{directory.name}.lock"):
            found = read_manifest(directory)  # written meanwhile?
            if found is None:
                parts = merged_parts(data)
                dataset = dict(manifest["dataset"])
                dataset["refit"] = {
                    "from": data.fingerprint, "version": REFIT_VERSION,
                    "train": "train + validation", "validation": "validation (trained on)",
                    "test": "test",
                    "sizes": {split: int(manifest["sizes"][split]) for split in SPLITS}}
                write_processed(parts, directory, fingerprint, manifest["processing_version"],
                                dataset)
                found = read_manifest(directory)
    return handle_of(directory, found)


def merged_parts(data: DataHandle) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The refit's splits as arrays: the original's train and validation rows concatenated
    (train first), its validation and test rows as they are."""
    parts = {split: read_split(data.path(split)) for split in SPLITS}
    x_train = np.concatenate([parts["train"][0], parts["validation"][0]])
    y_train = np.concatenate([parts["train"][1], parts["validation"][1]])
    return {"train": (x_train, y_train), "validation": parts["validation"],
            "test": parts["test"]}
