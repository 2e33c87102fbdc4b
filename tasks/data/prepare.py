"""One path from any format to the processed splits: validate, encode the labels, split,
normalize, write the Arrow files once (keyed by a content fingerprint), return a handle.

* **Labels** are integers or strings. Classes are the sorted distinct labels; labels that
  are already ``0..k-1`` (MNIST's) are kept as they are, any others are mapped in sorted
  order and the mapping is kept with the data (the class names).
* **Splits** (:class:`tasks.config.SplitSpec`): the test part's front is the test split and
  its rest validation (npz, IDX); data without a test part gets a seeded, stratified hold-out
  (or its ``split`` column).
* **Normalization**: images of 8-bit pixels (integers in 0..255 that use that range: a
  training maximum of at least :data:`EIGHT_BIT_MAXIMUM`; an npz of uint8, IDX, image folders)
  are scaled by 1/255, as the notebook does; everything else (integers of a narrow range such
  as 4-bit scans in 0..16, an npz of floats, any table) is standardized per feature with the
  training split's mean and standard deviation, stored in the manifest (a constant feature
  gets 1). The manifest's normalization says which rule applied, and why (``reason``).
* **The fingerprint** hashes the data as read, the split and the processing. For a Keras-layout
  npz or IDX files it is computed exactly as it always was, so every MNIST trial key stays.

Bad data fails here, before anything is written, in one line that names the problem.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.config import SplitSpec
from tasks.data.readers import RawData, read_data, resolve_source
from tasks.data.splits import (
    DataHandle,
    Splits,
    default_data_dir,
    handle_of,
    label_dtype,
    read_manifest,
    write_processed,
)
from tasks.errors import DataError
from tasks.files import exclusive_lock

PROCESSING_VERSION = "mnist-processed-v1"
#: The share of a test part that is the test split by default (MNIST: 8000 of 10000).
TEST_PART_SHARE = 0.8
#: Hold-out defaults for data without a test part, and the seed of its draw.
HOLDOUT_TEST, HOLDOUT_VALIDATION, HOLDOUT_SEED = 0.2, 0.1, 0


@dataclass(frozen=True)
class Prepared:
    """Validated data, split and encoded: row indices of each split into the source's rows
    (``part``: which array they index, ``train`` or ``test``), the class of every row, and
    what the manifest records."""

    raw: RawData
    rows: dict[str, tuple[str, np.ndarray]]
    labels: dict[str, np.ndarray]  # "train" / "test" (source arrays) -> class indices
    class_names: tuple[str, ...]
    scaling: str  # "pixels" or "standardize"
    split_record: dict  # the split as the fingerprint sees it
    fingerprint: str
    scaling_reason: str = ""  # why that scaling (tasks.data.prepare.scaling_rule)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
def validate(raw: RawData) -> None:
    """Shapes, lengths, types and values of the arrays, each problem in one line."""
    source = raw.source or "data"
    parts = [("train", raw.x_train, raw.y_train)]
    if raw.has_test_part:
        parts.append(("test", raw.x_test, raw.y_test))
    for part, x, y in parts:
        if x.ndim < 2:
            raise DataError(f"{source}: x_{part} has shape {x.shape}; expected one row of "
                            "features or one image per label")
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise DataError(
                f"{source}: y_{part} has shape {y.shape}; expected ({x.shape[0]},) labels, "
                f"one per image of x_{part}")
        if x.shape[0] == 0:
            raise DataError(f"{source}: x_{part} is empty")
        if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)
                or x.dtype == np.bool_):
            raise DataError(f"{source}: x_{part} has dtype {x.dtype}; expected numbers (8-bit "
                            "pixels or numeric features)")
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            bad = int(np.size(x) - np.isfinite(x).sum())
            if raw.feature_names:  # a table: name its columns
                columns = np.flatnonzero(~np.isfinite(x).all(axis=0))
                shown = ", ".join(raw.feature_names[c] for c in columns[:5])
                raise DataError(f"{source}: {bad} NaN or infinite values in the feature "
                                f"column(s) {shown}")
            raise DataError(f"{source}: x_{part} has {bad} NaN or infinite values")
        if not (np.issubdtype(y.dtype, np.integer) or y.dtype.kind in "US"):
            raise DataError(f"{source}: y_{part} has dtype {y.dtype}; expected integer or "
                            "string labels")
    if raw.has_test_part and raw.x_test.shape[1:] != raw.x_train.shape[1:]:
        raise DataError(f"{source}: x_test has shape {raw.x_test.shape} but x_train has shape "
                        f"{raw.x_train.shape}: every sample must have one shape")
    if raw.has_test_part and (raw.y_train.dtype.kind in "US") != (raw.y_test.dtype.kind in "US"):
        raise DataError(f"{source}: y_train holds {raw.y_train.dtype} labels, y_test "
                        f"{raw.y_test.dtype}: both integers or both strings")


def encode_labels(raw: RawData) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """Class indices of the training (and test) labels, and one name per class: the labels
    themselves unless they are ``0..k-1`` already, or the names the source gives."""
    source = raw.source or "data"
    parts = {"train": raw.y_train} | ({"test": raw.y_test} if raw.has_test_part else {})
    classes = np.unique(np.concatenate(list(parts.values())))
    if len(classes) < 2:
        raise DataError(f"{source}: only one class ({_shown(classes[0])}); a classifier needs "
                        "at least two")
    identity = np.issubdtype(classes.dtype, np.integer) and \
        np.array_equal(classes, np.arange(len(classes)))
    encoded = {part: (y.astype(np.int64) if identity else np.searchsorted(classes, y))
               for part, y in parts.items()}
    names = raw.class_names or tuple(str(i) if identity else _shown(c)
                                     for i, c in enumerate(classes))
    if len(names) != len(classes):
        raise DataError(f"{source}: {len(classes)} classes in the labels but {len(names)} "
                        "class names")
    return encoded, tuple(names)


def _shown(label) -> str:
    value = label.item() if hasattr(label, "item") else label
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def check_every_class_trains(labels: np.ndarray, names: tuple[str, ...], source: str) -> None:
    """Fail, naming them, on classes with no row in the training split."""
    absent = sorted(set(range(len(names))) - set(np.unique(labels).tolist()))
    if absent:
        shown = ", ".join(repr(names[i]) for i in absent[:5]) + (" ..." if len(absent) > 5 else "")
        raise DataError(f"{source}: class(es) {shown} absent from the training split; every "
                        "class needs training rows")


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------
def _count(size: float | None, total: int, default: float) -> int:
    share = default if size is None else size
    return int(share) if share >= 1 else int(round(share * total))


def split_rows(raw: RawData, split: SplitSpec, labels: dict[str, np.ndarray],
               names: tuple[str, ...]) -> tuple[dict[str, tuple[str, np.ndarray]], dict]:
    """Each split's rows (source part, indices), checked, and the split as the fingerprint
    records it."""
    source = raw.source or "data"
    if raw.has_test_part:
        n_train, n_test = len(raw.x_train), len(raw.x_test)
        if split.validation_size is not None:
            raise DataError(f"validation_size={split.validation_size:g}: {source} has a test "
                            "part, whose rest after --test-size is the validation split")
        k = _count(split.test_size, n_test, TEST_PART_SHARE)
        if not 1 <= k < n_test:
            raise DataError(
                f"test_size={k}: must leave validation images; {source} has {n_test} test "
                f"images, so allowed 1..{n_test - 1} (or a fraction below 1)")
        train = np.arange(n_train)
        rows = {"train": ("train", train), "validation": ("test", np.arange(k, n_test)),
                "test": ("test", np.arange(k))}
        record = {"train_samples": split.train_samples, "test_size": k}
    else:
        rows, record = _holdout(raw, split, labels["train"])
    if split.train_samples is not None:
        available = len(rows["train"][1])
        if split.train_samples > available:
            raise DataError(
                f"train_samples={split.train_samples}: larger than the {available} training "
                f"images in {source}; allowed 1..{available}")
        rows["train"] = (rows["train"][0], rows["train"][1][:split.train_samples])
    part, index = rows["train"]
    check_every_class_trains(labels[part][index], names, source)
    return rows, record


def _holdout(raw: RawData, split: SplitSpec, labels: np.ndarray):
    source, n = raw.source or "data", len(raw.x_train)
    if raw.split is not None:
        rows = {name: ("train", np.flatnonzero(raw.split == name))
                for name in ("train", "validation", "test")}
        empty = [name for name, (_, index) in rows.items() if len(index) == 0]
        if empty:
            raise DataError(f"{source}: the split column has no {' or '.join(empty)} rows")
        digest = hashlib.sha256(np.ascontiguousarray(raw.split).tobytes()).hexdigest()[:16]
        return rows, {"train_samples": split.train_samples, "split_column": digest}
    n_test = _count(split.test_size, n, HOLDOUT_TEST)
    n_val = _count(split.validation_size, n, HOLDOUT_VALIDATION)
    if n_test < 1 or n_val < 1 or n_test + n_val >= n:
        raise DataError(
            f"test_size={n_test}, validation_size={n_val}: {source} has {n} rows; each split "
            "needs at least one and the training split the rest")
    order = stratified_order(labels, HOLDOUT_SEED)
    rows = {"test": ("train", np.sort(order[:n_test])),
            "validation": ("train", np.sort(order[n_test:n_test + n_val])),
            "train": ("train", np.sort(order[n_test + n_val:]))}
    return rows, {"train_samples": split.train_samples, "test_size": n_test,
                  "validation_size": n_val, "seed": HOLDOUT_SEED}


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """All rows in an order whose every prefix holds each class in proportion to its size:
    each class's rows are shuffled and spread evenly over [0, 1), then all are sorted."""
    rng = np.random.default_rng(seed)
    position = np.empty(len(labels))
    for value in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == value))
        position[members] = (np.arange(len(members)) + rng.uniform()) / len(members)
    return np.lexsort((rng.random(len(labels)), position))


