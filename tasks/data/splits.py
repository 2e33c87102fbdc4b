"""Processed data on disk: the train / validation / test splits as memory-mapped Arrow files,
and the small handle that the trials receive instead of arrays.

Every format a user brings (:mod:`tasks.data.readers`) is converted once, by
:func:`tasks.data.prepare.prepare_data`, into one folder ``<data dir>/processed/<fingerprint>``:
``train.arrow``, ``validation.arrow``, ``test.arrow`` (``pixels``: fixed-size lists of float32
features, ``label``: class indices) and ``manifest.json`` (sizes, checksums, and what the
data is: its name, kind, image shape, class names, normalization). Training code receives a
:class:`DataHandle` and reads the splits once per process (:func:`load_splits`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from tasks.errors import DataError

SPLITS = ("train", "validation", "test")
#: The manifest's layout: a processed folder of an earlier layout is rebuilt (its splits are
#: the same numbers; only what the manifest says about the data was added).
MANIFEST_LAYOUT = 2


def default_data_dir() -> Path:
    """Where processed splits and trained weights live: ``$PIPELINE_DATA_DIR`` or ``./data``."""
    from tasks.settings import current

    return current().data_dir


class DataHandle(BaseModel):
    """A reference to processed splits on disk. Small, hashable, cheap to ship to workers.
    ``features``: the network's input width; ``classes``: its outputs."""

    model_config = ConfigDict(frozen=True)

    directory: str
    fingerprint: str
    train_size: int
    validation_size: int
    test_size: int
    features: int = 784
    classes: int = 10

    def path(self, split: str) -> Path:
        return Path(self.directory) / f"{split}.arrow"


@dataclass(frozen=True)
class Splits:
    """Processed data: float32 features, shape (n, features); int labels (n,) in
    ``0..classes-1``. From :func:`load_splits` the arrays are read-only views on the
    memory-mapped files."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int = 10


@dataclass(frozen=True)
class DatasetInfo:
    """What the processed data is, for the reports: a name, ``image`` or ``table``, the shape
    of one image (``(h, w)`` or ``(h, w, channels)``; None for a table), one name per class
    (its number where the data names none) and the feature names of a table."""

    name: str
    kind: str
    image_shape: tuple[int, ...] | None
    class_names: tuple[str, ...]
    feature_names: tuple[str, ...] | None = None
    source: str = ""

    @property
    def named_classes(self) -> bool:
        """True if some class has a name other than its number."""
        return any(name != str(i) for i, name in enumerate(self.class_names))


def dataset_info(handle: DataHandle) -> DatasetInfo:
    """The description kept in ``handle``'s manifest."""
    manifest = json.loads((Path(handle.directory) / "manifest.json").read_text())
    data = manifest.get("dataset", {})
    shape = data.get("image_shape")
    names = data.get("class_names") or [str(i) for i in range(handle.classes)]
    return DatasetInfo(name=data.get("name", "MNIST"), kind=data.get("kind", "image"),
                       image_shape=tuple(shape) if shape else None, class_names=tuple(names),
                       feature_names=tuple(data["feature_names"])
                       if data.get("feature_names") else None,
                       source=data.get("source", ""))


# --------------------------------------------------------------------------------------------
# Arrow IPC files
# --------------------------------------------------------------------------------------------
def label_dtype(classes: int) -> type[np.integer]:
    """The labels' type: uint8 up to 256 classes (MNIST's), else int32."""
    return np.uint8 if classes <= 256 else np.int32


