"""MNIST in Keras' layout: loading, validation, splitting, processed files and their reuse
(the other formats: tests/test_own_data.py)."""

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_mnist, write_npz

from tasks.config import SplitSpec
from tasks.data.prepare import check_data, in_memory, prepare, prepare_data
from tasks.data.readers import RawData
from tasks.data.splits import load_splits, read_split
from tasks.errors import DataError


def check_arrays(arrays: dict, source: str = "mnist.npz", split: SplitSpec | None = None):
    return prepare(RawData(**arrays, source=source), split or SplitSpec())


def test_good_data_validates():
    prepared = check_arrays(synthetic_mnist())
    assert prepared.class_names == tuple(map(str, range(10))) and prepared.scaling == "pixels"


def bad(**changes):
    arrays = synthetic_mnist(n_train=50, n_test=30)
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value(arrays[key]) if callable(value) else value
    return arrays


@pytest.mark.parametrize(
    "arrays, words",
    [
        (bad(x_train=lambda x: x.reshape(50, 784)),
         "x_test has shape (30, 28, 28) but x_train has shape (50, 784)"),
        (bad(x_test=lambda x: x[:, :27, :]), "x_test has shape (30, 27, 28)"),
        (bad(y_train=lambda y: y[:10]), "y_train has shape (10,)"),
        (bad(x_train=lambda x: x.astype(np.float32) * np.nan), "NaN or infinite"),
        (bad(x_train=lambda x: x.astype(np.float32) + np.inf), "NaN or infinite"),
        (bad(y_test=lambda y: (y + 10).astype(np.int64)), "absent from the training split"),
        (bad(y_train=lambda y: y.astype(np.float32)), "expected integer or string labels"),
        (bad(x_train=lambda x: x.astype(str)), "dtype"),
        (bad(y_train=lambda y: np.zeros_like(y), y_test=lambda y: np.zeros_like(y)),
         "only one class (0)"),
    ],
)
def test_bad_arrays_are_rejected_with_a_clear_message(arrays, words):
    with pytest.raises(DataError) as info:
        check_arrays(arrays)
    assert words in str(info.value)
    assert str(info.value).startswith("mnist.npz: ")


def test_integer_images_of_a_narrow_range_are_standardized_not_divided_by_255():
    """4-bit scans stored as uint8 (0..16): /255 would put every input in 0..0.063; they are
    standardized, the manifest says why, and their fingerprint is not the /255 one. A
    training maximum of 128 or more is the 8-bit range: /255, as before."""
    from tasks.data.prepare import EIGHT_BIT_MAXIMUM, _parts

    rng = np.random.default_rng(0)
    scans = {"x_train": rng.integers(0, 17, (60, 8, 8)).astype(np.uint8),
             "y_train": np.arange(60) % 3,
             "x_test": rng.integers(0, 17, (20, 8, 8)).astype(np.uint8),
             "y_test": np.arange(20) % 3}
    prepared = check_arrays(scans)
    assert prepared.scaling == "standardize"
    assert "training maximum is 16, below 128" in prepared.scaling_reason
    x = in_memory(prepared).x_train
    assert abs(float(x.mean())) < 1e-5 and x.std() > 0.9  # not squeezed into 0..0.063
    _, normalization = _parts(prepared)
    assert normalization["kind"] == "standardize" and "below 128" in normalization["reason"]
    scans["x_train"][0, 0, 0] = EIGHT_BIT_MAXIMUM  # one pixel at 128: the 8-bit range
    eight_bit = check_arrays(scans)
    assert eight_bit.scaling == "pixels" and "x / 255" in eight_bit.scaling_reason
    assert eight_bit.fingerprint != prepared.fingerprint