# --------------------------------------------------------------------------------------------
# Normalization and fingerprint
# --------------------------------------------------------------------------------------------
#: The smallest training maximum of integer images scaled by 1/255: below it the data does not
#: use the 8-bit range (4-bit scans in 0..16 would all lie in 0..0.063), and is standardized.
EIGHT_BIT_MAXIMUM = 128


def scaling_rule(raw: RawData) -> tuple[str, str]:
    """(``pixels`` (/255) for 8-bit images, ``standardize`` for everything else; why)."""
    x = raw.x_train
    if raw.kind != "image":
        return "standardize", "a table's feature columns: standardized per feature"
    if not np.issubdtype(x.dtype, np.integer):
        return "standardize", f"images of {x.dtype} values: standardized per pixel"
    parts = [x] + ([raw.x_test] if raw.has_test_part else [])
    low, high = min(int(p.min()) for p in parts), max(int(p.max()) for p in parts)
    if low < 0 or high > 255:
        return "standardize", (f"integer images in {low}..{high}, beyond 0..255: standardized "
                               "per pixel")
    top = int(x.max())
    if top < EIGHT_BIT_MAXIMUM:
        return "standardize", (f"integer images whose training maximum is {top}, below "
                               f"{EIGHT_BIT_MAXIMUM}: not the 8-bit range (x / 255 would put "
                               f"every input in 0..{top / 255:.3f}), so standardized per pixel")
    return "pixels", (f"8-bit images (integers in 0..255, training maximum {top}): "
                      "x / 255, as the exercise does")



