"""The user's data as it comes: one small reader per format, each returning the same
:class:`RawData` (arrays as read, class names where the source has them, an image shape or a
table's feature names), and a resolver that turns ``--data`` into a reader.

``--data`` takes a path (an existing path wins over a name) or a name:

* a Keras-layout ``.npz`` (``x_train, y_train, x_test, y_test``), images of any shape
  (``H x W`` or ``H x W x C``) or feature rows, any number of classes;
* a folder of the original IDX files (``train-images-idx3-ubyte[.gz]`` and its three
  siblings: MNIST, Fashion-MNIST, KMNIST);
* a folder of PNG/JPEG images with one subfolder per class (Keras'
  ``image_dataset_from_directory`` layout);
* a table, Parquet or CSV (``.csv``, ``.csv.gz``; a header row, comma-separated): a label
  column (``--label``, default ``label``), numeric feature columns, and optionally a ``split``
  column (train / validation / test); the same table in either format is the same data (one
  fingerprint, one set of trial keys);
* ``mnist`` or ``fashion-mnist``: the known local copies (nothing is downloaded for a name).

Validation, label encoding, normalization, splitting and the Arrow files are one path for
all of them (:mod:`tasks.data.prepare`).

**Data to predict on** (:func:`read_inputs`, for ``flows/predict.py``) goes through the same
readers, which then take what a trained model is given rather than what a training needs:
labels are optional; an npz may hold ``x`` (and ``y``) or ``x_test`` (and ``y_test``) alone;
an IDX images file is read by itself (its labels file beside it where there is one); an image
folder may hold its images directly, unlabelled, and its files are converted as the model's
training data was (``convert``); a single image file is one row; a table's feature columns
must be the model's (``expected``). Training reads are unchanged: same arrays, same errors,
same fingerprints.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import zipfile
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from tasks.errors import DataError, first_line

KERAS_LAYOUT = ("x_train", "y_train", "x_test", "y_test")
IDX_FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
             "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
SPLIT_COLUMN = "split"
SPLIT_VALUES = ("train", "validation", "test")
KERAS_MNIST_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
KERAS_MNIST_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
#: Data sets recognized by the sha256 of their training labels (``y_train.tobytes()``), from
#: whatever file they come: their name and class names for the reports.
KNOWN_DATASETS = {
    "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13": ("MNIST", None),
    "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7":
        ("Fashion-MNIST", FASHION_MNIST_CLASSES),
}
NAMES = ("mnist", "fashion-mnist")
#: An IDX file by its name (``t10k-images-idx3-ubyte.gz``, ``my-labels-idx1-ubyte``).
IDX_NAME = re.compile(r"-idx\d-ubyte(\.gz)?$")
#: How image files become the model's images, for data to predict on: a PIL mode (``L``,
#: ``RGB``, ``RGBA``) and a size (width, height).
Conversion = tuple[str, tuple[int, int]]


@dataclass(frozen=True)
class RawData:
    """A data set as its file holds it. Formats with a test part (npz, IDX) fill ``x_test`` and
    ``y_test``; the others hold every row in ``x_train``/``y_train`` and, where the file says
    which rows go where, ``split`` (train / validation / test per row). Labels are integers
    or strings (``str_``), as read. ``class_names``: one per class where the source names
    them (sorted like the labels); ``feature_names``: a table's columns; ``files``: the
    image file of each row of ``x_train`` (relative to the folder), for images read from
    files. Data to predict on (:func:`read_inputs`) holds every row in ``x_train``, and its
    ``y_train`` is None where it has no labels (an image folder's labels are its subfolders'
    names, as read)."""

    x_train: np.ndarray
    y_train: np.ndarray | None
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    split: np.ndarray | None = None
    kind: str = "image"
    feature_names: tuple[str, ...] | None = None
    class_names: tuple[str, ...] | None = None
    name: str = ""
    source: str = ""
    files: tuple[str, ...] | None = None

    @property
    def has_test_part(self) -> bool:
        return self.x_test is not None


# --------------------------------------------------------------------------------------------
# Which file, which reader
# --------------------------------------------------------------------------------------------
def keras_home() -> Path:
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser()


def known_copies(name: str) -> list[Path]:
    """Where a named data set may already be on this machine, in order of preference."""
    from tasks.settings import current

    if name == "mnist":
        given = current().mnist_path
        return [*([Path(given).expanduser()] if given else []),
                keras_home() / "datasets" / "mnist.npz"]
    return [Path("/usr/share/datasets/fashion-mnist"), keras_home() / "datasets" / "fashion-mnist"]


def how_to_get(name: str) -> str:
    if name == "mnist":
        return ("no local copy of MNIST: pass --data PATH to a Keras-format mnist.npz, set "
                f"MNIST_PATH to one, or put it at {keras_home() / 'datasets' / 'mnist.npz'}")
    return ("no local copy of Fashion-MNIST: install it with `apt-get install "
            "dataset-fashion-mnist` (its IDX files go to /usr/share/datasets/fashion-mnist), or "
            f"put the four IDX .gz files in {keras_home() / 'datasets' / 'fashion-mnist'}")


def resolve_source(data: str | os.PathLike | None = None) -> Path:
    """The file or folder ``data`` names: an existing path; else a known name's local copy
    (:data:`NAMES`); with no ``data``, MNIST: ``$MNIST_PATH``, else Keras' cache/download.
    A path that does not exist and is no name fails in one line."""
    from tasks.settings import current

    if data is None:
        given = current().mnist_path
        return Path(given).expanduser() if given else keras_mnist_download()
    path = Path(data).expanduser()
    if path.exists():
        return path
    name = str(data).strip().lower().replace("_", "-")
    if name in NAMES:
        for candidate in known_copies(name):
            if _usable(candidate, name):
                return candidate
        raise DataError(f"--data {data}: {how_to_get(name)}")
    if os.sep not in str(data) and not path.suffix:
        raise DataError(f"{path}: file not found (and not a known name: {', '.join(NAMES)})")
    raise DataError(f"{path}: file not found")


def _usable(path: Path, name: str) -> bool:
    if name == "mnist":
        return path.is_file()
    return path.is_dir() and _idx_file(path, IDX_FILES["x_train"]) is not None


def keras_mnist_download() -> Path:
    """No --data and no MNIST_PATH: Keras' own cached copy, downloaded once where there is a
    network (the quick start on any machine)."""
    try:
        from keras.utils import get_file  # imported lazily: TensorFlow start-up is slow
    except ImportError as exc:  # pragma: no cover - keras is a dependency
        raise DataError(
            f"no MNIST file given (--data or MNIST_PATH) and Keras is unavailable: {exc}"
        ) from exc
    try:
        return Path(get_file("mnist.npz", origin=KERAS_MNIST_URL, file_hash=KERAS_MNIST_SHA256))
    except Exception as exc:  # network errors come in many types
        raise DataError(
            "no MNIST file given and Keras' download failed "
            f"({type(exc).__name__}); pass --data PATH or set MNIST_PATH to a local mnist.npz"
        ) from exc


def read_source(path: Path, label: str = "label") -> RawData:
    """Read ``path`` with the reader of its format (by content, not by name)."""
    if path.is_dir():
        if _idx_file(path, IDX_FILES["x_train"]) is not None:
            return recognized(read_idx_folder(path))
        return read_image_folder(path)
    if not path.is_file():
        raise DataError(f"{path}: not a file or folder")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic == b"PAR1":
        return read_parquet(path, label)
    if path.name.lower().endswith(CSV_SUFFIXES):
        return read_csv(path, label)
    if path.name.split(".")[0] in IDX_FILES.values():
        return recognized(read_idx_folder(path.parent))
    if magic.startswith(b"PK") or path.suffix == ".npz":
        return recognized(read_npz(path))
    raise DataError(
        f"{path}: not a data file this pipeline reads: a Keras-layout .npz, a Parquet table, a "
        "CSV table (.csv, .csv.gz), a folder of IDX files, or a folder of images with one "
        "subfolder per class")


def recognized(raw: RawData) -> RawData:
    """``raw`` with the name and class names of a known data set (:data:`KNOWN_DATASETS`)."""
    known = KNOWN_DATASETS.get(hashlib.sha256(np.ascontiguousarray(raw.y_train).tobytes())
                               .hexdigest())
    if known is None:
        return raw
    name, classes = known
    return replace(raw, name=name, class_names=classes or raw.class_names)


# --------------------------------------------------------------------------------------------
# Keras-layout npz
# --------------------------------------------------------------------------------------------
#: The arrays an npz of data to predict on may hold, in order of preference: (samples, labels).
INPUT_ARRAYS = (("x", "y"), ("x_test", "y_test"))


def read_npz(path: Path, inputs: bool = False) -> RawData:
    """The four arrays of a Keras-layout ``.npz``; errors name the file and the problem.
    ``inputs``: data to predict on: ``x`` (and ``y`` if there), else ``x_test`` (and
    ``y_test`` if there), every row in ``x_train``; Keras' training arrays are ignored."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            if inputs:
                arrays = _input_arrays(path, npz)
            else:
                missing = [k for k in KERAS_LAYOUT if k not in npz.files]
                if missing:
                    raise DataError(
                        f"{path}: missing arrays {missing}; a Keras-format .npz holds "
                        f"{list(KERAS_LAYOUT)} (found {sorted(npz.files)})"
                    )
                arrays = {k: npz[k] for k in KERAS_LAYOUT}
    except DataError:
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError) as exc:
        raise DataError(
            f"{path}: not a readable .npz file (truncated or corrupt?): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    x = arrays["x_train"]
    image = x.ndim == 3 or (x.ndim == 4 and x.shape[-1] in (1, 3, 4))
    return RawData(**arrays, kind="image" if image else "table", name=path.stem,
                   source=str(path))


def _input_arrays(path: Path, npz) -> dict[str, np.ndarray | None]:
    """An npz's samples to predict on (:data:`INPUT_ARRAYS`), and their labels or None."""
    for x_key, y_key in INPUT_ARRAYS:
        if x_key in npz.files:
            return {"x_train": npz[x_key], "y_train": npz[y_key] if y_key in npz.files else None}
    raise DataError(f"{path}: no array x or x_test (found {sorted(npz.files)}); data to "
                    "predict on is an npz holding x (and optionally y), or x_test (and "
                    "optionally y_test)")


# --------------------------------------------------------------------------------------------
# IDX files
# --------------------------------------------------------------------------------------------
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, f"{stem}.gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (gzipped or not): its array, in the file's own type."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            content = handle.read()
        if len(content) < 4 or content[:2] != b"\0\0" or content[2] not in _IDX_TYPES:
            raise ValueError("no IDX header")
        dims = [int.from_bytes(content[4 + 4 * i:8 + 4 * i], "big") for i in range(content[3])]
        dtype = np.dtype(_IDX_TYPES[content[2]])
        start = 4 + 4 * len(dims)
        if len(content) != start + int(np.prod(dims)) * dtype.itemsize:
            raise ValueError(f"{len(content) - start} bytes of data for dimensions {dims}")
        array = np.frombuffer(content, dtype, offset=start).reshape(dims)
        return array.astype(dtype.newbyteorder("="))
    except (OSError, EOFError, ValueError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: not a readable IDX file (truncated or corrupt?): {exc}") from exc


def read_idx_folder(folder: Path) -> RawData:
    """The four IDX files of MNIST's original distribution (and Fashion-MNIST's, KMNIST's)."""
    files = {key: _idx_file(folder, stem) for key, stem in IDX_FILES.items()}
    missing = [IDX_FILES[key] for key, file in files.items() if file is None]
    if missing:
        raise DataError(f"{folder}: missing IDX files {missing} (with or without .gz)")
    arrays = {key: read_idx(file) for key, file in files.items()}
    return RawData(**arrays, kind="image", name=folder.name, source=str(folder))


def idx_images_in(folder: Path) -> Path | None:
    """The images file of an IDX folder that data to predict on reads: the test part's
    (``t10k-images-idx3-ubyte[.gz]``), else the training part's; None for another folder."""
    return _idx_file(folder, IDX_FILES["x_test"]) or _idx_file(folder, IDX_FILES["x_train"])


def read_idx_images(path: Path) -> RawData:
    """One IDX images file by itself (data to predict on), with its labels where the labels
    file of its name is beside it (``…-images-idx3-ubyte`` -> ``…-labels-idx1-ubyte``, with
    or without .gz)."""
    x = read_idx(path)
    if x.ndim < 3:
        raise DataError(f"{path}: holds {x.ndim}-dimensional data of shape {x.shape}, not "
                        "images (an images file, e.g. t10k-images-idx3-ubyte, is read with "
                        "its labels file beside it)")
    stem = IDX_NAME.sub("", path.name)
    labels = None
    if "images" in stem:
        labels = _idx_file(path.parent, stem.replace("images", "labels") + "-idx1-ubyte")
    y = read_idx(labels) if labels is not None else None
    if y is not None and y.shape != (len(x),):
        raise DataError(f"{labels}: {y.shape} labels for the {len(x)} images of {path.name}")
    return RawData(x_train=x, y_train=y, kind="image", name=stem, source=str(path))


# --------------------------------------------------------------------------------------------
# A folder of images, one subfolder per class
# --------------------------------------------------------------------------------------------
def _image_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")
                  and f.suffix.lower() in IMAGE_SUFFIXES)


def read_image_folder(folder: Path, inputs: bool = False,
                      convert: Conversion | None = None) -> RawData:
    """Every image of ``folder/<class>/``, classes in sorted order of their folder names.
    Grey images stay grey, otherwise RGB; images of another size than the most common one
    are resized to it.

    ``inputs`` (data to predict on): the images may also lie in the folder itself, unlabelled
    (``y_train`` None); a subfolder's name is its images' label, as read, and a subfolder
    without images is left out; ``convert``: every image converted to that mode and size
    (:data:`Conversion`: the model's) instead."""
    classes = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = {d.name: _image_files(d) if inputs else
             sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
             for d in classes}
    if inputs:
        return _read_input_folder(folder, files, convert)
    if not any(files.values()):
        raise DataError(
            f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in class subfolders: an image "
            "folder holds one subfolder per class (Keras' image_dataset_from_directory layout)")
    empty = [name for name, found in files.items() if not found]
    if empty:
        raise DataError(f"{folder}: class folder(s) {', '.join(empty)} hold no images; every "
                        "class needs images (remove the folder to drop the class)")
    images, labels = [], []
    for index, paths in enumerate(files.values()):
        for path in paths:
            images.append(open_image(path))
            labels.append(index)
    grey = all(image.mode in ("1", "L", "LA", "I", "I;16", "F") for image in images)
    size = Counter(image.size for image in images).most_common(1)[0][0]
    arrays = [converted(image, "L" if grey else "RGB", size) for image in images]
    return RawData(x_train=np.stack(arrays), y_train=np.asarray(labels, np.int64),
                   kind="image", class_names=tuple(files), name=folder.name, source=str(folder),
                   files=tuple(str(path.relative_to(folder)) for paths in files.values()
                               for path in paths))


def _read_input_folder(folder: Path, files: dict[str, list[Path]],
                       convert: Conversion | None) -> RawData:
    """An image folder of data to predict on (:func:`read_image_folder` with ``inputs``)."""
    top = _image_files(folder)
    labelled = [path for paths in files.values() for path in paths]
    if top and labelled:
        raise DataError(f"{folder}: images both in the folder itself ({top[0].name}, ...) and "
                        "in subfolders: put them all in class subfolders (labelled) or all in "
                        "the folder (unlabelled)")
    if not top and not labelled:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in it or in its "
                        "subfolders")
    paths = top or labelled
    labels = None if top else np.asarray([path.parent.name for path in labelled], dtype=np.str_)
    images = [open_image(path) for path in paths]
    if convert is None:  # as the data step converts a training folder
        grey = all(image.mode in ("1", "L", "LA", "I", "I;16", "F") for image in images)
        convert = ("L" if grey else "RGB",
                   Counter(image.size for image in images).most_common(1)[0][0])
    x = np.stack([converted(image, *convert) for image in images])
    return RawData(x_train=x, y_train=labels, kind="image", name=folder.name,
                   source=str(folder), files=tuple(str(p.relative_to(folder)) for p in paths))