def test_what_was_refused_before_is_data_now():
    """Another image shape, float pixels beyond 255 (standardized), labels beyond 9."""
    other_shape = {"x_train": np.zeros((40, 12, 10, 3), np.uint8),
                   "y_train": np.arange(40) % 4, "x_test": np.ones((10, 12, 10, 3), np.uint8),
                   "y_test": np.arange(10) % 4}
    other_shape["x_train"][:, 0, 0, 0] = np.arange(40) * 6  # 0..234: the 8-bit range
    prepared = check_arrays(other_shape)
    assert prepared.raw.kind == "image" and prepared.scaling == "pixels"
    assert in_memory(prepared).x_train.shape == (40, 360) and in_memory(prepared).classes == 4
    floats = bad(x_train=lambda x: x.astype(np.float32) + 300,
                 x_test=lambda x: x.astype(np.float32) + 300)
    assert check_arrays(floats).scaling == "standardize"
    labels = bad(y_train=lambda y: (y + 10).astype(np.int64),
                 y_test=lambda y: (y + 10).astype(np.int64))
    prepared = check_arrays(labels)
    assert prepared.class_names == tuple(str(v) for v in range(10, 20))  # mapped, in order
    np.testing.assert_array_equal(in_memory(prepared).y_train, labels["y_train"] - 10)


def test_file_problems_name_the_file(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(DataError, match="nope.npz: file not found"):
        check_data(missing)
    good = write_npz(tmp_path / "good.npz", synthetic_mnist(n_train=40, n_test=30))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match="truncated.npz: not a readable .npz"):
        check_data(truncated)
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(DataError, match="text.npz: not a readable .npz"):
        check_data(text)
    renamed = tmp_path / "renamed.npz"
    arrays = synthetic_mnist(n_train=40, n_test=30)
    np.savez(renamed, images=arrays["x_train"], labels=arrays["y_train"])
    with pytest.raises(DataError, match=r"renamed.npz: missing arrays \['x_train'"):
        check_data(renamed)


def test_subset_larger_than_data_is_rejected(mnist_file):
    with pytest.raises(DataError, match="train_samples=601: larger than the 600"):
        check_data(mnist_file, SplitSpec(train_samples=601))
    with pytest.raises(DataError, match="test_size=10000"):
        check_data(mnist_file, SplitSpec(test_size=10000))


def test_split_sizes_values_and_no_overlap():
    arrays = synthetic_mnist(n_train=100, n_test=50)
    splits = in_memory(check_arrays(arrays, split=SplitSpec(train_samples=80, test_size=30)))
    assert splits.x_train.shape == (80, 784) and splits.x_train.dtype == np.float32
    assert len(splits.x_val) == 20 and len(splits.x_test) == 30
    assert 0.0 <= splits.x_train.min() and splits.x_train.max() <= 1.0
    np.testing.assert_allclose(splits.x_test[0], arrays["x_test"][0].reshape(-1) / 255.0, 1e-6)
    np.testing.assert_array_equal(splits.x_val[0] * 255, arrays["x_test"][30].reshape(-1))
    test_rows = {row.tobytes() for row in splits.x_test}
    assert not any(row.tobytes() in test_rows for row in splits.x_val)


def test_prepare_writes_once_reuses_and_rebuilds_damaged_files(mnist_file, tmp_path):
    split = SplitSpec(test_size=200)
    handle, reused = prepare_data(mnist_file, split, tmp_path)
    assert not reused
    assert (handle.train_size, handle.validation_size, handle.test_size) == (600, 9800, 200)
    first_mtime = handle.path("train").stat().st_mtime_ns
    again, reused = prepare_data(mnist_file, split, tmp_path)
    assert reused and again == handle
    assert handle.path("train").stat().st_mtime_ns == first_mtime
    # a truncated processed file is detected by its checksum and rebuilt
    path = handle.path("train")
    path.write_bytes(path.read_bytes()[:1000])
    rebuilt, reused = prepare_data(mnist_file, split, tmp_path)
    assert not reused and rebuilt == handle
    x, y = read_split(handle.path("train"))
    assert x.shape == (600, 784) and y.shape == (600,)
    # a different subset is a different fingerprint
    other, _ = prepare_data(mnist_file, SplitSpec(test_size=200, train_samples=100), tmp_path)
    assert other.fingerprint != handle.fingerprint and other.train_size == 100
    # no temporary or moved-aside directories are left (the rebuild's lock files stay: an
    # empty file per data set, which a concurrent run may be waiting on)
    leftovers = [p for p in Path(tmp_path, "processed").iterdir()
                 if p.name.startswith(".") and not p.name.endswith(".lock")]
    assert leftovers == []


