"""The input, read as the model takes it, or one line naming why it does not fit.

The data readers (:mod:`tasks.data.readers`) read the input in their "data to predict on"
mode (:func:`tasks.data.readers.read_inputs`): an npz of ``x`` or ``x_test``, IDX images,
an image folder or file, a table; labels where the input has them. Here the result meets the
model (``model.json``):

* **image files** are converted as the model's training data was (``before_model``: grey or
  RGB, resized, bilinear; for a model trained on arrays, its own shape and channels);
* **arrays** (npz, IDX) must have the model's image shape and channels, and, for a model of
  8-bit images, integers in 0..255; they are never resized;
* **a table** must have the model's feature columns, in their order;
* no NaN or infinite values; **labels** are class names or, where the names are words (an
  IDX folder's digits for Fashion-MNIST's names, a folder named ``3`` for "Dress"), class
  indices; any other label is unknown.

Any mismatch is a :class:`tasks.errors.DataError`: one line that names it, before anything
is written.

``split="test"`` (or ``validation``, ``train``) reproduces the model's own rows: the input is
read and split exactly as the training run's data step did (:func:`tasks.data.prepare.
prepare`, with the split recorded in ``model.json``), which works where the input's
fingerprint is the model's.
"""

from __future__ import annotations

import os
import re
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from tasks.config import SplitSpec, make_split
from tasks.data.readers import (
    IDX_NAME,
    INPUT_ARRAYS,
    Conversion,
    RawData,
    read_data,
    read_inputs,
    resolve_source,
)
from tasks.errors import DataError
from tasks.predict.model import ModelFolder, shape_text

SplitName = Literal["all", "test", "validation", "train"]
#: Label of a row without one (an unlabelled file beside labelled ones in an inbox).
NO_LABEL = -1
_GREY_MODES = {2: "L", 1: "L", 3: "RGB", 4: "RGBA"}


@dataclass(frozen=True)
class Inputs:
    """The input as the model takes it: ``x`` (the model's shape and dtype), class indices
    (``labels``, :data:`NO_LABEL` for a row without one; None where no row has one), and for
    every row the ``file`` it came from and its ``row`` there (an image file: 0; an npz, IDX
    file or table: its row; a split: its row in the data's part)."""

    x: np.ndarray
    labels: np.ndarray | None
    files: np.ndarray
    rows: np.ndarray
    source: str
    what: str
    split: str = "all"
    fingerprint: str | None = None
    conversion: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __len__(self) -> int:
        return len(self.x)

    @property
    def labelled(self) -> np.ndarray:
        """Which rows have a label."""
        if self.labels is None:
            return np.zeros(len(self.x), bool)
        return self.labels != NO_LABEL


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def read_for_model(model: ModelFolder, data: str | os.PathLike, split: SplitName = "all",
                   label: str = "label") -> Inputs:
    """``data`` as ``model`` takes it (all its rows, or the model's own ``split``), or a
    DataError naming the mismatch."""
    if split != "all":
        return split_for_model(model, data, split, label)
    conversion = conversion_of(model)
    raw = read_inputs(data, label, convert=conversion,
                      expected=model.feature_names if model.kind == "table" else None)
    return fit(model, raw, conversion)


def conversion_of(model: ModelFolder) -> Conversion | None:
    """How image files become the model's images: ``before_model`` where the model was trained
    on image files, else its own shape (grey for ``h x w`` or one channel, RGB for three,
    RGBA for four); None for a table model."""
    if model.kind != "image":
        return None
    before = model.before_model
    if before:
        return before["convert"], tuple(before["size"])
    shape = model.shape
    return _GREY_MODES.get(shape[2] if len(shape) == 3 else 2, "L"), (shape[1], shape[0])


def fit(model: ModelFolder, raw: RawData, conversion: Conversion | None = None) -> Inputs:
    """``raw`` (data to predict on) checked against ``model`` and made its input."""
    source = raw.source
    x = raw.x_train
    if len(x) == 0:
        raise DataError(f"{source}: no rows to predict on")
    decoded = raw.files is not None  # image files, converted to the model's mode and size
    what = describe(raw)
    if model.kind == "table":
        if decoded:
            raise DataError(f"{source}: images; the model takes {model.takes()}")
        if x.ndim > 2:
            raise DataError(f"{source}: {what} holds {image_text(x.shape[1:])}; the model "
                            f"takes {model.takes()}")
        if x.ndim != 2 or x.shape[1] != model.shape[0]:
            raise DataError(f"{source}: {what} holds rows of shape "
                            f"{shape_text(x.shape[1:]) or 'one value'}; the model takes "
                            f"{model.takes()}")
    else:
        if raw.feature_names is not None:
            raise DataError(f"{source}: a table; the model takes {model.takes()}")
        if decoded:
            if model.dtype != "uint8":
                raise DataError(f"{source}: image files decode to 8-bit pixels; the model "
                                f"takes {model.takes()} (an npz of such arrays)")
            x = x.reshape(len(x), *model.shape)  # (h, w) -> (h, w, 1) where the model has one
        if x.shape[1:] != model.shape:
            raise DataError(f"{source}: {what} holds {image_text(x.shape[1:])}; the model "
                            f"takes {model.takes()} (arrays are not resized)")
    x = checked_values(x, model, source, what, raw.feature_names)
    labels = None
    if raw.y_train is not None:
        if raw.y_train.shape != (len(x),):
            raise DataError(f"{source}: {raw.y_train.shape} labels for {len(x)} rows")
        labels = class_indices(raw.y_train, model.classes, source)
    files = (np.asarray(raw.files, dtype=object) if decoded
             else np.full(len(x), Path(source).name, dtype=object))
    rows = np.zeros(len(x), np.int64) if decoded else np.arange(len(x))
    converted = None
    if decoded and conversion is not None:
        mode, (width, height) = conversion
        converted = (f"image files converted with PIL to {mode}, {width}x{height} (bilinear "
                     "where another size), 8-bit: as the model's training data")
    return Inputs(x=x, labels=labels, files=files, rows=rows, source=source, what=what,
                  conversion=converted)


