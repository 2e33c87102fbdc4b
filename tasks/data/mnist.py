"""MNIST data: load a Keras-format ``mnist.npz``, validate it, normalize, split, and write the
processed splits once (Arrow IPC), keyed by a content fingerprint.

Training code never receives arrays through Prefect: it receives a small :class:`DataHandle`
(directory + fingerprint) and reads the splits from disk once per process
(:func:`load_splits`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from tasks.config import SplitSpec
from tasks.errors import DataError

PROCESSING_VERSION = "mnist-processed-v1"
MNIST_KEYS = ("x_train", "y_train", "x_test", "y_test")
SPLITS = ("train", "validation", "test")
KERAS_MNIST_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
KERAS_MNIST_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"

def default_data_dir() -> Path:
    """Where processed splits and trained weights live: ``$PIPELINE_DATA_DIR`` or ``./data``."""
    from tasks.settings import current

    return current().data_dir


class DataHandle(BaseModel):
    """A reference to processed splits on disk. Small, hashable, cheap to ship to workers."""

    model_config = ConfigDict(frozen=True)

    directory: str
    fingerprint: str
    train_size: int
    validation_size: int
    test_size: int

    def path(self, split: str) -> Path:
        return Path(self.directory) / f"{split}.arrow"


@dataclass(frozen=True)
class Splits:
    """Processed data: float32 pixels in [0, 1], shape (n, 784); int labels (n,). From
    :func:`load_splits` the arrays are read-only views on the memory-mapped files."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


# --------------------------------------------------------------------------------------------
# Locate and load
# --------------------------------------------------------------------------------------------
def resolve_mnist_path(path: str | os.PathLike | None = None) -> Path:
    """The MNIST file to use: ``path``, else ``$MNIST_PATH``, else Keras' cache/download."""
    from tasks.settings import current

    chosen = path or current().mnist_path
    if chosen:
        return Path(chosen).expanduser()
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


def load_mnist(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read the four arrays of a Keras-format ``mnist.npz``; errors name the file and problem."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in MNIST_KEYS if k not in npz.files]
            if missing:
                raise DataError(
                    f"{path}: missing arrays {missing}; a Keras-format mnist.npz holds "
                    f"{list(MNIST_KEYS)} (found {sorted(npz.files)})"
                )
            return {k: npz[k] for k in MNIST_KEYS}
    except DataError:
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError) as exc:
        raise DataError(
            f"{path}: not a readable .npz file (truncated or corrupt?): "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def validate_mnist(arrays: dict[str, np.ndarray], source: str = "data") -> None:
    """Check names, shapes, dtypes, pixel range (0..255, finite) and labels (0..9)."""
    for key in MNIST_KEYS:
        if key not in arrays:
            raise DataError(f"{source}: missing array {key!r}")
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if x.ndim != 3 or x.shape[1:] != (28, 28):
            raise DataError(
                f"{source}: x_{part} has shape {x.shape}; expected (n, 28, 28) images"
            )
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise DataError(
                f"{source}: y_{part} has shape {y.shape}; expected ({x.shape[0]},) labels, "
                f"one per image of x_{part}"
            )
        if x.shape[0] == 0:
            raise DataError(f"{source}: x_{part} is empty")
        if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
            raise DataError(f"{source}: x_{part} has dtype {x.dtype}; expected uint8 pixels")
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            bad = int(np.size(x) - np.isfinite(x).sum())
            raise DataError(f"{source}: x_{part} has {bad} NaN or infinite pixels")
        lo, hi = x.min(), x.max()
        if lo < 0 or hi > 255:
            raise DataError(
                f"{source}: x_{part} pixels range {lo}..{hi}; expected 0..255"
            )
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{source}: y_{part} has dtype {y.dtype}; expected integer labels")
        if y.min() < 0 or y.max() > 9:
            raise DataError(
                f"{source}: y_{part} labels range {y.min()}..{y.max()}; expected 0..9"
            )


def check_split(arrays: dict[str, np.ndarray], split: SplitSpec, source: str = "data") -> None:
    """The split must fit the data: a subset no larger than the train set, a non-empty
    validation split."""
    n_train, n_test = len(arrays["x_train"]), len(arrays["x_test"])
    if split.train_samples is not None and split.train_samples > n_train:
        raise DataError(
            f"train_samples={split.train_samples}: larger than the {n_train} training "
            f"images in {source}; allowed 1..{n_train}"
        )
    if split.test_size >= n_test:
        raise DataError(
            f"test_size={split.test_size}: must leave validation images; {source} has "
            f"{n_test} test images, so allowed 1..{n_test - 1}"
        )


# --------------------------------------------------------------------------------------------
# Normalize and split
# --------------------------------------------------------------------------------------------
def normalize(x: np.ndarray) -> np.ndarray:
    """Pixels / 255 as float32, flattened to 784 (C order)."""
    return np.ascontiguousarray((x.astype(np.float32) / np.float32(255.0)).reshape(len(x), -1))


def split_arrays(arrays: dict[str, np.ndarray], split: SplitSpec) -> Splits:
    """The exercise's split: train (optionally the first N), validation = x_test[test_size:],
    test = x_test[:test_size]."""
    n = split.train_samples or len(arrays["x_train"])
    x_test, y_test = arrays["x_test"], arrays["y_test"]
    k = split.test_size
    return Splits(
        x_train=normalize(arrays["x_train"][:n]),
        y_train=arrays["y_train"][:n].astype(np.uint8),
        x_val=normalize(x_test[k:]),
        y_val=y_test[k:].astype(np.uint8),
        x_test=normalize(x_test[:k]),
        y_test=y_test[:k].astype(np.uint8),
    )


def fingerprint(arrays: dict[str, np.ndarray], split: SplitSpec) -> str:
    """Content fingerprint of the raw arrays + split + processing version."""
    digest = hashlib.sha256()
    digest.update(PROCESSING_VERSION.encode())
    digest.update(split.model_dump_json().encode())
    for key in MNIST_KEYS:
        array = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:20]


