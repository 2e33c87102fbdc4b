"""Predict with a run's model (``flows/predict.py``): every input format, with and without
labels, read as the model takes it; every mismatch one line, exit status 2, nothing written;
``latest``; the model's own test split reproduced; the report; the inbox scoring each new file
once, across overlapping runs, and recording a file that does not fit once. On tiny
synthetic data and models (trained here, exported as a run exports them); the end-to-end
test on the real MNIST is marked ``slow``."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import PROJECT_ROOT, synthetic_mnist, write_npz

from tasks.errors import DataError, UserError
from tasks.predict.inputs import read_for_model
from tasks.predict.model import find_model, latest_report

flows = pytest.mark.usefixtures("prefect_harness")
pytestmark = pytest.mark.xdist_group("predict")
PHOTO_CLASSES = ("blue", "green", "red")
COLOURS = {"blue": (20, 40, 200), "green": (30, 180, 40), "red": (210, 30, 30)}


# --------------------------------------------------------------------------------------------
# Data and models
# --------------------------------------------------------------------------------------------
def photo(colour: str, rng, size=(8, 6)):
    from PIL import Image

    pixels = np.clip(np.array(COLOURS[colour]) + rng.integers(-40, 40, (size[1], size[0], 3)),
                     0, 255)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def animals(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = np.array(["bird", "cat", "dog"])[rng.integers(0, 3, rows)]
    shift = np.array([{"bird": 0.0, "cat": 2.0, "dog": 4.0}[c] for c in labels])
    return pd.DataFrame({"size": rng.normal(10, 3, rows) + 3 * shift,
                         "weight": rng.normal(-2, 0.5, rows) + 0.4 * shift,
                         "legs": rng.integers(2, 5, rows), "label": labels})


def write_idx(path: Path, array: np.ndarray) -> Path:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + np.ascontiguousarray(array, np.uint8).tobytes()))
    return path


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict:
    """Three tiny trained and exported models, each in a report folder: digits (28x28 uint8
    npz), animals (a CSV table, string labels) and photos (a folder of RGB images)."""
    from tasks.config import TrialConfig
    from tasks.data.prepare import prepare_data
    from tasks.export.exporter import Selection, export_model
    from tasks.trial.task import train_trial

    root = tmp_path_factory.mktemp("predict")
    digits = write_npz(root / "digits.npz", synthetic_mnist(n_train=400, n_test=200, seed=3))
    table = root / "animals.csv"
    animals(240, 0).to_csv(table, index=False)
    rng = np.random.default_rng(0)
    for name in PHOTO_CLASSES:
        (root / "photos" / name).mkdir(parents=True)
        for i in range(12):
            photo(name, rng).save(root / "photos" / name / f"{i:02d}.png")
    reports, data_dir = root / "reports", root / "data"
    models = {}
    for key, source, folder, config in (
            ("digits", digits, "grid-20250101-000001-aaaa", TrialConfig(units=32, epochs=3,
                                                                        batch_size=50)),
            ("animals", table, "random-search-20250101-000002-bbbb",
             TrialConfig(units=16, epochs=3, batch_size=20, learning_rate=0.01)),
            ("photos", root / "photos", "baseline-20250101-000003-cccc",
             TrialConfig(units=8, epochs=3, batch_size=10))):
        handle, _ = prepare_data(str(source), None, data_dir)
        result = train_trial(config.model_copy(update={"dropout": 0.0}), handle, "compiled",
                             str(data_dir))
        export_model(result, handle, reports / folder / "model", Selection("grid", 1))
        models[key] = reports / folder
    return {"root": root, "digits": digits, "table": table, "photos": root / "photos",
            "reports": reports, "models": models}


def model_of(made, name):
    return find_model(str(made["models"][name]))


# --------------------------------------------------------------------------------------------
# Each input format, with and without labels
# --------------------------------------------------------------------------------------------
def test_npz_inputs_x_or_x_test_with_or_without_labels(made, tmp_path):
    model = model_of(made, "digits")
    arrays = synthetic_mnist(n_train=20, n_test=30, seed=9)
    only_x = write_npz(tmp_path / "x.npz", {"x": arrays["x_test"][:7]})
    labelled = write_npz(tmp_path / "xy.npz", {"x": arrays["x_test"][:7],
                                               "y": arrays["y_test"][:7]})
    keras = write_npz(tmp_path / "keras.npz", arrays)  # x_train is ignored
    test_only = write_npz(tmp_path / "test.npz", {"x_test": arrays["x_test"],
                                                  "y_test": arrays["y_test"]})
    got = read_for_model(model, only_x)
    assert got.x.shape == (7, 28, 28) and got.x.dtype == np.uint8 and got.labels is None
    assert list(got.files) == ["x.npz"] * 7 and list(got.rows) == list(range(7))
    got = read_for_model(model, labelled)
    np.testing.assert_array_equal(got.labels, arrays["y_test"][:7])
    for path in (keras, test_only):
        got = read_for_model(model, path)
        assert len(got) == 30 and got.what.startswith("x_test")
        np.testing.assert_array_equal(got.x, arrays["x_test"])
        np.testing.assert_array_equal(got.labels, arrays["y_test"])


def test_idx_images_with_or_without_their_labels_and_an_idx_folder(made, tmp_path):
    model = model_of(made, "digits")
    arrays = synthetic_mnist(n_train=20, n_test=15, seed=4)
    folder = tmp_path / "idx"
    folder.mkdir()
    images = write_idx(folder / "t10k-images-idx3-ubyte.gz", arrays["x_test"])
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", arrays["y_test"])
    write_idx(folder / "train-images-idx3-ubyte.gz", arrays["x_train"])
    write_idx(folder / "train-labels-idx1-ubyte.gz", arrays["y_train"])
    got = read_for_model(model, images)  # the file by itself, its labels beside it
    np.testing.assert_array_equal(got.x, arrays["x_test"])
    np.testing.assert_array_equal(got.labels, arrays["y_test"])
    got = read_for_model(model, folder)  # a folder: its test images
    assert len(got) == 15 and got.labels is not None
    alone = tmp_path / "alone"
    alone.mkdir()
    write_idx(alone / "new-images-idx3-ubyte.gz", arrays["x_test"][:4])
    got = read_for_model(model, alone / "new-images-idx3-ubyte.gz")
    assert len(got) == 4 and got.labels is None


def test_image_folders_with_or_without_class_subfolders_and_one_image_file(made, tmp_path):
    from PIL import Image

    model = model_of(made, "photos")
    rng = np.random.default_rng(5)
    flat = tmp_path / "flat"
    flat.mkdir()
    photo("red", rng).save(flat / "a.png")
    photo("blue", rng, size=(16, 12)).save(flat / "b.jpg")  # another size: resized
    Image.fromarray(np.full((6, 8), 90, np.uint8), "L").save(flat / "grey.png")  # -> RGB
    got = read_for_model(model, flat)
    assert got.x.shape == (3, 6, 8, 3) and got.labels is None
    assert list(got.files) == ["a.png", "b.jpg", "grey.png"]
    assert "converted with PIL to RGB, 8x6" in got.conversion
    labelled = tmp_path / "labelled"
    for sub, colour in (("green", "green"), ("2", "red")):  # a class name, a class index
        (labelled / sub).mkdir(parents=True)
        photo(colour, rng).save(labelled / sub / "x.png")
    got = read_for_model(model, labelled)
    assert list(got.files) == ["2/x.png", "green/x.png"]
    assert got.labels.tolist() == [2, 1]
    one = read_for_model(model, flat / "a.png")
    assert one.x.shape == (1, 6, 8, 3) and list(one.files) == ["a.png"]
    # a model trained on arrays takes image files in its own shape: grey 28x28
    digit = tmp_path / "digit.png"
    Image.fromarray(synthetic_mnist(n_train=1, n_test=1)["x_test"][0]).resize((56, 56)).save(
        digit)
    got = read_for_model(model_of(made, "digits"), digit)
    assert got.x.shape == (1, 28, 28) and got.x.dtype == np.uint8


def test_fashion_names_take_class_indices_and_digit_names_their_own():
    from tasks.predict.inputs import class_indices

    fashion = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")
    assert class_indices(np.array(["3", "Bag"]), fashion, "x").tolist() == [3, 8]
    assert class_indices(np.array([9, 0], np.uint8), fashion, "x").tolist() == [9, 0]
    assert class_indices(np.array([12, 10]), ("10", "11", "12"), "x").tolist() == [2, 0]
    with pytest.raises(DataError, match=r"unknown label\(s\) '0': not a class of the model "
                                        r"\(10, 11, 12\)$"):
        class_indices(np.array([0]), ("10", "11", "12"), "x")


def test_tables_with_or_without_labels_csv_or_parquet(made, tmp_path):
    model = model_of(made, "animals")
    frame = animals(9, 7)
    frame.drop(columns="label").to_csv(tmp_path / "new.csv", index=False)
    frame.to_parquet(tmp_path / "new.parquet")
    got = read_for_model(model, tmp_path / "new.csv")
    assert got.x.shape == (9, 3) and got.x.dtype == np.float64 and got.labels is None
    got = read_for_model(model, tmp_path / "new.parquet")
    assert got.labels.tolist() == [("bird", "cat", "dog").index(c) for c in frame["label"]]
    np.testing.assert_array_equal(got.x, frame[["size", "weight", "legs"]].to_numpy(float))


# --------------------------------------------------------------------------------------------
# What does not fit: one line naming it
# --------------------------------------------------------------------------------------------
def mismatches(made, root: Path) -> dict[str, tuple[str, Path, str]]:
    """name -> (model, input, the start of the line after the input's path)."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    arrays = synthetic_mnist(n_train=10, n_test=10)
    frame = animals(6, 3)
    cases = {}

    def npz(name, **values):
        return write_npz(root / f"{name}.npz", values)

    cases["another image size"] = ("digits", npz("small", x=arrays["x_test"][:, :20, :20]),
                                   "x holds 20x20 images; the model takes 28x28 uint8 images "
                                   "(arrays are not resized)")
    cases["channels"] = ("digits", npz("rgb", x=np.repeat(arrays["x_test"][..., None], 3, -1)),
                         "x holds 28x28 images of 3 channels; the model takes 28x28 uint8 "
                         "images")
    cases["float pixels"] = ("digits", npz("floats", x=arrays["x_test"] / 255.0),
                             "x holds float64 values; the model takes 28x28 uint8 images "
                             "(integers 0..255")
    cases["unknown label"] = ("digits", npz("labels", x=arrays["x_test"],
                                            y=np.r_[arrays["y_test"][:-1], 11]),
                              "unknown label(s) '11': not a class of the model (0, 1, 2")
    cases["a table for images"] = ("digits", made["table"], "a table; the model takes 28x28")
    frame.drop(columns="weight").to_csv(root / "missing.csv", index=False)
    cases["missing column"] = ("animals", root / "missing.csv",
                               "missing feature column(s) weight; the model takes size, "
                               "weight, legs")
    frame.assign(colour="red").to_csv(root / "extra.csv", index=False)
    cases["extra column"] = ("animals", root / "extra.csv", "extra column(s) colour; the model "
                             "takes the feature columns size, weight, legs")
    frame[["weight", "size", "legs", "label"]].to_csv(root / "order.csv", index=False)
    cases["reordered columns"] = ("animals", root / "order.csv", "the feature columns are in "
                                  "another order (weight, size, legs); the model takes them as "
                                  "size, weight, legs")
    frame.assign(weight=np.r_[np.nan, frame["weight"][1:]]).to_csv(root / "nan.csv",
                                                                   index=False)
    cases["NaN"] = ("animals", root / "nan.csv", "1 NaN or infinite values in the feature "
                    "column(s) weight")
    frame.assign(label=["fox"] + list(frame["label"][1:])).to_csv(root / "fox.csv", index=False)
    cases["unknown table label"] = ("animals", root / "fox.csv", "unknown label(s) 'fox': not "
                                    "a class of the model (bird, cat, dog) or a class index "
                                    "0..2")
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(root / "image.png")
    cases["an image for a table"] = ("animals", root / "image.png", "images; the model takes "
                                     "rows of 3 feature columns (size, weight, legs)")
    cases["images for a table"] = ("animals", made["digits"], "x_test (with y_test) holds "
                                   "28x28 images; the model takes rows of 3 feature columns")
    (root / "folder" / "purple").mkdir(parents=True)
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(root / "folder" / "purple" / "p.png")
    cases["unknown folder"] = ("photos", root / "folder", "unknown label(s) 'purple': not a "
                               "class of the model (blue, green, red) or a class index 0..2")
    return cases


def test_every_mismatch_is_one_line_exit_2_and_nothing_written(made, tmp_path, capsys):
    from flows import predict
    from tasks.cli import run_cli

    for name, (model, data, words) in mismatches(made, tmp_path / "inputs").items():
        with pytest.raises(UserError) as info:
            read_for_model(model_of(made, model), data)
        assert str(info.value) == f"{data}: {words}" or str(info.value).startswith(
            f"{data}: {words}"), (name, str(info.value))
        out = tmp_path / "out" / name.replace(" ", "-")
        code = run_cli(predict.main, ["--model", str(made["models"][model]), "--data",
                                      str(data), "--reports-dir", str(out)])
        err = capsys.readouterr().err
        assert code == 2, (name, err)
        assert err.count("\n") == 1 and err.startswith(f"error: {data}: {words}"), (name, err)
        assert not out.exists(), name


def test_a_mismatch_on_the_command_line_in_a_process_of_its_own(made, tmp_path):
    arrays = synthetic_mnist(n_train=10, n_test=10)
    small = write_npz(tmp_path / "small.npz", {"x": arrays["x_test"][:, :20, :20]})
    out = tmp_path / "reports"
    done = subprocess.run([sys.executable, "flows/predict.py", "--model",
                           str(made["models"]["digits"]), "--data", str(small),
                           "--reports-dir", str(out)], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == (f"error: {small}: x holds 20x20 images; the model takes 28x28 uint8 "
                           "images (arrays are not resized)\n")
    assert done.stdout == "" and not out.exists()


def test_the_models_test_split_needs_the_models_data(made, tmp_path):
    other = write_npz(tmp_path / "other.npz", synthetic_mnist(n_train=400, n_test=200, seed=8))
    with pytest.raises(DataError, match=r"its fingerprint \w+ is not the model's data \(\w+\): "
                                        r"--split test needs the data the model was trained on"):
        read_for_model(model_of(made, "digits"), other, "test")


def test_data_or_inbox_and_a_model_that_is_not_there(made, tmp_path, capsys):
    from flows import predict
    from tasks.cli import run_cli

    for argv, line in (
            (["--model", "latest"], "error: give --data INPUT or --inbox DIR (one of them)"),
            (["--data", str(made["digits"]), "--inbox", str(tmp_path)], "error: give --data"),
            (["--inbox", str(tmp_path), "--split", "test"], "error: --split test needs --data"),
            (["--model", str(tmp_path / "nope"), "--data", str(made["digits"])],
             f"error: --model {tmp_path / 'nope'}: not found"),
            (["--model", str(tmp_path), "--data", str(made["digits"])],
             f"error: --model {tmp_path}: no model.keras in it or in its model/"),
            (["--data", str(made["digits"]), "--reports-dir", str(tmp_path / "none")],
             "error: --model latest: no report folder with a model/ under")):
        assert run_cli(predict.main, argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(line) and err.count("\n") == 1, (argv, err)


# --------------------------------------------------------------------------------------------
# latest
# --------------------------------------------------------------------------------------------
def test_latest_is_the_newest_report_with_a_model_predicts_own_left_out(made, tmp_path):
    import shutil

    reports = tmp_path / "reports"
    for name in ("grid-20250101-000001-aaaa", "tune-20250301-000000-dddd"):
        shutil.copytree(made["models"]["digits"], reports / name)
    (reports / "baseline-20250401-000000-eeee").mkdir()  # no model/
    shutil.copytree(made["models"]["digits"], reports / "predict-20250501-000000-ffff")
    shutil.copytree(made["models"]["digits"], reports / ".staging-host-1-grid-20250601-000000-a")
    assert latest_report(reports) == reports / "tune-20250301-000000-dddd"
    chosen = find_model("latest", reports)
    assert chosen.folder == reports / "tune-20250301-000000-dddd" / "model"
    assert chosen.report == reports / "tune-20250301-000000-dddd"
    # a report folder, a model folder and a model.keras file name the same model
    for given in (reports / "tune-20250301-000000-dddd",
                  reports / "tune-20250301-000000-dddd" / "model",
                  reports / "tune-20250301-000000-dddd" / "model" / "model.keras"):
        assert find_model(str(given)).model_key == chosen.model_key
    with pytest.raises(UserError, match="no report folder with a model/ under"):
        latest_report(tmp_path / "empty")


# --------------------------------------------------------------------------------------------
# The flow: predictions, the report, the model's own test split
# --------------------------------------------------------------------------------------------
@flows
def test_the_models_test_split_reproduces_its_accuracy_and_confusion_matrix(made, tmp_path):
    from flows.predict import predict

    record = json.loads((made["models"]["digits"] / "model" / "model.json").read_text())
    folder = Path(predict(model=str(made["models"]["digits"]), data=str(made["digits"]),
                          split="test", reports_dir=str(tmp_path / "reports")))
    assert folder.parent == tmp_path / "reports" and folder.name.startswith("predict-")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["model"]["model_key"] == record["model_key"]
    frame = pd.read_parquet(folder / "predictions.parquet")
    assert len(frame) == record["data"]["sizes"]["test"] == 160
    assert summary["accuracy"] == pytest.approx(record["scores"]["test_accuracy"],
                                                abs=0.5 / 160)
    assert summary["confusion_matrix"] == record["scores"]["confusion_matrix"]
    assert summary["model_json"]["confusion_matrix_identical"] is True
    assert list(frame.columns) == [
        "file", "row", "predicted", "predicted_name", "probability", "top_2", "top_2_name",
        "top_2_probability", "top_3", "top_3_name", "top_3_probability", "label",
        "label_name", "correct"]
    assert frame["row"].tolist() == list(range(160)) and set(frame["file"]) == {"digits.npz"}
    assert (frame["probability"] >= frame["top_2_probability"]).all()
    csv = pd.read_csv(folder / "predictions.csv")
    assert csv["predicted"].tolist() == frame["predicted"].tolist()
    text = (folder / "report.md").read_text()
    for part in ("## Predicted classes", "## Accuracy", "## Per class", "## Confusion matrix",
                 "![inputs](inputs.png)", "Its confusion matrix against this one: identical"):
        assert part in text
    for figure in ("inputs.png", "confusion_matrix.png", "misclassified_grid.png"):
        assert (folder / figure).is_file()
    # the same rows as an npz of x_test and y_test alone: the same numbers
    arrays = np.load(made["digits"])
    alone = write_npz(tmp_path / "test.npz", {"x_test": arrays["x_test"][:160],
                                              "y_test": arrays["y_test"][:160]})
    again = json.loads((Path(predict(model=str(made["models"]["digits"]), data=str(alone),
                                     reports_dir=str(tmp_path / "r"))) / "summary.json")
                       .read_text())
    assert again["accuracy"] == summary["accuracy"]
    assert again["confusion_matrix"] == summary["confusion_matrix"]


@flows
def test_an_unlabelled_image_folder_and_a_table_get_counts_and_no_accuracy(made, tmp_path):
    from flows.predict import predict

    rng = np.random.default_rng(1)
    flat = tmp_path / "new"
    flat.mkdir()
    for i, colour in enumerate(("red", "red", "green")):
        photo(colour, rng).save(flat / f"{i}.png")
    folder = Path(predict(model=str(made["models"]["photos"]), data=str(flat),
                          reports_dir=str(tmp_path / "reports")))
    import keras
    from PIL import Image

    frame = pd.read_parquet(folder / "predictions.parquet")
    assert frame["file"].tolist() == ["0.png", "1.png", "2.png"]
    assert "label" not in frame and "top_3_name" in frame
    # what the model gives on the files converted as model.json says, without the project
    network = keras.saving.load_model(made["models"]["photos"] / "model" / "model.keras")
    x = np.stack([np.asarray(Image.open(flat / f).convert("RGB"), np.uint8)
                  for f in frame["file"]])
    expected = np.asarray(network(x))
    np.testing.assert_array_equal(frame["predicted"], expected.argmax(axis=1))
    assert frame["predicted_name"].tolist() == [PHOTO_CLASSES[i] for i in frame["predicted"]]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["counts"] == {name: int(np.sum(frame["predicted"] == i))
                                 for i, name in enumerate(PHOTO_CLASSES)}
    assert "accuracy" not in summary
    assert (folder / "inputs.png").is_file() and not (folder / "confusion_matrix.png").exists()
    animals(20, 5).to_parquet(tmp_path / "zoo.parquet")
    folder = Path(predict(model=str(made["models"]["animals"]), data=str(tmp_path /
                                                                          "zoo.parquet"),
                          reports_dir=str(tmp_path / "reports")))
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["input"]["rows"] == 20 and 0.0 <= summary["accuracy"] <= 1.0
    assert not (folder / "inputs.png").exists()
    # the table model standardizes in float64: the numbers of model(x_float64)
    network = keras.saving.load_model(made["models"]["animals"] / "model" / "model.keras")
    expected = np.asarray(network(animals(20, 5)[["size", "weight", "legs"]].to_numpy()))
    frame = pd.read_parquet(folder / "predictions.parquet")
    np.testing.assert_array_equal(frame["predicted"], expected.argmax(axis=1))
    np.testing.assert_allclose(frame["probability"], expected.max(axis=1), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# The inbox
# --------------------------------------------------------------------------------------------
def fill_inbox(inbox: Path, made) -> None:
    from PIL import Image

    inbox.mkdir(parents=True, exist_ok=True)
    arrays = synthetic_mnist(n_train=10, n_test=10, seed=6)
    write_npz(inbox / "batch.npz", {"x": arrays["x_test"][:5], "y": arrays["y_test"][:5]})
    Image.fromarray(arrays["x_test"][5]).save(inbox / "one.png")
    write_npz(inbox / "small.npz", {"x": arrays["x_test"][:2, :20, :20]})  # does not fit
    (inbox / ".hidden.png").write_bytes(b"not looked at")
    (inbox / "copying.png.part").write_bytes(b"not looked at")


@flows
def test_the_inbox_scores_each_new_file_once_and_records_a_rejected_one_once(made, tmp_path,
                                                                             capsys):
    from flows.predict import predict
    from tasks.predict.inbox import LEDGER

    inbox = tmp_path / "inbox"
    fill_inbox(inbox, made)
    model = str(made["models"]["digits"])
    capsys.readouterr()
    folder = Path(predict(model=model, inbox=str(inbox), reports_dir=str(tmp_path / "r")))
    out = capsys.readouterr().out
    assert out.count("rejected: ") == 1 and "small.npz: x holds 20x20 images" in out
    frame = pd.read_parquet(folder / "predictions.parquet")
    assert frame["file"].tolist() == ["batch.npz"] * 5 + ["one.png"]
    assert frame["label"].isna().tolist() == [False] * 5 + [True]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["inbox"]["scored"] == ["batch.npz", "one.png"]
    assert list(summary["inbox"]["rejected"]) == ["small.npz"]
    records = sorted((inbox / LEDGER).glob("*.json"))
    assert len(records) == 3
    stamps = {p.name: p.stat().st_mtime_ns for p in records}
    outcome = {json.loads(p.read_text())["file"]: json.loads(p.read_text()) for p in records}
    assert outcome["small.npz"]["status"] == "rejected"
    assert outcome["small.npz"]["error"].startswith(f"{inbox / 'small.npz'}: x holds 20x20")
    assert outcome["one.png"]["status"] == "scored"
    assert outcome["one.png"]["report"] == str(folder)
    # again: nothing new, the rejected file is not tried or recorded again
    assert predict(model=model, inbox=str(inbox), reports_dir=str(tmp_path / "r")) == ""
    out = capsys.readouterr().out
    assert "0 new file(s): 0 scored, 0 rejected; 3 seen before (2 scored, 1 rejected)" in out
    assert "rejected: " not in out
    assert {p.name: p.stat().st_mtime_ns for p in (inbox / LEDGER).glob("*.json")} == stamps
    # the same content under a new name is the same key; a changed file is new
    (inbox / "batch.npz").rename(inbox / "renamed.npz")
    assert predict(model=model, inbox=str(inbox), reports_dir=str(tmp_path / "r")) == ""
    arrays = synthetic_mnist(n_train=10, n_test=10, seed=7)
    write_npz(inbox / "small.npz", {"x": arrays["x_test"][:3]})  # fixed: fits now
    folder = Path(predict(model=model, inbox=str(inbox), reports_dir=str(tmp_path / "r")))
    assert pd.read_parquet(folder / "predictions.parquet")["file"].tolist() == ["small.npz"] * 3


@flows
def test_two_overlapping_inbox_runs_score_nothing_twice(made, tmp_path, monkeypatch):
    from flows.predict import predict
    from tasks.predict import task as steps
    from tasks.predict.inbox import LEDGER

    inbox = tmp_path / "inbox"
    fill_inbox(inbox, made)
    (inbox / "small.npz").unlink()
    model = str(made["models"]["digits"])
    inside, go_on = threading.Event(), threading.Event()
    real, calls = steps.predict, []

    def first_one_waits(chosen, x):  # the first run stops while it holds its files
        calls.append(len(x))
        if len(calls) == 1:
            inside.set()
            assert go_on.wait(60)
        return real(chosen, x)

    monkeypatch.setattr(steps, "predict", first_one_waits)
    first: dict = {}
    thread = threading.Thread(target=lambda: first.update(
        folder=predict(model=model, inbox=str(inbox), reports_dir=str(tmp_path / "r"))))
    thread.start()
    try:
        assert inside.wait(60)
        arrays = synthetic_mnist(n_train=10, n_test=10, seed=11)
        write_npz(inbox / "late.npz", {"x": arrays["x_test"][:4]})  # arrives meanwhile
        second = Path(predict(model=model, inbox=str(inbox), reports_dir=str(tmp_path / "r")))
    finally:
        go_on.set()
        thread.join(60)
    first_files = pd.read_parquet(Path(first["folder"]) / "predictions.parquet")["file"]
    second_files = pd.read_parquet(second / "predictions.parquet")["file"]
    assert set(first_files) == {"batch.npz", "one.png"} and set(second_files) == {"late.npz"}
    records = [json.loads(p.read_text()) for p in (inbox / LEDGER).glob("*.json")]
    assert sorted(r["file"] for r in records) == ["batch.npz", "late.npz", "one.png"]
    assert predict(model=model, inbox=str(inbox), reports_dir=str(tmp_path / "r")) == ""


# --------------------------------------------------------------------------------------------
# The layers
# --------------------------------------------------------------------------------------------
def test_predict_stays_in_its_layer():
    from test_lint import project_imports, reachable

    modules = project_imports()
    for name in [m for m in modules if m.startswith("tasks.predict")]:
        below = reachable(modules, name)
        assert not {m for m in below if m.startswith(("tasks.reports", "tasks.search",
                                                      "flows"))}, name


# --------------------------------------------------------------------------------------------
# End to end, on the real MNIST
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.real_data
def test_a_grid_on_the_real_mnist_and_predict_its_test_split(real_mnist, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PIPELINE_REPORTS_DIR"}
    reports = tmp_path / "reports"

    def command(*argv):
        done = subprocess.run([sys.executable, *argv, "--reports-dir", str(reports)],
                              cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900,
                              env=env)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return Path(re.findall(r"Report: (\S+)", done.stdout)[-1])

    grid = command("flows/grid.py", "--data", str(real_mnist), "--units", "64", "--dropout",
                   "0", "--epochs", "2")
    record = json.loads((grid / "model" / "model.json").read_text())
    reported = pd.read_parquet(grid / "trials.parquet")["test_accuracy"].item()
    folder = command("flows/predict.py", "--model", "latest", "--data", str(real_mnist),
                     "--split", "test")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["input"]["rows"] == 8000
    assert abs(summary["accuracy"] - reported) < 0.5 / 8000
    assert summary["confusion_matrix"] == record["scores"]["confusion_matrix"]
    with np.load(real_mnist) as arrays:
        alone = write_npz(tmp_path / "test.npz", {"x_test": arrays["x_test"][:8000],
                                                  "y_test": arrays["y_test"][:8000]})
    again = json.loads((command("flows/predict.py", "--model", str(grid), "--data", str(alone))
                        / "summary.json").read_text())
    assert again["accuracy"] == summary["accuracy"]
    assert again["confusion_matrix"] == summary["confusion_matrix"]
    print(f"real MNIST: predict's test accuracy {summary['accuracy']:.4f}, the report's "
          f"{reported:.4f}; confusion matrix identical to model.json's")