def label_type(classes: int):
    """The Arrow type of the labels (:func:`label_dtype`)."""
    import pyarrow as pa

    return pa.from_numpy_dtype(label_dtype(classes))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_split(path: Path, x: np.ndarray, y: np.ndarray, classes: int = 10) -> None:
    """Write one split as an Arrow IPC file: ``pixels`` (fixed-size list of float32 features)
    and ``label`` (:func:`label_type`)."""
    import pyarrow as pa

    pixels = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), x.shape[1])
    table = pa.table({"pixels": pixels, "label": pa.array(y, label_type(classes))})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def read_split(path: Path, copy: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Read one split written by :func:`write_split` as numpy (float32 (n, features), labels).

    By default no copy is made: the arrays are read-only views on the memory-mapped Arrow
    file, so their pages are the file's page cache, one copy shared by every process that
    reads the split (each worker process of a search), not a private copy per process. The
    arrays keep the mapping alive (numpy's ``base`` holds Arrow's buffer, which holds the
    map) after the file object is closed. The file must not be rewritten in place while they
    live (:func:`write_processed` never does: it renames a new directory into place).
    ``copy``: private, writable arrays instead (how splits were read before; compared by
    ``benchmarks/memory.py`` and the tests).
    """
    import pyarrow as pa

    with pa.memory_map(str(path), "r") as source:
        table = pa.ipc.open_file(source).read_all()
    if copy:
        pixels = table.column("pixels").combine_chunks()
        x = np.array(pixels.values.to_numpy(zero_copy_only=False), dtype=np.float32)
        y = np.array(table.column("label").to_numpy())
        return x.reshape(-1, pixels.type.list_size), y
    pixels, labels = _one_chunk(table.column("pixels")), _one_chunk(table.column("label"))
    if (pixels.null_count or pixels.values.null_count or labels.null_count
            or pixels.type.value_type != pa.float32()
            or labels.type not in (pa.uint8(), pa.int32())):
        raise DataError(f"{path}: not a split written by this pipeline (nulls or wrong types)")
    x = pixels.flatten().to_numpy(zero_copy_only=True)  # flatten: honours the array's offset
    y = labels.to_numpy(zero_copy_only=True)
    return x.reshape(-1, pixels.type.list_size), y


def _one_chunk(column):
    """The column as one array: its only chunk as it is (``combine_chunks`` copies even one),
    or the chunks combined (a copy) if a file ever holds several record batches."""
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The folder's manifest if every split file matches its checksum and the layout is
    today's, else None (missing, damaged, or written by an earlier layout: rebuild it)."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        if manifest.get("layout") != MANIFEST_LAYOUT:
            return None
        ok = all(file_sha256(directory / f"{split}.arrow") == manifest["sha256"][split]
                 for split in SPLITS)
        return manifest if ok else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_processed(parts: dict[str, tuple[np.ndarray, np.ndarray]], directory: Path,
                    fingerprint: str, processing_version: str,
                    dataset: dict[str, Any]) -> None:
    """Write every split (``parts``: split -> (x, y)) and the manifest into ``directory``
    atomically: a temporary sibling is renamed into place, so a reader never sees a
    half-written set and concurrent writers cannot clash. ``dataset``: what the manifest
    says about the data (:class:`DatasetInfo`'s fields, the normalization)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        classes = int(dataset["classes"])
        for split, (x, y) in parts.items():
            write_split(tmp / f"{split}.arrow", x, y, classes)
        manifest = {
            "layout": MANIFEST_LAYOUT,
            "fingerprint": fingerprint,
            "processing_version": processing_version,
            "sizes": {split: int(len(x)) for split, (x, _) in parts.items()},
            "sha256": {split: file_sha256(tmp / f"{split}.arrow") for split in SPLITS},
            "dataset": dataset,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if directory.exists():  # a damaged or older copy: move it aside, then replace it
            trash = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
            try:
                os.rename(directory, trash / "old")
            except FileNotFoundError:
                pass
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, directory)
        except OSError:
            if read_manifest(directory) is None:  # lost a race against a writer that failed
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def handle_of(directory: Path, manifest: dict[str, Any]) -> DataHandle:
    """The handle of a processed folder, from its manifest."""
    sizes, data = manifest["sizes"], manifest["dataset"]
    return DataHandle(directory=str(directory.resolve()), fingerprint=manifest["fingerprint"],
                      train_size=sizes["train"], validation_size=sizes["validation"],
                      test_size=sizes["test"], features=int(data["features"]),
                      classes=int(data["classes"]))


# --------------------------------------------------------------------------------------------
# Per-process reading
# --------------------------------------------------------------------------------------------
_LOADED: dict[str, Splits] = {}


def load_splits(handle: DataHandle) -> Splits:
    """The processed splits of ``handle``, read from disk once per process: read-only arrays
    mapped from the files (:func:`read_split`), whose pages worker processes share.

    Only the most recent data set is kept, so a long-lived worker switching data sets does
    not keep mappings of old ones.
    """
    cached = _LOADED.get(handle.fingerprint)
    if cached is not None:
        return cached
    parts = {}
    for split in SPLITS:
        path = handle.path(split)
        if not path.exists():
            raise DataError(
                f"{path}: processed data missing; every worker needs the data directory "
                "(use a shared filesystem on a cluster)"
            )
        parts[split] = read_split(path)
    splits = Splits(*parts["train"], *parts["validation"], *parts["test"],
                    classes=handle.classes)
    _LOADED.clear()
    _LOADED[handle.fingerprint] = splits
    return splits