def test_load_splits_roundtrip(mnist_file, tmp_path):
    handle, _ = prepare_data(mnist_file, SplitSpec(test_size=200), tmp_path)
    splits = load_splits(handle)
    assert load_splits(handle) is splits  # once per process
    assert splits.x_train.shape == (600, 784) and splits.y_test.shape == (200,)


def test_mnist_path_environment_variable(mnist_file, monkeypatch):
    monkeypatch.setenv("MNIST_PATH", os.fspath(mnist_file))
    assert check_data(None).raw.source == str(mnist_file)
    assert check_data("mnist").raw.source == str(mnist_file)  # the name resolves to it


def _mapped_ranges(name: str) -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of files called ``name``."""
    ranges = []
    with open("/proc/self/maps") as handle:
        for line in handle:
            if line.rstrip().endswith("/" + name):
                low, high = line.split()[0].split("-")
                ranges.append((int(low, 16), int(high, 16)))
    return ranges


def test_splits_are_read_only_views_on_the_mapped_file(mnist_file, tmp_path):
    import gc

    handle, _ = prepare_data(mnist_file, SplitSpec(test_size=200), tmp_path)
    x, y = read_split(handle.path("train"))
    copied_x, copied_y = read_split(handle.path("train"), copy=True)
    gc.collect()  # the file object and Arrow's table are gone: the arrays keep the map
    assert x.dtype == np.float32 and x.shape == (600, 784) and y.dtype == np.uint8
    assert x.tobytes() == copied_x.tobytes() and y.tobytes() == copied_y.tobytes()
    assert not x.flags.writeable and not y.flags.writeable
    assert copied_x.flags.writeable  # the old way: a private copy
    ranges = _mapped_ranges("train.arrow")
    for array in (x, y):  # no copy: the arrays' memory is the file's mapping
        start, end = array.ctypes.data, array.ctypes.data + array.nbytes
        assert any(low <= start and end <= high for low, high in ranges)
    with pytest.raises(ValueError, match="read-only"):
        x[0, 0] = 1.0
    splits = load_splits(handle)
    assert not splits.x_train.flags.writeable and not splits.y_val.flags.writeable


@pytest.mark.parametrize("backend", ["compiled", "keras"])
def test_training_on_mapped_splits_is_bit_identical_to_copied_ones(mnist_file, tmp_path,
                                                                    backend):
    """The engine only reads the splits: one trial trained on the mapped (read-only) arrays
    and on private copies gives exactly the same metrics, history and weights."""
    from tasks.config import TrialConfig
    from tasks.data.splits import SPLITS, Splits
    from tasks.engine.backend_compiled import clear_trainers
    from tasks.engine.train import train_model

    handle, _ = prepare_data(mnist_file, SplitSpec(test_size=200, train_samples=300), tmp_path)
    config = TrialConfig(units=16, dropout=0.3, batch_size=64, epochs=2, learning_rate=3e-3)
    outcomes = []
    for copy in (True, False):
        parts = [read_split(handle.path(split), copy=copy) for split in SPLITS]
        splits = Splits(*parts[0], *parts[1], *parts[2])
        assert splits.x_train.flags.writeable == copy
        clear_trainers()  # each run builds its own trainer: only the arrays differ
        outcomes.append(train_model(config, splits, backend=backend,
                                    weights_path=tmp_path / f"{copy}.weights.npz"))
    copied, mapped = outcomes
    # repr: exact (shortest round-trip) floats, and NaN (metrics not computed) equals NaN
    assert repr(mapped.metrics) == repr(copied.metrics)
    assert repr(mapped.history) == repr(copied.history)
    assert mapped.best_epoch == copied.best_epoch
    with np.load(tmp_path / "True.weights.npz") as a, np.load(tmp_path / "False.weights.npz") as b:
        assert a.files == b.files
        for name in a.files:
            assert a[name].dtype == b[name].dtype and a[name].tobytes() == b[name].tobytes()
