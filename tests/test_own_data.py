"""The user's own data: every format on small synthetic files (shapes, classes, the label
mapping, normalization, the split rule, the fingerprint), each kind of bad data refused in
one line with exit status 2 and nothing written, the network following the data, and depth
as a search axis."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import synthetic_mnist, write_npz

from tasks.config import SplitSpec, TrialConfig, trial_key
from tasks.data import readers
from tasks.data.prepare import check_data, in_memory, prepare_data, stratified_order
from tasks.data.splits import dataset_info, load_splits
from tasks.errors import DataError

FASHION = Path("/usr/share/datasets/fashion-mnist")


# --------------------------------------------------------------------------------------------
# Writers of each format
# --------------------------------------------------------------------------------------------
def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    content = header + np.ascontiguousarray(array, np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(content))
    else:
        path.write_bytes(content)
    return path


def idx_folder(folder: Path, arrays: dict, compress: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in readers.IDX_FILES.items():
        write_idx(folder / stem, arrays[key], compress)
    return folder


def image_folder(folder: Path, counts: dict[str, int], size=(12, 10), mode="L",
                 odd_size: tuple[str, int] | None = None, seed: int = 0) -> Path:
    """``counts``: images per class; class c's images are filled with a shade of its own."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for index, (name, count) in enumerate(counts.items()):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
            pixels = np.clip(40 * index + rng.integers(0, 30, shape), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels, mode)
            if odd_size == (name, i):
                image = image.resize((size[0] * 2, size[1] * 2))
            image.save(folder / name / f"{i:03d}.png")
    return folder


def table(path: Path, rows: int = 200, seed: int = 0, **columns) -> Path:
    rng = np.random.default_rng(seed)
    labels = np.array(["cat", "dog", "bird"])[rng.integers(0, 3, rows)]
    frame = pd.DataFrame({"size": rng.normal(10, 3, rows) + (labels == "dog") * 5,
                          "weight": rng.normal(-2, 0.5, rows), "constant": np.full(rows, 7.0),
                          "legs": rng.integers(2, 5, rows), "label": labels})
    for name, values in columns.items():
        if values is None:
            del frame[name]
        else:
            frame[name] = values
    frame.to_parquet(path)
    return path