def describe(raw: RawData) -> str:
    """What the reader read, in words (``x_test`` of an npz, 12 image files, a table)."""
    path = Path(raw.source)
    if raw.files is not None:
        if len(raw.files) == 1 and path.is_file():
            return "the image file"
        layout = "class subfolders" if raw.y_train is not None else "no subfolders"
        return f"{len(raw.files)} image files ({layout})"
    if raw.feature_names is not None:
        return "the table"
    if IDX_NAME.search(path.name):
        return "the IDX file" + (" (with its labels file)" if raw.y_train is not None else "")
    if path.suffix == ".npz" or (path.is_file() and zipfile.is_zipfile(path)):
        try:
            with zipfile.ZipFile(path) as archive:
                names = {Path(n).stem for n in archive.namelist()}
        except (OSError, zipfile.BadZipFile):  # pragma: no cover (read a moment ago)
            names = set()
        for x_key, y_key in INPUT_ARRAYS:
            if x_key in names:
                return f"{x_key}" + (f" (with {y_key})" if y_key in names else "")
    return path.name


def image_text(shape) -> str:
    """``28x28 images``, ``28x28 images of 3 channels``, ``rows of 784 values``."""
    if len(shape) == 1:
        return f"rows of {shape[0]} values"
    if len(shape) == 3:
        return f"{shape_text(shape[:2])} images of {shape[2]} channels"
    return f"{shape_text(shape)} images"


def checked_values(x: np.ndarray, model: ModelFolder, source: str, what: str,
                   feature_names: tuple[str, ...] | None = None) -> np.ndarray:
    """``x`` in the model's dtype: 8-bit pixels must be integers in 0..255; other values
    numbers, none NaN or infinite."""
    dtype = np.dtype(model.dtype)
    numeric = np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_
    if not numeric:
        raise DataError(f"{source}: {what} holds {x.dtype} values; the model takes "
                        f"{model.takes()}")
    if np.issubdtype(dtype, np.integer):
        if not (np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_):
            raise DataError(f"{source}: {what} holds {x.dtype} values; the model takes "
                            f"{model.takes()} (integers 0..255, as its training data held them)")
        info = np.iinfo(dtype)
        low, high = int(x.min()), int(x.max())
        if low < info.min or high > info.max:
            raise DataError(f"{source}: {what} holds values in {low}..{high}; the model takes "
                            f"{model.takes()} ({info.min}..{info.max})")
    elif np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        bad = int(np.size(x) - np.isfinite(x).sum())
        if feature_names:
            columns = np.flatnonzero(~np.isfinite(x).all(axis=0))
            shown = ", ".join(feature_names[c] for c in columns[:5])
            raise DataError(f"{source}: {bad} NaN or infinite values in the feature "
                            f"column(s) {shown}")
        raise DataError(f"{source}: {what} has {bad} NaN or infinite values")
    return np.ascontiguousarray(x.astype(dtype, copy=False))


def class_indices(labels: np.ndarray, classes: tuple[str, ...], source: str) -> np.ndarray:
    """Each label's class index: a label is a class name; where the model's class names are
    words (not all numbers), a label may also be a class index (``3``, or a folder named
    ``3``: "T-shirt/top" cannot be a folder's name). One line names unknown labels."""
    if labels.dtype.kind == "f":
        if not np.isfinite(labels).all() or not np.array_equal(labels, np.round(labels)):
            raise DataError(f"{source}: labels of {labels.dtype} values that are not whole "
                            "numbers; labels are class names or indices")
        labels = labels.astype(np.int64)
    by_name = {name: index for index, name in enumerate(classes)}
    numbered = all(re.fullmatch(r"-?\d+", name) for name in classes)
    values, inverse = np.unique(labels, return_inverse=True)
    indices, unknown = [], []
    for value in values:
        text = str(value.item() if hasattr(value, "item") else value)
        if text in by_name:
            indices.append(by_name[text])
        elif not numbered and re.fullmatch(r"\d+", text) and int(text) < len(classes):
            indices.append(int(text))
        else:
            indices.append(NO_LABEL)
            unknown.append(text)
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        names = ", ".join(classes[:12]) + (", ..." if len(classes) > 12 else "")
        rule = "" if numbered else f" or a class index 0..{len(classes) - 1}"
        raise DataError(f"{source}: unknown label(s) {shown}: not a class of the model "
                        f"({names}){rule}")
    return np.asarray(indices, np.int64)[inverse.reshape(-1)]


