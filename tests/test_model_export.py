"""The model of every run (``model/`` in its report folder): ``model.keras`` takes the data as
the user holds it and loads where this project cannot be imported; ``model.json`` and
``MODEL.md`` describe it; exporting reads the stored weights and retrains a trial only where
they are gone. On tiny synthetic data of each format: 8-bit images (npz), a table (CSV,
standardized) and a folder of RGB images; and, in the end-to-end suite, on the real MNIST."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import PROJECT_ROOT, synthetic_mnist, write_npz

from flows.grid import grid_search
from flows.random_search import random_search
from flows.train import baseline
from flows.tune import tune
from tasks.config import SplitSpec, TrialConfig
from tasks.data.prepare import prepare, prepare_data
from tasks.data.readers import read_data
from tasks.data.splits import load_splits
from tasks.run_options import FanOut, RunOptions
from tasks.search.space import make_space
from tasks.search.tune_space import make_tune_space

flows = pytest.mark.usefixtures("prefect_harness")
#: one worker runs this module's tests, in order, on the runs of its module fixtures
pytestmark = pytest.mark.xdist_group("model_export")
TOLERANCE = 0.0005  # accuracy: the standalone model against the report

# --------------------------------------------------------------------------------------------
# A Python that cannot import this project: isolated (-I: no PYTHONPATH, no user site, no
# script or working directory on the path), without `site` (-S: no .pth files, so not the
# editable install's finder), with only the folders that hold TensorFlow, Keras, NumPy,
# pandas and Pillow on its path, in a working directory outside the repository.
# --------------------------------------------------------------------------------------------
STANDALONE = r'''
import json, sys
cases, out_path = json.load(open(sys.argv[1])), sys.argv[2]
try:
    import tasks  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit(f"this project is importable here: {tasks.__file__}")
import numpy as np
import keras

def raw_test_split(case, spec):
    """The test split as the user's data holds it, read here without the project."""
    classes = spec["classes"]
    if case["format"] == "npz":
        k = spec["data"]["split"]["test_size"]
        with np.load(case["source"]) as npz:
            return npz["x_test"][:k], npz["y_test"][:k].astype(np.int64)
    if case["format"] == "table":
        import pandas as pd
        frame = pd.read_csv(case["source"]).iloc[case["rows"]]
        x = frame[spec["input"]["feature_names"]].to_numpy(np.float64)
        return x, np.array([classes.index(str(v)) for v in frame["label"]])
    from PIL import Image
    convert = spec["before_model"]  # what the data step did before the model's input
    images = []
    for path in case["files"]:
        with Image.open(path) as image:
            image = image.convert(convert["convert"])
            if list(image.size) != convert["size"]:
                image = image.resize(tuple(convert["size"]), Image.Resampling.BILINEAR)
            images.append(np.asarray(image, dtype=np.uint8))
    return np.stack(images), np.array([classes.index(c) for c in case["labels"]])

results = {}
for name, case in cases.items():
    spec = json.load(open(case["folder"] + "/model.json"))
    model = keras.saving.load_model(case["folder"] + "/model.keras")
    x, y = raw_test_split(case, spec)
    probabilities = model.predict(x, verbose=0)
    called = np.asarray(model(x)).argmax(axis=1)  # the input's own dtype (predict: floatx)
    predicted = probabilities.argmax(axis=1)
    results[name] = {
        "input": [keras.backend.standardize_dtype(model.inputs[0].dtype),
                  list(model.inputs[0].shape[1:])],
        "x_dtype": str(x.dtype), "rows": int(len(x)),
        "accuracy": float(np.mean(predicted == y)), "predicted": predicted.tolist(),
        "called_accuracy": float(np.mean(called == y)), "called": called.tolist(),
        "sums_to_one": bool(np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)),
        "custom_objects": sorted({type(l).__module__.split(".")[0] for l in model.layers}),
    }