def as_features(x: np.ndarray, scaling: str, mean=None, std=None) -> np.ndarray:
    """Rows of float32 features: pixels / 255 (exactly as the exercise), or standardized."""
    if scaling == "pixels":
        return np.ascontiguousarray((x.astype(np.float32) / np.float32(255.0)).reshape(len(x), -1))
    flat = x.reshape(len(x), -1).astype(np.float64)
    return np.ascontiguousarray(((flat - mean) / std).astype(np.float32))


def fingerprint(raw: RawData, record: dict, scaling: str) -> str:
    """Content fingerprint: processing version + split + the arrays as read (+ how they are
    scaled where that is not /255). A Keras-layout npz or IDX folder of 8-bit images hashes
    exactly as before this module handled other formats."""
    digest = hashlib.sha256()
    digest.update(PROCESSING_VERSION.encode())
    digest.update(json.dumps(record, separators=(",", ":")).encode())
    arrays = ({"x_train": raw.x_train, "y_train": raw.y_train, "x_test": raw.x_test,
               "y_test": raw.y_test} if raw.has_test_part else
              {"x": raw.x_train, "y": raw.y_train})
    for key, array in arrays.items():
        array = np.ascontiguousarray(array)
        digest.update(f"{key}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())
    if scaling != "pixels":
        digest.update(f"scaling:{scaling}".encode())
    return digest.hexdigest()[:20]


def prepare(raw: RawData, split: SplitSpec) -> Prepared:
    """Validate, encode and split ``raw`` (nothing is written)."""
    validate(raw)
    labels, names = encode_labels(raw)
    rows, record = split_rows(raw, split, labels, names)
    scaling, reason = scaling_rule(raw)
    return Prepared(raw, rows, labels, names, scaling, record,
                    fingerprint(raw, record, scaling), reason)


def _parts(prepared: Prepared) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict]:
    """Each split's (features, labels) and the normalization record."""
    raw, rows = prepared.raw, prepared.rows
    source = {"train": raw.x_train, "test": raw.x_test}
    stats: dict = {"kind": prepared.scaling, "reason": prepared.scaling_reason}
    mean = std = None
    if prepared.scaling == "standardize":
        part, index = rows["train"]
        train = source[part][index].reshape(len(index), -1).astype(np.float64)
        mean, std = train.mean(axis=0), train.std(axis=0)
        std[std == 0] = 1.0  # a constant feature
        stats |= {"mean": mean.tolist(), "std": std.tolist()}
    labels = label_dtype(len(prepared.class_names))
    parts = {split: (as_features(source[part][index], prepared.scaling, mean, std),
                     prepared.labels[part][index].astype(labels))
             for split, (part, index) in rows.items()}
    return parts, stats