# --------------------------------------------------------------------------------------------
# The model's own split
# --------------------------------------------------------------------------------------------
def split_spec(record: dict) -> SplitSpec:
    """The split a data step recorded (``model.json``'s ``data.split``) as a SplitSpec."""
    train_samples = record.get("train_samples")
    if "split_column" in record:
        return make_split(train_samples)
    return make_split(train_samples, record.get("test_size"), record.get("validation_size"))


def split_for_model(model: ModelFolder, data: str | os.PathLike, split: SplitName,
                    label: str = "label") -> Inputs:
    """The model's own ``split`` rows of ``data``, read and split as its data step did; one
    line where ``data`` is not the data the model was trained on (its fingerprint)."""
    from tasks.data.prepare import prepare

    raw = read_data(data, label)
    source = raw.source
    try:
        prepared = prepare(raw, split_spec(model.split_record))
    except DataError as exc:
        raise DataError(f"{source}: --split {split} needs the data the model was trained on "
                        f"(fingerprint {model.fingerprint}); this data does not split like "
                        f"it: {exc}") from None
    if prepared.fingerprint != model.fingerprint:
        raise DataError(f"{source}: its fingerprint {prepared.fingerprint} is not the model's "
                        f"data ({model.fingerprint}): --split {split} needs the data the model "
                        "was trained on (the same file, and for a table the same --label)")
    part, index = prepared.rows[split]
    x = (raw.x_test if part == "test" else raw.x_train)[index]
    x = checked_values(x, model, source, split, raw.feature_names)
    if raw.files is not None:
        files = np.asarray(raw.files, dtype=object)[index]
    else:
        files = np.full(len(index), Path(source).name, dtype=object)
    array = "x_test" if part == "test" and raw.has_test_part else "rows"
    what = f"the model's {split} split ({array} {describe_rows(index)})"
    return Inputs(x=x, labels=prepared.labels[part][index].astype(np.int64), files=files,
                  rows=np.asarray(index, np.int64), source=source, what=what, split=split,
                  fingerprint=prepared.fingerprint,
                  notes=("read and split exactly as the training run's data step did "
                         "(fingerprint matches model.json)",))


def describe_rows(index: np.ndarray) -> str:
    """``0..7999`` for a contiguous run, else ``1200 rows from 3 to 9998``."""
    if len(index) and np.array_equal(index, np.arange(index[0], index[0] + len(index))):
        return f"{index[0]}..{index[-1]}"
    return f"{len(index)} of them, {index.min()}..{index.max()}" if len(index) else "none"


# --------------------------------------------------------------------------------------------
# The command line's check, handed to the run
# --------------------------------------------------------------------------------------------
_CHECKED: dict[tuple, Inputs] = {}
_CHECKED_LOCK = threading.Lock()


def check_inputs(model: ModelFolder, data: str | os.PathLike, split: SplitName = "all",
                 label: str = "label") -> Inputs:
    """Read and check the input before Prefect starts (a mismatch is one line); kept for the
    run's first :func:`take_checked` of the same, unchanged input."""
    key = _key(model, data, split, label)
    inputs = read_for_model(model, data, split, label)
    with _CHECKED_LOCK:
        _CHECKED.clear()
        _CHECKED[key] = inputs
    return inputs


def take_checked(model: ModelFolder, data: str | os.PathLike, split: SplitName = "all",
                 label: str = "label") -> Inputs:
    """What :func:`check_inputs` read from this same, unchanged input (taken once), else the
    input read now."""
    with _CHECKED_LOCK:
        checked = dict(_CHECKED)
        _CHECKED.clear()
    if checked:
        found = checked.get(_key(model, data, split, label))
        if found is not None:
            return found
    return read_for_model(model, data, split, label)


def _key(model: ModelFolder, data, split: str, label: str) -> tuple:
    source = resolve_source(data)
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*")
                                                     if p.is_file())
    state = tuple((str(f), st.st_ino, st.st_size, st.st_mtime_ns) for f in files
                  for st in (f.stat(),))
    return str(model.folder.resolve()), model.model_key, str(source.resolve()), state, split, label


def combine(parts: list[Inputs], source: str, what: str) -> Inputs | None:
    """Several inputs as one (an inbox run's files), labels kept where a part has them
    (:data:`NO_LABEL` for the rows of a part without); None for no parts."""
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    labels = None
    if any(p.labels is not None for p in parts):
        labels = np.concatenate([p.labels if p.labels is not None
                                 else np.full(len(p), NO_LABEL, np.int64) for p in parts])
    return Inputs(x=np.concatenate([p.x for p in parts]), labels=labels,
                  files=np.concatenate([p.files for p in parts]),
                  rows=np.concatenate([p.rows for p in parts]), source=source, what=what,
                  conversion=next((p.conversion for p in parts if p.conversion), None))