# --------------------------------------------------------------------------------------------
# Each format
# --------------------------------------------------------------------------------------------
def test_a_keras_npz_of_colour_images_and_four_classes(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {"x_train": rng.integers(0, 256, (80, 12, 10, 3), np.uint8),
              "y_train": np.arange(80) % 4,
              "x_test": rng.integers(0, 256, (20, 12, 10, 3), np.uint8),
              "y_test": np.arange(20) % 4}
    path = write_npz(tmp_path / "colour.npz", arrays)
    handle, _ = prepare_data(path, None, tmp_path / "data")
    assert (handle.features, handle.classes) == (360, 4)
    assert (handle.train_size, handle.validation_size, handle.test_size) == (80, 4, 16)  # 80 %
    info = dataset_info(handle)
    assert info.kind == "image" and info.image_shape == (12, 10, 3)
    assert info.class_names == ("0", "1", "2", "3") and not info.named_classes
    splits = load_splits(handle)
    np.testing.assert_allclose(splits.x_test[0], arrays["x_test"][0].reshape(-1) / 255.0, 1e-6)
    np.testing.assert_array_equal(splits.y_val, arrays["y_test"][16:])


def test_idx_files_give_the_arrays_and_the_fingerprint_of_the_same_data_as_an_npz(tmp_path):
    arrays = synthetic_mnist(n_train=60, n_test=40, seed=2)
    npz = write_npz(tmp_path / "same.npz", arrays)
    gz = idx_folder(tmp_path / "gz", arrays)
    plain = idx_folder(tmp_path / "plain", arrays, compress=False)
    handles = [prepare_data(source, SplitSpec(test_size=30), tmp_path / "data")[0]
               for source in (npz, gz, plain)]
    assert len({h.fingerprint for h in handles}) == 1  # same data, one processed copy
    raw = readers.read_data(gz)
    for key in readers.KERAS_LAYOUT:
        np.testing.assert_array_equal(getattr(raw, key), arrays[key])
    # a path to one of the files reads its folder
    assert readers.read_data(gz / "train-images-idx3-ubyte.gz").source == str(gz)


def test_an_image_folder_keeps_its_class_names_and_is_split_stratified(tmp_path):
    counts = {"cats": 40, "dogs": 30, "zebras": 30}
    folder = image_folder(tmp_path / "pets", counts, odd_size=("dogs", 3))
    prepared = check_data(folder)
    assert prepared.class_names == ("cats", "dogs", "zebras")
    assert prepared.raw.x_train.shape == (100, 10, 12)  # grey, the most common size
    handle, _ = prepare_data(folder, None, tmp_path / "data")
    assert (handle.train_size, handle.validation_size, handle.test_size) == (70, 10, 20)
    splits = load_splits(handle)
    # stratified: each class in proportion to its size in every split
    assert np.bincount(splits.y_test).tolist() == [8, 6, 6]
    assert np.bincount(splits.y_val).tolist() == [4, 3, 3]
    info = dataset_info(handle)
    assert info.class_names == ("cats", "dogs", "zebras") and info.named_classes
    # the same folder in colour: (h, w, 3) images
    rgb = check_data(image_folder(tmp_path / "rgb", {"a": 5, "b": 5}, mode="RGB"))
    assert rgb.raw.x_train.shape == (10, 10, 12, 3)
    # counts instead of fractions
    handle, _ = prepare_data(folder, SplitSpec(test_size=10, validation_size=5), tmp_path / "d")
    assert (handle.train_size, handle.validation_size, handle.test_size) == (85, 5, 10)


def test_the_stratified_order_keeps_every_prefix_proportional():
    labels = np.repeat([0, 1, 2], [500, 300, 200])
    order = stratified_order(labels, 0)
    assert sorted(order) == list(range(1000))
    for prefix in (100, 250, 700):
        counts = np.bincount(labels[order[:prefix]], minlength=3)
        np.testing.assert_allclose(counts, np.array([0.5, 0.3, 0.2]) * prefix, atol=1.01)
    assert not np.array_equal(order, stratified_order(labels, 1))  # seeded


def test_a_parquet_table_maps_string_labels_and_standardizes_with_the_training_stats(tmp_path):
    path = table(tmp_path / "animals.parquet")
    handle, _ = prepare_data(path, None, tmp_path / "data")
    info = dataset_info(handle)
    assert info.kind == "table" and info.image_shape is None
    assert info.class_names == ("bird", "cat", "dog")  # sorted
    assert info.feature_names == ("size", "weight", "constant", "legs")
    assert (handle.features, handle.classes) == (4, 3)
    assert (handle.train_size, handle.validation_size, handle.test_size) == (140, 20, 40)
    splits = load_splits(handle)
    np.testing.assert_allclose(splits.x_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(splits.x_train.std(axis=0)[[0, 1, 3]], 1.0, atol=1e-4)
    assert (splits.x_train[:, 2] == 0).all() and (splits.x_test[:, 2] == 0).all()  # std 1
    manifest = json.loads((Path(handle.directory) / "manifest.json").read_text())
    normalization = manifest["dataset"]["normalization"]
    assert normalization["kind"] == "standardize" and normalization["std"][2] == 1.0
    frame = pd.read_parquet(path)
    labels = np.array(["bird", "cat", "dog"])
    # the rows of every split, mapped back, are rows of the table with their own labels
    x = frame[["size", "weight", "constant", "legs"]].to_numpy()
    restored = splits.x_test * np.array(normalization["std"]) + np.array(normalization["mean"])
    for row, label in zip(restored, splits.y_test, strict=True):
        match = np.flatnonzero(np.abs(x - row).max(axis=1) < 1e-3)
        assert len(match) == 1 and frame["label"][match[0]] == labels[label]


def test_the_data_the_command_line_checked_is_not_read_again_unless_it_changed(
        tmp_path, monkeypatch):
    """check_data (before Prefect starts) hands what it read to the run's data step: one
    read, the same fingerprint; once only (a second data step reads); a file rewritten since
    the check, or another split, is read again."""
    reads = []
    read_source = readers.read_source
    monkeypatch.setattr(readers, "read_source",
                        lambda *args: reads.append(args[0]) or read_source(*args))
    path = table(tmp_path / "animals.parquet")
    checked = check_data(path)
    handle, _ = prepare_data(path, None, tmp_path / "data")
    assert len(reads) == 1 and Path(handle.directory).name == checked.fingerprint
    prepare_data(path, None, tmp_path / "data")
    assert len(reads) == 2  # taken by the first data step

    checked = check_data(path)
    table(path, seed=1)  # rewritten after the check: same name, same size
    handle, _ = prepare_data(path, None, tmp_path / "data")
    assert len(reads) == 4 and Path(handle.directory).name != checked.fingerprint

    check_data(path)
    prepare_data(path, SplitSpec(test_size=0.3), tmp_path / "data")
    assert len(reads) == 6


def test_a_csv_table_is_the_same_data_as_the_same_table_in_parquet(tmp_path):
    """The table of the Parquet test as CSV (and gzipped CSV): the same features, classes,
    splits and fingerprint, so the same trial keys; a boolean and a missing feature value
    are read as such."""
    parquet = table(tmp_path / "animals.parquet")
    frame = pd.read_parquet(parquet)
    frame.to_csv(tmp_path / "animals.csv", index=False)
    frame.to_csv(tmp_path / "animals.csv.gz", index=False)
    expected = check_data(parquet)
    for name in ("animals.csv", "animals.csv.gz"):
        checked = check_data(tmp_path / name)
        assert checked.fingerprint == expected.fingerprint, name
        assert checked.class_names == ("bird", "cat", "dog")
        assert checked.raw.feature_names == ("size", "weight", "constant", "legs")
        np.testing.assert_array_equal(checked.raw.x_train, expected.raw.x_train)
        for part in ("train", "validation", "test"):
            np.testing.assert_array_equal(checked.rows[part][1], expected.rows[part][1])
    handle, _ = prepare_data(tmp_path / "animals.csv", None, tmp_path / "data")
    assert Path(handle.directory).name == expected.fingerprint
    assert (handle.train_size, handle.validation_size, handle.test_size) == (140, 20, 40)

    flags = tmp_path / "flags.csv"
    flags.write_text("big,size,label\ntrue,1.5,a\nfalse,2.5,b\ntrue,3.5,a\nfalse,,b\n")
    raw = readers.read_source(flags)
    assert raw.feature_names == ("big", "size") and list(raw.y_train) == ["a", "b", "a", "b"]
    np.testing.assert_array_equal(raw.x_train[:3], [[1, 1.5], [0, 2.5], [1, 3.5]])
    assert np.isnan(raw.x_train[3, 1])  # a missing value: validation names it


def test_a_tables_categorical_labels_are_their_values(tmp_path):
    path = table(tmp_path / "c.parquet")
    frame = pd.read_parquet(path)
    frame["label"] = frame["label"].astype("category")
    frame.to_parquet(path)
    assert pa.types.is_dictionary(pq.read_schema(path).field("label").type)
    assert check_data(path).class_names == ("bird", "cat", "dog")


def test_a_tables_split_column_and_another_label_column(tmp_path):
    rows = 60
    split = np.array(["train"] * 40 + ["validation"] * 8 + ["test"] * 12)
    path = table(tmp_path / "t.parquet", rows, kind=np.arange(rows) % 2, label=None,
                 split=split)
    handle, _ = prepare_data(path, None, tmp_path / "data", label="kind")
    assert (handle.train_size, handle.validation_size, handle.test_size) == (40, 8, 12)
    assert dataset_info(handle).class_names == ("0", "1")  # integer labels 0..1: as they are


def test_names_resolve_to_the_local_copies_and_an_existing_path_wins(tmp_path, monkeypatch,
                                                                      mnist_file):
    monkeypatch.setenv("MNIST_PATH", str(mnist_file))
    assert readers.resolve_source("mnist") == mnist_file
    assert readers.resolve_source("MNIST") == mnist_file
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(readers, "known_copies", lambda name: [tmp_path / "nowhere"])
    with pytest.raises(DataError) as info:
        readers.resolve_source("fashion-mnist")
    assert str(info.value).startswith("--data fashion-mnist: no local copy of Fashion-MNIST: "
                                      "install it with `apt-get install dataset-fashion-mnist`")
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "fashion-mnist", "wb") as handle:  # a file of that name, here
        np.savez(handle, **synthetic_mnist(n_train=20, n_test=20))
    assert readers.resolve_source("fashion-mnist") == Path("fashion-mnist")  # the path wins
    with pytest.raises(DataError, match=r"^mnst: file not found \(and not a known name: "):
        readers.resolve_source("mnst")


# --------------------------------------------------------------------------------------------
# Bad data: one line, exit status 2, nothing written
# --------------------------------------------------------------------------------------------
def bad_sources(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (the --data arguments, the exact error line)."""
    from PIL import Image

    tmp_path.mkdir(parents=True, exist_ok=True)
    arrays = synthetic_mnist(n_train=50, n_test=20)
    short = dict(arrays, y_train=arrays["y_train"][:40])
    lengths = write_npz(tmp_path / "lengths.npz", short)
    absent = dict(arrays, y_train=np.where(arrays["y_train"] == 3, 2, arrays["y_train"]))
    absent_path = write_npz(tmp_path / "absent.npz", absent)
    nan = table(tmp_path / "nan.parquet", weight=np.r_[np.nan, np.ones(199)])
    one = table(tmp_path / "one.parquet", label=np.array(["cat"] * 200))
    text = table(tmp_path / "text.parquet", colour=np.array(["red"] * 200))
    no_label = table(tmp_path / "nolabel.parquet", label=None)
    empty = tmp_path / "empty"
    (empty / "cats").mkdir(parents=True)
    unreadable = image_folder(tmp_path / "broken", {"a": 3, "b": 3})
    (unreadable / "b" / "002.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    Image.new("L", (4, 4)).save(unreadable / "a" / "ok.png")
    other = tmp_path / "data.json"
    other.write_text('{"a": [1, 2], "label": [0, 1]}\n')
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b,label\n1,2,0\n3,4\n")
    unlabelled = tmp_path / "unlabelled.csv"
    unlabelled.write_text("a,b,label\n1,2,0\n5,6,\n")
    header = tmp_path / "header.csv"
    header.write_text("a,b,label\n")
    return {
        "lengths": ([str(lengths)], f"error: {lengths}: y_train has shape (40,); expected "
                                    "(50,) labels, one per image of x_train"),
        "absent class": ([str(absent_path)], f"error: {absent_path}: class(es) '3' absent from "
                                             "the training split; every class needs training "
                                             "rows"),
        "NaN": ([str(nan)], f"error: {nan}: 1 NaN or infinite values in the feature "
                            "column(s) weight"),
        "one class": ([str(one)], f"error: {one}: only one class (cat); a classifier needs at "
                                  "least two"),
        "text column": ([str(text)], f"error: {text}: non-numeric feature columns: colour "
                                     "(large_string); features must be numbers (encode or drop "
                                     "those columns)"),
        "label column": ([str(no_label)], f"error: {no_label}: no label column 'label' "
                                          "(columns: size, weight, constant, legs); name it "
                                          "with --label COLUMN"),
        "empty folder": ([str(empty)], f"error: {empty}: no images (.png, .jpg, .jpeg, .bmp, "
                                       ".gif) in class subfolders: an image folder holds one "
                                       "subfolder per class (Keras' image_dataset_from_directory "
                                       "layout)"),
        "unreadable image": ([str(unreadable)], f"error: {unreadable / 'b' / '002.png'}: not a "
                                                "readable image ("),
        "other format": ([str(other)], f"error: {other}: not a data file this pipeline reads: "
                                       "a Keras-layout .npz, a Parquet table, a CSV table (.csv, "
                                       ".csv.gz), a folder of IDX files, or a folder of images "
                                       "with one subfolder per class"),
        "ragged CSV": ([str(ragged)], f"error: {ragged}: not a readable CSV file: CSV parse "
                                      "error: Expected 3 columns, got 2: 3,4"),
        "CSV label missing": ([str(unlabelled)], f"error: {unlabelled}: the label column "
                                                 "'label' has 1 missing values"),
        "CSV header only": ([str(header)], f"error: {header}: no rows (columns only: a, b, "
                                           "label)"),
    }


def test_bad_data_is_one_line_exit_2_and_nothing_written(tmp_path, capsys):
    from flows import grid, train
    from tasks.cli import run_cli

    sources = bad_sources(tmp_path / "sources")
    for name, (data, line) in sources.items():
        for main in (train.main, grid.main):
            out = tmp_path / "out" / name
            code = run_cli(main, ["--data", *data, "--reports-dir", str(out / "reports"),
                                  "--data-dir", str(out / "data")])
            err = capsys.readouterr().err
            assert code == 2, (name, err)
            assert err.count("\n") == 1 and err.startswith(line), (name, err)
            assert not out.exists() or not any(out.rglob("*")), name


def test_today_the_network_follows_the_data(tmp_path):
    """Input width and classes from the data; a trained trial's weights have those shapes."""
    from tasks.engine.train import train_model

    prepared = check_data(table(tmp_path / "t.parquet"))
    splits = in_memory(prepared)
    assert splits.classes == 3 and splits.x_train.shape[1] == 4
    for backend in ("compiled", "keras"):
        outcome = train_model(TrialConfig(units=8, epochs=1, batch_size=32), splits, backend)
        assert outcome.param_count == 4 * 8 + 8 + 8 * 3 + 3
        assert outcome.metrics["test_accuracy"] >= 0


# --------------------------------------------------------------------------------------------
# Depth
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_layers_of_units_have_the_parameter_count_of_the_formula(layers, tmp_path):
    from tasks.engine.model import build_model
    from tasks.engine.train import train_model

    splits = in_memory(check_data(write_npz(tmp_path / "m.npz", synthetic_mnist(300, 100))))
    d, u, k = 784, 32, 10
    expected = d * u + u + (layers - 1) * (u * u + u) + u * k + k
    config = TrialConfig(units=u, layers=layers, epochs=3, batch_size=25, dropout=0.1)
    assert build_model(config, d, k).count_params() == expected
    compiled = train_model(config, splits, "compiled", weights_path=tmp_path / "c.weights.npz")
    keras = train_model(config, splits, "keras")
    assert compiled.param_count == keras.param_count == expected
    assert len(compiled.history) == 3 and compiled.metrics["val_accuracy"] > 0.5  # it learns
    # the compiled backend's weights load into the Keras model of the same config
    from tasks.engine.model import load_model, predict_probabilities

    model = load_model(config, tmp_path / "c.weights.npz")
    assert predict_probabilities(model, splits.x_test).shape == (len(splits.x_test), 10)


def test_one_layer_keeps_every_key_and_more_layers_have_their_own():
    one, two = TrialConfig(), TrialConfig(layers=2)
    assert "layers" not in one.canonical_json() and '"layers": 2' in two.canonical_json()
    assert trial_key(one, "fp") != trial_key(two, "fp")
    assert trial_key(TrialConfig(layers=1), "fp") == trial_key(one, "fp")


@pytest.mark.usefixtures("prefect_harness")
def test_a_grid_searches_depth_and_reports_it(mnist_file, tmp_path):
    from flows.grid import grid_search
    from tasks.run_options import RunOptions
    from tasks.search.space import make_space

    space = make_space(units=[8], dropout=[0.0], layers=[1, 2], batch_size=[100], epochs=1)
    assert space.size == 2 and "layers {1, 2}" in space.describe()
    folder = Path(grid_search(space=space, run=RunOptions(data=str(mnist_file),
                                                          reports_dir=str(tmp_path))))
    trials = pd.read_parquet(folder / "trials.parquet")
    assert sorted(trials["layers"]) == [1, 2]
    counts = dict(zip(trials["layers"], trials["param_count"], strict=True))
    assert counts[2] - counts[1] == 8 * 8 + 8
    assert "| layers" in (folder / "report.md").read_text().replace("|   layers", "| layers")


# --------------------------------------------------------------------------------------------
# Fashion-MNIST from its Debian package (CI installs it)
# --------------------------------------------------------------------------------------------
@pytest.mark.slow  # real data: the end-to-end suite
@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST not installed: apt-get install "
                                                 "dataset-fashion-mnist (.ci/run does)")
@pytest.mark.usefixtures("prefect_harness")
def test_fashion_mnist_by_name_from_its_idx_files(tmp_path):
    from flows.train import baseline
    from tasks.run_options import RunOptions

    handle, _ = prepare_data("fashion-mnist", None, tmp_path / "data")
    info = dataset_info(handle)
    assert info.name == "Fashion-MNIST" and info.class_names[0] == "T-shirt/top"
    assert (handle.train_size, handle.validation_size, handle.test_size) == (60000, 2000, 8000)
    folder = Path(baseline(config=TrialConfig(epochs=1), run=RunOptions(
        data="fashion-mnist", train_samples=5000, reports_dir=str(tmp_path),
        data_dir=str(tmp_path / "data"))))
    report = (folder / "report.md").read_text()
    assert report.startswith("# Baseline: Fashion-MNIST with a fully connected network")
    assert "| Ankle boot" in report.replace("|   ", "| ")
    classes = pd.read_parquet(folder / "classes.parquet")
    assert classes["name"].tolist() == list(info.class_names)
    assert classes["test images"].sum() == 8000 and classes["test accuracy"].mean() > 0.5


def test_figures_stay_readable_with_many_named_classes(tmp_path, monkeypatch):
    """100 classes: the confusion matrix labels every k-th class and writes no numbers; each
    image's bars are the 11 most probable classes and the true one."""
    from conftest import spy_figures

    from tasks.reports.figures import baseline as plots

    figures = spy_figures(monkeypatch)
    rng = np.random.default_rng(0)
    names = [f"species {i:03d}" for i in range(100)]
    truth = rng.integers(0, 100, 500)
    plots.plot_confusion(truth, (truth + rng.integers(0, 2, 500)) % 100,
                         tmp_path / "confusion.png", names)
    probabilities = rng.dirichlet(np.ones(100), 3)
    plots.plot_predictions(probabilities, rng.random((3, 8, 8, 3)), [5, 50, 99],
                           tmp_path / "first.png", "First 3", names, (8, 8, 3))
    confusion, first = figures[0][1], figures[1][1]
    ax = confusion.axes[0]
    assert len(ax.texts) == 0 and len(ax.get_xticklabels()) == 34  # every 3rd of 100
    bars = [a for a in first.axes if a.get_title().startswith("true")]
    for ax, true in zip(bars, ["species 005", "species 050", "species 099"], strict=True):
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert len(labels) in (11, 12) and true in labels  # the true class is always shown