def in_memory(prepared: Prepared) -> Splits:
    """The processed splits as arrays in this process, nothing written (tests, benchmarks)."""
    parts, _ = _parts(prepared)
    return Splits(*parts["train"], *parts["validation"], *parts["test"],
                  classes=len(prepared.class_names))


def describe(prepared: Prepared, normalization: dict) -> dict:
    raw = prepared.raw
    return {"name": raw.name or "data", "source": raw.source, "kind": raw.kind,
            "image_shape": list(raw.x_train.shape[1:]) if raw.kind == "image" else None,
            "features": int(np.prod(raw.x_train.shape[1:])),
            "classes": len(prepared.class_names), "class_names": list(prepared.class_names),
            "feature_names": list(raw.feature_names) if raw.feature_names else None,
            "split": prepared.split_record, "normalization": normalization}


def prepare_data(
    data: str | os.PathLike | None = None,
    split: SplitSpec | None = None,
    data_dir: str | os.PathLike | None = None,
    label: str = "label",
) -> tuple[DataHandle, bool]:
    """Read ``data`` (any format, :mod:`tasks.data.readers`), validate, split, normalize and
    write it once; return (handle, reused). A second call with the same data reuses the
    processed files (after checking their checksums); damaged ones are rebuilt. Data that
    :func:`check_data` read in this process, unchanged since, is not read again."""
    split = split or SplitSpec()
    prepared = _take_checked(data, label, split) or prepare(read_data(data, label), split)
    directory = Path(data_dir or default_data_dir()) / "processed" / prepared.fingerprint
    manifest = read_manifest(directory)
    reused = manifest is not None
    if not reused:
        # One writer at a time per data set: two runs that both find the files missing or
        # damaged must not move aside the copy the other has just written and is reading.
        # An OS file lock, released when its process dies, so a killed run never blocks one.
        with exclusive_lock(directory.parent / f".{directory.name}.lock"):
            manifest = read_manifest(directory)  # written meanwhile?
            reused = manifest is not None
            if not reused:
                parts, normalization = _parts(prepared)
                write_processed(parts, directory, prepared.fingerprint, PROCESSING_VERSION,
                                describe(prepared, normalization))
                manifest = read_manifest(directory)
    return handle_of(directory, manifest), reused


def check_data(data: str | os.PathLike | None = None, split: SplitSpec | None = None,
               label: str = "label") -> Prepared:
    """Read and validate the data and the split without writing anything (bad input fails
    fast, before Prefect or TensorFlow start). The result is kept for the first
    :func:`prepare_data` of the same, unchanged data in this process (the run's data step)."""
    split = split or SplitSpec()
    key = _checked_key(data, label, split)  # the files as they were before they were read
    prepared = prepare(read_data(data, label), split)
    with _CHECKED_LOCK:
        _CHECKED.clear()
        _CHECKED[key] = prepared
    return prepared


# --------------------------------------------------------------------------------------------
# The command line's check, handed to the run's data step
# --------------------------------------------------------------------------------------------
#: What :func:`check_data` prepared, for the first :func:`prepare_data` of the same data in
#: this process: the command line checks the data before Prefect starts, and its run's data
#: step would read it all again (a 70,000-row Parquet table: 3 s; a folder of images: every
#: image decoded twice). One entry, taken by its first use: it holds no memory for the run.
_CHECKED: dict[tuple, Prepared] = {}
_CHECKED_LOCK = threading.Lock()


def _checked_key(data, label: str, split: SplitSpec) -> tuple:
    """The data's source, every file under it with its inode, size and modification time (a file
    changed since the check is read again), the label column and the split."""
    source = resolve_source(data)
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*")
                                                     if p.is_file())
    state = tuple((str(f), st.st_ino, st.st_size, st.st_mtime_ns) for f in files
                  for st in (f.stat(),))
    return str(source.resolve()), state, label, split.model_dump_json()


def _take_checked(data, label: str, split: SplitSpec) -> Prepared | None:
    """What :func:`check_data` prepared from this same data, unchanged since (taken: a second
    call reads the data), else None."""
    with _CHECKED_LOCK:
        if not _CHECKED:
            return None
        checked = dict(_CHECKED)
        _CHECKED.clear()
    return checked.get(_checked_key(data, label, split))