def read_image_file(path: Path, convert: Conversion | None = None) -> RawData:
    """One image file as one row of data to predict on, converted by ``convert`` (else grey
    stays grey, otherwise RGB, at its own size)."""
    image = open_image(path)
    if convert is None:
        grey = image.mode in ("1", "L", "LA", "I", "I;16", "F")
        convert = ("L" if grey else "RGB", image.size)
    return RawData(x_train=converted(image, *convert)[None], y_train=None, kind="image",
                   name=path.stem, source=str(path), files=(path.name,))


def open_image(path: Path):
    """The decoded image at ``path`` (a PIL image in memory); one line if it is none."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            opened.load()
            return opened.copy()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from exc


def converted(image, mode: str, size: tuple[int, int]) -> np.ndarray:
    """``image`` in ``mode``, resized (bilinear) to ``size`` (width, height) where its size is
    another, as 8-bit pixels: the data step's conversion of image files."""
    from PIL import Image

    image = image.convert(mode)
    if image.size != tuple(size):
        image = image.resize(tuple(size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


# --------------------------------------------------------------------------------------------
# A table: Parquet or CSV
# --------------------------------------------------------------------------------------------
#: The names of CSV tables (compressed ones are read as such).
CSV_SUFFIXES = (".csv", ".csv.gz")


def read_parquet(path: Path, label: str = "label", inputs: bool = False,
                 expected: tuple[str, ...] | None = None) -> RawData:
    """A Parquet table (:func:`read_table`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file: {exc}") from exc
    return read_table(table, path, label, inputs, expected)


def read_csv(path: Path, label: str = "label", inputs: bool = False,
             expected: tuple[str, ...] | None = None) -> RawData:
    """A CSV table with a header row (:func:`read_table`): each column's type is inferred
    (numbers, booleans, strings); an empty field is a missing value."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    try:
        table = pcsv.read_csv(path)
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        message = first_line(exc) or type(exc).__name__
        raise DataError(f"{path}: not a readable CSV file: {message}") from exc
    return read_table(table, path, label, inputs, expected)


def read_table(table, path: Path, label: str = "label", inputs: bool = False,
               expected: tuple[str, ...] | None = None) -> RawData:
    """Feature columns (numbers), a label column (integers or strings) and an optional
    ``split`` column of an Arrow table read from ``path``.

    ``inputs`` (data to predict on): the label column is optional (``y_train`` None without
    it); ``expected``: the model's feature columns, which the table's must be, in that order
    (:func:`check_feature_columns`)."""
    import pyarrow as pa

    if table.num_rows == 0:
        raise DataError(f"{path}: no rows (columns only: {', '.join(table.column_names)})")
    columns = table.column_names
    if label not in columns and not inputs:
        raise DataError(f"{path}: no label column {label!r} (columns: {', '.join(columns)}); "
                        "name it with --label COLUMN")
    features = [c for c in columns if c not in (label, SPLIT_COLUMN)]
    if expected is not None:
        check_feature_columns(path, features, expected, label)
    if not features:
        raise DataError(f"{path}: no feature columns beside the label column {label!r}")
    numeric = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean)
    other = [f"{c} ({table.schema.field(c).type})" for c in features
             if not any(test(table.schema.field(c).type) for test in numeric)]
    if other:
        raise DataError(f"{path}: non-numeric feature columns: {', '.join(other)}; features "
                        "must be numbers (encode or drop those columns)")
    x = np.column_stack([table.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
                         for c in features])
    if label not in columns:  # data to predict on, unlabelled
        return RawData(x_train=x, y_train=None, kind="table", feature_names=tuple(features),
                       name=path.stem, source=str(path))
    labels = table.column(label).combine_chunks()
    if pa.types.is_dictionary(labels.type):  # a categorical column: its values
        labels = labels.dictionary_decode()
    if labels.null_count:
        raise DataError(f"{path}: the label column {label!r} has {labels.null_count} missing "
                        "values")
    kind = labels.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        y = np.asarray(labels.to_pylist(), dtype=np.str_)
    elif pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        y = labels.to_numpy(zero_copy_only=False).astype(np.int64)
    else:
        raise DataError(f"{path}: the label column {label!r} has type {kind}; expected integer "
                        "or string labels")
    split = None
    if SPLIT_COLUMN in columns:
        values = table.column(SPLIT_COLUMN).to_pylist()
        bad = sorted({str(v) for v in values} - set(SPLIT_VALUES))
        if bad:
            raise DataError(f"{path}: the {SPLIT_COLUMN!r} column holds {', '.join(bad)}; "
                            f"allowed: {', '.join(SPLIT_VALUES)}")
        split = np.asarray(values, dtype=np.str_)
    return RawData(x_train=x, y_train=y, split=split, kind="table",
                   feature_names=tuple(features), name=path.stem, source=str(path))


def check_feature_columns(path: Path, features: list[str], expected: tuple[str, ...],
                          label: str) -> None:
    """A table's feature columns (all but the label and split columns) are ``expected``, in
    that order; else one line names the missing, the extra or the reordered columns."""
    missing = [c for c in expected if c not in features]
    extra = [c for c in features if c not in expected]
    if missing:
        raise DataError(f"{path}: missing feature column(s) {', '.join(missing)}; the model "
                        f"takes {', '.join(expected)}")
    if extra:
        raise DataError(f"{path}: extra column(s) {', '.join(extra)}; the model takes the "
                        f"feature columns {', '.join(expected)} (and the label column "
                        f"{label!r}, --label, where there are labels)")
    if tuple(features) != tuple(expected):
        raise DataError(f"{path}: the feature columns are in another order "
                        f"({', '.join(features)}); the model takes them as "
                        f"{', '.join(expected)}")


def read_data(data: str | os.PathLike | None = None, label: str = "label") -> RawData:
    """Resolve ``data`` (:func:`resolve_source`) and read it."""
    return read_source(resolve_source(data), label)


# --------------------------------------------------------------------------------------------
# Data to predict on: the same readers, labels optional
# --------------------------------------------------------------------------------------------
def read_inputs(data: str | os.PathLike, label: str = "label",
                convert: Conversion | None = None,
                expected: tuple[str, ...] | None = None) -> RawData:
    """Data to predict on, every row in ``x_train`` and labels (``y_train``) where it has them:
    an npz of ``x`` (``y``) or ``x_test`` (``y_test``); an IDX images file (with the labels
    file beside it, if any) or an IDX folder's test images; an image folder (class subfolders
    or none) or one image file, converted by ``convert`` (the model's; None: as a training
    folder's); a Parquet or CSV table, whose feature columns must be ``expected`` where given
    (a table model's). Names resolve as for training."""
    path = resolve_source(data)
    if path.is_dir():
        images = idx_images_in(path)
        if images is not None:
            return read_idx_images(images)
        return read_image_folder(path, inputs=True, convert=convert)
    if not path.is_file():
        raise DataError(f"{path}: not a file or folder")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic == b"PAR1":
        return read_parquet(path, label, inputs=True, expected=expected)
    if path.name.lower().endswith(CSV_SUFFIXES):
        return read_csv(path, label, inputs=True, expected=expected)
    if IDX_NAME.search(path.name):
        return read_idx_images(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return read_image_file(path, convert)
    if magic.startswith(b"PK") or path.suffix == ".npz":
        return read_npz(path, inputs=True)
    raise DataError(
        f"{path}: not data this pipeline predicts on: an .npz (x, or x_test), a Parquet or CSV "
        "table, an IDX images file or folder, a folder of images or one image file "
        f"({', '.join(IMAGE_SUFFIXES)})")