json.dump(results, open(out_path, "w"))
'''


def standalone_path() -> list[str]:
    """The folders that hold the packages the standalone model needs, none of this project."""
    import importlib.util

    folders = []
    for package in ("tensorflow", "keras", "numpy", "pandas", "PIL"):
        folder = str(Path(importlib.util.find_spec(package).origin).parents[1])
        if folder not in folders:
            folders.append(folder)
    assert not any(Path(f).resolve() == PROJECT_ROOT.resolve() for f in folders)
    return folders


def run_standalone(cases: dict, workdir: Path) -> dict:
    """Run :data:`STANDALONE` over ``cases`` in a Python that cannot import this project."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "cases.json").write_text(json.dumps(cases))
    bootstrap = (f"import sys; sys.path[:0] = {standalone_path()!r}; sys.argv[1:] = "
                 f"[{str(workdir / 'cases.json')!r}, {str(workdir / 'out.json')!r}]; "
                 f"exec(compile(open({str(workdir / 'standalone.py')!r}).read(), "
                 "'standalone.py', 'exec'))")
    (workdir / "standalone.py").write_text(STANDALONE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIPELINE_"))}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    done = subprocess.run([sys.executable, "-I", "-S", "-c", bootstrap], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((workdir / "out.json").read_text())


def model_json(report: Path) -> dict:
    return json.loads((report / "model" / "model.json").read_text())


def network_predictions(record: dict, source: Path) -> np.ndarray:
    """The project's own network of the trial on the processed test split (what the
    baseline report shows): the training run's predictions."""
    from tasks.engine.model import load_model, predict_probabilities

    handle, _ = prepare_data(str(source))
    assert handle.fingerprint == record["data"]["fingerprint"]
    network = load_model(TrialConfig(**record["trial"]["config"]),
                         record["trial"]["weights_path"])
    return predict_probabilities(network, load_splits(handle).x_test).argmax(axis=1)


# --------------------------------------------------------------------------------------------
# The data: one small file of each format
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    from PIL import Image

    root = tmp_path_factory.mktemp("export-data")
    npz = write_npz(root / "digits.npz", synthetic_mnist(n_train=600, n_test=300, seed=3))
    rng = np.random.default_rng(0)
    n = 300
    labels = np.array(["bird", "cat", "dog"])[rng.integers(0, 3, n)]
    shift = {"bird": 0.0, "cat": 2.0, "dog": 4.0}
    pd.DataFrame({
        "size": [rng.normal(10 + 3 * shift[c], 3) for c in labels],
        "weight": rng.normal(-2, 0.5, n) + np.array([shift[c] for c in labels]) * 0.4,
        "constant": np.full(n, 7.0),
        "legs": rng.integers(2, 5, n),
        "offset": 1e5 + rng.normal(0, 1, n),
        "label": labels,
    }).to_csv(root / "animals.csv", index=False)
    colours = {"blue": (20, 40, 200), "green": (30, 180, 40), "red": (210, 30, 30)}
    for name, colour in colours.items():
        (root / "photos" / name).mkdir(parents=True)
        for i in range(20):
            pixels = np.clip(np.array(colour) + rng.integers(-40, 40, (6, 8, 3)), 0, 255)
            image = Image.fromarray(pixels.astype(np.uint8), "RGB")
            if (name, i) == ("green", 3):  # another size: resized by the data step
                image = image.resize((16, 12))
            image.save(root / "photos" / name / f"{i:02d}.png")
    return {"npz": npz, "table": root / "animals.csv", "images": root / "photos"}


def run(data: Path, reports: Path) -> RunOptions:
    return RunOptions(data=str(data), reports_dir=str(reports))


@pytest.fixture(scope="module")
def reports(files, tmp_path_factory, prefect_harness) -> dict[str, Path]:
    """One run per format: a grid on the images (npz), a random search on the table (CSV), the
    baseline on the image folder."""
    out = tmp_path_factory.mktemp("export-reports")
    grid = grid_search(space=make_space(units=[8, 16], dropout=[0.0], batch_size=[100],
                                        epochs=2), run=run(files["npz"], out))
    table = random_search(space=make_space(units=[8, 16, 32], dropout=[0.0], batch_size=[50],
                                           learning_rate=[0.01], epochs=3), trials=3,
                          run=run(files["table"], out))
    photos = baseline(config=TrialConfig(units=8, epochs=3, batch_size=20),
                      run=run(files["images"], out))
    return {"npz": Path(grid), "table": Path(table), "images": Path(photos)}


@pytest.fixture(scope="module")
def standalone(files, reports, tmp_path_factory) -> dict:
    """The three models loaded and run on their raw test splits without this project."""
    table_rows = prepare(read_data(files["table"]), SplitSpec()).rows["test"][1]
    image_files = sorted((p, p.parent.name) for p in files["images"].glob("*/*.png"))
    image_rows = prepare(read_data(files["images"]), SplitSpec()).rows["test"][1]
    cases = {
        "npz": {"format": "npz", "source": str(files["npz"])},
        "table": {"format": "table", "source": str(files["table"]),
                  "rows": table_rows.tolist()},
        "images": {"format": "images", "files": [str(image_files[i][0]) for i in image_rows],
                   "labels": [image_files[i][1] for i in image_rows]},
    }
    for name, case in cases.items():
        case["folder"] = str(reports[name] / "model")
    return run_standalone(cases, tmp_path_factory.mktemp("standalone"))


# --------------------------------------------------------------------------------------------
# The model stands alone
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, shape, dtype", [("npz", [28, 28], "uint8"),
                                                ("table", [5], "float64"),
                                                ("images", [6, 8, 3], "uint8")])
def test_the_model_loads_without_the_project_and_scores_the_reports_test_accuracy(
        name, shape, dtype, files, reports, standalone):
    got = standalone[name]
    record = model_json(reports[name])
    trials = pd.read_parquet(reports[name] / "trials.parquet" if name != "images"
                             else reports[name] / "evaluation.parquet")
    reported = (trials.set_index("")["Accuracy"]["Test"] if name == "images" else
                trials.loc[trials["trial_key"] == record["trial"]["trial_key"],
                           "test_accuracy"].item())
    assert got["input"] == [dtype, shape] and got["x_dtype"] == dtype
    assert got["rows"] == record["data"]["sizes"]["test"]
    assert got["sums_to_one"] and got["custom_objects"] == ["keras"]
    assert abs(got["accuracy"] - reported) <= TOLERANCE
    assert abs(got["called_accuracy"] - reported) <= TOLERANCE
    reference = network_predictions(record, files[name])
    differing = int(np.sum(np.asarray(got["called"]) != reference))
    print(f"{name}: {got['rows']} test samples, accuracy {got['accuracy']:.4f} (report "
          f"{reported:.4f}); {differing} predictions differ from the training run's "
          f"network ({int(np.sum(np.asarray(got['predicted']) != reference))} through "
          "predict)")
    assert differing == 0
    assert record["check"]["differing_predictions"] == 0


def test_the_8bit_scale_inside_the_model_is_the_data_steps_bit_for_bit():
    import keras

    from tasks.export.inputs import PIXEL_VARIANCE

    pixels = np.arange(256, dtype=np.uint8).reshape(1, 256)
    layer = keras.layers.Normalization(mean=0.0, variance=PIXEL_VARIANCE)
    assert np.array_equal(np.asarray(layer(pixels)), pixels.astype(np.float32) / np.float32(255))
    # Rescaling(1/255) multiplies by a rounded reciprocal: not the same numbers
    rescaled = np.asarray(keras.layers.Rescaling(1 / 255)(pixels.astype(np.float32)))
    assert not np.array_equal(rescaled, pixels.astype(np.float32) / np.float32(255))


# --------------------------------------------------------------------------------------------
# What the folder says
# --------------------------------------------------------------------------------------------
def test_model_json_describes_the_input_the_normalization_the_trial_and_the_choice(reports):
    grid, table, photos = (model_json(reports[k]) for k in ("npz", "table", "images"))
    assert grid["classes"] == [str(i) for i in range(10)]
    assert grid["input"]["shape"] == [28, 28] and grid["normalization"]["kind"] == "pixels"
    assert grid["before_model"] is None
    assert grid["chosen"] | {"report": ""} == {
        "run": "grid", "trials": 2, "by": "val_accuracy", "split": "validation", "report": "",
        "how": "the best of 2 completed trial(s) of the grid by validation accuracy"}
    assert grid["chosen"]["report"] == reports["npz"].name
    trials = pd.read_parquet(reports["npz"] / "trials.parquet")
    best = trials.loc[trials["val_accuracy"].idxmax()]
    assert grid["trial"]["trial_key"] == best["trial_key"]
    assert grid["trial"]["weights_path"] == best["weights_path"]
    assert grid["scores"]["test_accuracy"] == best["test_accuracy"]
    assert grid["data"]["fingerprint"] == best["data_fingerprint"]
    assert TrialConfig(**grid["trial"]["config"]).units == best["units"]
    assert set(grid["versions"]) == {"tensorflow", "keras", "numpy", "python", "mnist-search"}
    assert re.fullmatch(r"[0-9a-f]{24}", grid["model_key"])
    per_class = grid["scores"]["per_class"]
    assert sum(c["test_samples"] for c in per_class.values()) == grid["data"]["sizes"]["test"]
    assert np.asarray(grid["scores"]["confusion_matrix"]).sum() == grid["data"]["sizes"]["test"]
    # the table: its feature names in order, standardized with the stored mean and std
    assert table["classes"] == ["bird", "cat", "dog"]
    assert table["input"]["feature_names"] == ["size", "weight", "constant", "legs", "offset"]
    assert table["normalization"]["kind"] == "standardize"
    assert table["normalization"]["std"][2] == 1.0  # the constant feature
    assert table["chosen"]["run"] == "random search" and table["chosen"]["trials"] == 3
    # the image folder: grey/RGB conversion and resizing happen before the model
    assert photos["classes"] == ["blue", "green", "red"]
    assert photos["before_model"]["convert"] == "RGB" and photos["before_model"]["size"] == [8, 6]
    assert photos["chosen"]["run"] == "baseline"


def test_the_report_names_the_trial_key_and_the_model_folder(reports):
    for name in ("npz", "table", "images"):
        record = model_json(reports[name])
        report = (reports[name] / "report.md").read_text()
        line = f"trial key `{record['trial']['trial_key']}`, model in [`model/`](model/MODEL.md)"
        assert line in report, name
    summary = (reports["npz"] / "report.md").read_text()
    assert re.search(r"best cell by validation accuracy.*trial key `[0-9a-f]{24}`, model in",
                     summary)


def test_the_model_card_has_the_sections_and_the_selection_caveat(reports):
    card = (reports["npz"] / "model" / "MODEL.md").read_text()
    for heading in ("## Model details", "## Intended use", "## Factors", "## Metrics",
                    "## Evaluation data", "## Training data", "## Quantitative analyses",
                    "## Ethical considerations", "## Caveats and recommendations"):
        assert heading in card
    assert "A selection on the validation split overrates" in card
    assert "| true \\ predicted |" in card
    assert "Fashion-MNIST" in card


def test_the_model_key_follows_the_weights_not_the_file(reports, tmp_path):
    from tasks.engine.model import read_weights
    from tasks.export.exporter import Selection, export_model, model_key
    from tasks.export.inputs import model_input
    from tasks.trial.store import cached_results

    record = model_json(reports["npz"])
    [result] = [r for r in cached_results() if r.trial_key == record["trial"]["trial_key"]]
    handle, _ = prepare_data(record["data"]["source"])
    again = export_model(result, handle, tmp_path / "model", Selection("grid", 2))
    assert again.model_key == record["model_key"]  # a new .keras file, the same model
    assert (tmp_path / "model" / "model.keras").read_bytes() != \
        (reports["npz"] / "model" / "model.keras").read_bytes()
    weights = read_weights(result.weights_path)
    preprocessing = model_input(handle).preprocessing()
    assert model_key(result.trial_key, weights, preprocessing) == record["model_key"]
    changed = [*weights[:-1], weights[-1] + 1.0]
    assert model_key(result.trial_key, changed, preprocessing) != record["model_key"]
    other = dict(preprocessing, classes=list("abcdefghij"))
    assert model_key(result.trial_key, weights, other) != record["model_key"]


def test_any_row_of_a_runs_table_exports_its_trial(files, reports, tmp_path):
    from tasks.export.exporter import Selection, export_model, result_from_row

    trials = pd.read_parquet(reports["npz"] / "trials.parquet")
    row = trials.nsmallest(1, "val_accuracy").iloc[0]  # not the chosen one
    data, _ = prepare_data(str(files["npz"]))
    export = export_model(result_from_row(row), data, tmp_path / "other", Selection("grid", 2))
    record = json.loads((tmp_path / "other" / "model.json").read_text())
    assert record["trial"]["trial_key"] == row["trial_key"] == export.trial_key
    assert record["scores"]["test_accuracy"] == row["test_accuracy"]
    assert record["check"]["test_accuracy"] == pytest.approx(row["test_accuracy"], abs=TOLERANCE)


# --------------------------------------------------------------------------------------------
# Every flow; weights that are gone
# --------------------------------------------------------------------------------------------
@flows
def test_a_chosen_trial_whose_weights_are_gone_is_retrained_once(files, reports, tmp_path,
                                                                  capsys):
    record = model_json(reports["npz"])
    weights = Path(record["trial"]["weights_path"])
    weights.unlink()
    capsys.readouterr()
    space = make_space(units=[8, 16], dropout=[0.0], batch_size=[100], epochs=2)
    again = Path(grid_search(space=space, run=run(files["npz"], tmp_path)))
    out = capsys.readouterr().out
    assert out.count("weights are missing") == 1
    assert f"retraining trial {record['trial']['trial_key']}" in out
    assert "Grid done: 0 trained, 2 from cache" in out
    retrained = model_json(again)
    assert retrained["trial"]["retrained"] is True and weights.is_file()
    assert retrained["trial"]["trial_key"] == record["trial"]["trial_key"]
    assert abs(retrained["scores"]["test_accuracy"] - record["scores"]["test_accuracy"]) \
        <= TOLERANCE
    # the retrained trial is cached like any other: its stored result names its weights
    from tasks.trial.store import cached_results

    [stored] = [r for r in cached_results() if r.trial_key == record["trial"]["trial_key"]]
    assert Path(stored.weights_path) == weights
    assert stored.test_accuracy == retrained["scores"]["test_accuracy"]


@flows
def test_a_tune_and_the_exercise_report_carry_the_model(files, reports, tmp_path):
    from tasks.reports.exercise import write_exercise_report

    # the grid's two configs: the warm start imports them, the tune trains nothing
    folder = Path(tune(space=make_tune_space(units="choice:8,16", dropout="choice:0.0",
                                             batch_size="choice:100", activation="choice:relu",
                                             learning_rate="choice:0.001", epochs=2),
                       trials=2, study_name="export", run=run(files["npz"], tmp_path),
                       fan_out=FanOut(runner="threads")))
    record = model_json(folder)
    assert record["chosen"]["run"] == "tune"
    trials = pd.read_parquet(folder / "trials.parquet")
    assert record["trial"]["trial_key"] == trials.loc[trials["val_accuracy"].idxmax(),
                                                      "trial_key"]
    assert f"trial key `{record['trial']['trial_key']}`" in (folder / "report.md").read_text()
    # the Prefect artifacts that link the model and name its keys
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["tune-model", "tune-model-card"])))
    latest = {a.key: a for a in sorted(artifacts, key=lambda a: a.created)}
    assert (folder / "model" / "MODEL.md").as_uri() in str(latest["tune-model"].data)
    assert record["trial"]["trial_key"] in str(latest["tune-model-card"].data)
    # the combined report: the best of the parts' models by validation accuracy, linked
    combined = write_exercise_report({"baseline": str(reports["images"]),
                                      "grid": str(reports["npz"]),
                                      "random": str(reports["table"])}, tmp_path)
    text = (combined / "report.md").read_text()
    vals = {k: model_json(reports[k])["scores"]["val_accuracy"] for k in reports}
    best = max(vals, key=vals.get)
    target = os.path.relpath(reports[best] / "model", combined)
    assert "**The model**: the best of the parts' models by validation accuracy" in text
    assert f"[`{target}/`]({target}/MODEL.md)" in text
    for link in re.findall(r"\]\(([^)]+MODEL\.md)\)", text):  # every model link resolves
        assert (combined / link).resolve().is_file(), link


def test_a_failed_export_still_writes_the_report_and_ends_in_one_line(reports, monkeypatch,
                                                                      tmp_path):
    from tasks.errors import ReportError
    from tasks.reports import folder as report_folder
    from tasks.reports.grid import write_grid_report
    from tasks.trial.store import cached_results

    def broken(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(report_folder, "export_model", broken)
    record = model_json(reports["npz"])
    handle, _ = prepare_data(record["data"]["source"])
    results = [r for r in cached_results(handle.fingerprint) if r.config.epochs == 2
               and r.config.units in (8, 16) and r.config.activation == "relu"
               and r.config.learning_rate == 0.001]
    space = make_space(units=[8, 16], dropout=[0.0], batch_size=[100], epochs=2)
    with pytest.raises(ReportError, match="report step 'model' failed .*No space left"):
        write_grid_report(results, space, tmp_path, data=handle)
    [folder] = [p for p in tmp_path.iterdir() if p.name.startswith("grid-")]
    assert (folder / "report.md").is_file() and (folder / "REPORT_FAILED.txt").is_file()
    assert "best cell by validation accuracy" in (folder / "report.md").read_text()


def test_the_exporter_stays_in_its_layer():
    from test_lint import project_imports, reachable

    modules = project_imports()
    for name in [m for m in modules if m.startswith("tasks.export")]:
        below = reachable(modules, name)
        assert not {m for m in below if m.startswith(("tasks.reports", "tasks.search",
                                                      "flows"))}, name


# --------------------------------------------------------------------------------------------
# End to end, on the real MNIST
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.real_data
def test_a_grid_on_the_real_mnist_leaves_a_model_that_stands_alone(real_mnist, tmp_path):
    done = subprocess.run(
        [sys.executable, "flows/grid.py", "--data", str(real_mnist), "--units", "64",
         "--dropout", "0", "--epochs", "2", "--reports-dir", str(tmp_path / "reports")],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = Path(re.findall(r"Report: (\S+)", done.stdout)[-1])
    record = model_json(report)
    trials = pd.read_parquet(report / "trials.parquet")
    reported = trials["test_accuracy"].item()
    got = run_standalone({"mnist": {"format": "npz", "source": str(real_mnist),
                                    "folder": str(report / "model")}},
                         tmp_path / "standalone")["mnist"]
    assert got["input"] == ["uint8", [28, 28]] and got["rows"] == 8000
    assert abs(got["accuracy"] - reported) <= TOLERANCE
    reference = network_predictions(record, real_mnist)
    differing = int(np.sum(np.asarray(got["predicted"]) != reference))
    print(f"real MNIST: accuracy {got['accuracy']:.4f} (report {reported:.4f}); {differing} of "
          "8000 predictions differ from the training run's network")
    assert differing <= 4  # 0.0005 of 8000