# --------------------------------------------------------------------------------------------
# Arrow IPC files
# --------------------------------------------------------------------------------------------
def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_split(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """Write one split as an Arrow IPC file: ``pixels`` (fixed-size list of 784 float32) and
    ``label`` (uint8)."""
    import pyarrow as pa

    pixels = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), x.shape[1])
    table = pa.table({"pixels": pixels, "label": pa.array(y, pa.uint8())})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def read_split(path: Path, copy: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Read one split written by :func:`write_split` as numpy (float32 (n, 784), uint8).

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
        y = np.array(table.column("label").to_numpy(), dtype=np.uint8)
        return x.reshape(-1, pixels.type.list_size), y
    pixels, labels = _one_chunk(table.column("pixels")), _one_chunk(table.column("label"))
    if (pixels.null_count or pixels.values.null_count or labels.null_count
            or pixels.type.value_type != pa.float32() or labels.type != pa.uint8()):
        raise DataError(f"{path}: not a split written by this pipeline (nulls or wrong types)")
    x = pixels.flatten().to_numpy(zero_copy_only=True)  # flatten: honours the array's offset
    y = labels.to_numpy(zero_copy_only=True)
    return x.reshape(-1, pixels.type.list_size), y


def _one_chunk(column):
    """The column as one array: its only chunk as it is (``combine_chunks`` copies even one),
    or the chunks combined (a copy) if a file ever holds several record batches."""
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _manifest_ok(directory: Path) -> bool:
    """True if every split file is present and matches the checksum in ``manifest.json``."""
    manifest_path = directory / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        return all(
            _file_sha256(directory / f"{split}.arrow") == manifest["sha256"][split]
            for split in SPLITS
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def write_processed(splits: Splits, directory: Path, fp: str) -> None:
    """Write all splits into ``directory`` atomically: a temporary sibling is renamed into
    place, so a reader never sees a half-written set and concurrent writers cannot clash."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        parts = {
            "train": (splits.x_train, splits.y_train),
            "validation": (splits.x_val, splits.y_val),
            "test": (splits.x_test, splits.y_test),
        }
        for split, (x, y) in parts.items():
            write_split(tmp / f"{split}.arrow", x, y)
        manifest = {
            "fingerprint": fp,
            "processing_version": PROCESSING_VERSION,
            "sizes": {split: int(len(x)) for split, (x, _) in parts.items()},
            "sha256": {split: _file_sha256(tmp / f"{split}.arrow") for split in SPLITS},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if directory.exists():  # a damaged earlier copy: move it aside, then replace it
            trash = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
            try:
                os.rename(directory, trash / "old")
            except FileNotFoundError:
                pass
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, directory)
        except OSError:
            if not _manifest_ok(directory):  # lost a race against a writer that failed
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """Hold an exclusive ``flock`` on ``lock_path`` (created if needed)."""
    import fcntl

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_data(
    mnist_path: str | os.PathLike | None = None,
    split: SplitSpec | None = None,
    data_dir: str | os.PathLike | None = None,
) -> tuple[DataHandle, bool]:
    """Load, validate, normalize, split and write MNIST once; return (handle, reused).

    A second call with the same input reuses the processed files (after checking their
    checksums); damaged files are rebuilt.
    """
    split = split or SplitSpec()
    path = resolve_mnist_path(mnist_path)
    arrays = load_mnist(path)
    validate_mnist(arrays, str(path))
    check_split(arrays, split, str(path))
    fp = fingerprint(arrays, split)
    directory = Path(data_dir or default_data_dir()) / "processed" / fp
    reused = directory.exists() and _manifest_ok(directory)
    if not reused:
        # One writer at a time per data set: two runs that both find the files missing or
        # damaged must not move aside the copy the other has just written and is reading.
        # An OS file lock, released when its process dies, so a killed run never blocks one.
        with _exclusive(directory.parent / f".{directory.name}.lock"):
            reused = directory.exists() and _manifest_ok(directory)  # written meanwhile?
            if not reused:
                write_processed(split_arrays(arrays, split), directory, fp)
    sizes = json.loads((directory / "manifest.json").read_text())["sizes"]
    handle = DataHandle(
        directory=str(directory.resolve()),
        fingerprint=fp,
        train_size=sizes["train"],
        validation_size=sizes["validation"],
        test_size=sizes["test"],
    )
    return handle, reused


def check_mnist_file(
    mnist_path: str | os.PathLike | None, split: SplitSpec | None = None
) -> Path:
    """Validate the data file and split without writing anything (fails fast on bad input)."""
    path = resolve_mnist_path(mnist_path)
    arrays = load_mnist(path)
    validate_mnist(arrays, str(path))
    check_split(arrays, split or SplitSpec(), str(path))
    return path


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
    splits = Splits(*parts["train"], *parts["validation"], *parts["test"])
    _LOADED.clear()
    _LOADED[handle.fingerprint] = splits
    return splits
