"""The refit (``--refit`` on every search, ``python flows/train.py --from-report DIR``): the
chosen config retrained on train + validation for its best epoch count, a cached trial on
merged data whose fingerprint derives from the original's; the exported model is the refit
one, the search model beside it. No existing trial key or fingerprint changes. Tiny synthetic
data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import synthetic_mnist, write_npz

from tasks.config import TrialConfig, trial_key
from tasks.data.prepare import prepare_data
from tasks.data.refit import refit_data, refit_fingerprint
from tasks.data.splits import load_splits, read_split
from tasks.export.refit import best_epoch_by_validation, refit_config
from tasks.run_options import RunOptions
from tasks.search.space import expand_grid, make_space
from tasks.trial.result import TrialResult

flows = pytest.mark.usefixtures("prefect_harness")
#: one worker runs this module's flow tests, in order, on the runs of its module fixture
pytestmark = pytest.mark.xdist_group("refit")

#: The real MNIST's fingerprint (tests/test_real_mnist.py) and two of its trial keys as they
#: were before the refit existed (computed at commit a656446, pinned TensorFlow, Keras, NumPy:
#: training-code version a9aa99d70c8c4ec0): the baseline's and the grid cell 128 units,
#: dropout 0.3.
MNIST_FINGERPRINT = "207846362c7bac8d66d8"
MNIST_KEYS = {"baseline": "db076dbee6fb89714884ada1", "grid 128/0.3": "71b097c59d9eaccc0fcbae54"}


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return write_npz(tmp_path_factory.mktemp("refit-data") / "digits.npz",
                     synthetic_mnist(n_train=600, n_test=300, seed=5))


# --------------------------------------------------------------------------------------------
# The merged split
# --------------------------------------------------------------------------------------------
def test_the_merged_split_is_train_then_validation_beside_the_original(digits, tmp_path):
    data, _ = prepare_data(str(digits), data_dir=tmp_path)
    manifest = Path(data.directory) / "manifest.json"
    before = manifest.read_bytes()
    merged = refit_data(data)
    assert merged.fingerprint == refit_fingerprint(data.fingerprint) != data.fingerprint
    assert Path(merged.directory).parent == Path(data.directory).parent
    assert (merged.train_size, merged.validation_size, merged.test_size) == (
        data.train_size + data.validation_size, data.validation_size, data.test_size)
    original = {s: read_split(data.path(s)) for s in ("train", "validation", "test")}
    got = {s: read_split(merged.path(s)) for s in ("train", "validation", "test")}
    for i in (0, 1):  # features, labels: train rows then validation rows, the rest as it was
        assert np.array_equal(got["train"][i], np.concatenate(
            [original["train"][i], original["validation"][i]]))
        assert np.array_equal(got["validation"][i], original["validation"][i])
        assert np.array_equal(got["test"][i], original["test"][i])
    described = json.loads((Path(merged.directory) / "manifest.json").read_text())["dataset"]
    assert described["refit"]["from"] == data.fingerprint
    assert described["normalization"] == json.loads(before)["dataset"]["normalization"]
    assert manifest.read_bytes() == before  # the original is untouched
    stamp = (Path(merged.directory) / "train.arrow").stat().st_mtime_ns
    assert refit_data(data) == merged  # reused, not rewritten
    assert (Path(merged.directory) / "train.arrow").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="refit's data already"):
        refit_data(merged)


def test_a_standardized_table_keeps_the_training_splits_mean_and_std(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    pd.DataFrame({"a": rng.normal(5, 2, 200) + labels, "b": rng.normal(-1, 0.1, 200),
                  "label": labels}).to_csv(tmp_path / "t.csv", index=False)
    data, _ = prepare_data(str(tmp_path / "t.csv"), data_dir=tmp_path / "d")
    merged = refit_data(data)
    norm = [json.loads((Path(h.directory) / "manifest.json").read_text())["dataset"]
            ["normalization"] for h in (data, merged)]
    assert norm[0]["kind"] == "standardize" and norm[1] == norm[0]
    # the merged training rows are not standardized again: their mean is not 0 exactly
    x = load_splits(merged).x_train
    assert not np.allclose(x.mean(axis=0), 0, atol=1e-6)


# --------------------------------------------------------------------------------------------
# The refit's config and key
# --------------------------------------------------------------------------------------------
def test_the_refit_trains_for_the_epoch_of_the_best_validation_accuracy():
    history = [{"epoch": e, "val_accuracy": v} for e, v in
               enumerate([0.5, 0.7, np.nan, 0.7, 0.6], start=1)]
    assert best_epoch_by_validation(history) == 2  # the first of a tie, NaN skipped
    assert best_epoch_by_validation([]) is None
    baseline = TrialResult(trial_key="k", config=TrialConfig(epochs=5), data_fingerprint="f",
                           history=history, best_epoch=2)
    config = refit_config(baseline)
    assert (config.epochs, config.checkpoint) == (2, False)
    assert config.model_dump(exclude={"epochs", "checkpoint"}) == \
        baseline.config.model_dump(exclude={"epochs", "checkpoint"})
    # a search trial (last epoch's weights): its best_epoch is its last, its history decides
    search = TrialResult(trial_key="k", config=TrialConfig(epochs=5, checkpoint=False),
                         data_fingerprint="f", history=history, best_epoch=5)
    assert refit_config(search).epochs == 2
    no_history = search.model_copy(update={"history": []})
    assert refit_config(no_history).epochs == 5


def test_an_unset_refit_leaves_every_key_and_fingerprint_as_before():
    """No trial field was added: a config's canonical JSON and key are what they were, and
    the refit's key differs only through its data's derived fingerprint."""
    assert "refit" not in TrialConfig.model_fields
    assert trial_key(TrialConfig(), MNIST_FINGERPRINT) == MNIST_KEYS["baseline"]
    [cell] = expand_grid(make_space(units=[128], dropout=[0.3]))
    assert trial_key(cell, MNIST_FINGERPRINT) == MNIST_KEYS["grid 128/0.3"]
    merged = refit_fingerprint(MNIST_FINGERPRINT)
    assert merged != MNIST_FINGERPRINT and len(merged) == len(MNIST_FINGERPRINT)
    assert trial_key(cell, merged) not in MNIST_KEYS.values()


# --------------------------------------------------------------------------------------------
# The flows
# --------------------------------------------------------------------------------------------
def model_json(report: Path) -> dict:
    return json.loads((report / "model" / "model.json").read_text())


@pytest.fixture(scope="module")
def grids(digits, tmp_path_factory, prefect_harness) -> dict[str, Path]:
    """The same 2-cell grid without and with --refit."""
    from flows.grid import grid_search

    reports = tmp_path_factory.mktemp("refit-reports")
    space = make_space(units=[8, 16], dropout=[0.0], batch_size=[100], epochs=3)
    run = RunOptions(data=str(digits), reports_dir=str(reports))
    return {"plain": Path(grid_search(space=space, run=run)),
            "refit": Path(grid_search(space=space, run=run, refit=True))}


@flows
def test_refit_leaves_the_search_as_it_was_and_exports_the_refit_model(grids, digits):
    plain, refitted = (pd.read_parquet(grids[k] / "trials.parquet") for k in ("plain", "refit"))
    assert list(plain["trial_key"]) == list(refitted["trial_key"])  # the same search trials
    data, _ = prepare_data(str(digits))
    for row in plain.itertuples():
        config = TrialConfig(**{f: getattr(row, f) for f in TrialConfig.model_fields})
        assert row.trial_key == trial_key(config, data.fingerprint)
    searched, record = model_json(grids["plain"]), model_json(grids["refit"])
    assert "refit" not in searched
    refit = record["refit"]
    assert refit["search_model"]["trial_key"] == searched["trial"]["trial_key"]
    assert refit["search_model"]["test_accuracy"] == searched["scores"]["test_accuracy"]
    # the exported model is the refit: its trial, on the merged data, for the best epoch count
    merged = refit_fingerprint(data.fingerprint)
    assert record["data"]["fingerprint"] == merged == refit["refit_model"]["data_fingerprint"]
    assert record["data"]["sizes"]["train"] == data.train_size + data.validation_size
    config = TrialConfig(**record["trial"]["config"])
    assert config.epochs == refit["epochs"] and not config.checkpoint
    assert record["trial"]["trial_key"] == trial_key(config, merged) \
        == refit["refit_model"]["trial_key"]
    assert Path(record["trial"]["weights_path"]).parent.name == record["trial"]["trial_key"]
    assert record["check"]["differing_predictions"] == 0
    card = (grids["refit"] / "model" / "MODEL.md").read_text()
    assert "## Refit" in card and "(trained on)" in card
    assert refit["search_model"]["trial_key"] in card and record["trial"]["trial_key"] in card
    report = (grids["refit"] / "report.md").read_text()
    assert f"**refit** on train + validation ({record['data']['sizes']['train']} samples" in report
    from tasks.export.onnx_model import onnx_available

    assert (grids["refit"] / "model" / "model.onnx").exists() == onnx_available()[0]
    assert record["onnx"]["written"] == onnx_available()[0]


@flows
def test_from_report_refits_the_reports_model_from_the_cache(grids, digits, tmp_path, capsys):
    from flows.train import baseline

    record = model_json(grids["refit"])
    capsys.readouterr()
    folder = Path(baseline(from_report=str(grids["plain"]),
                           run=RunOptions(reports_dir=str(tmp_path))))
    out = capsys.readouterr().out
    assert folder.name.startswith("refit-") and "from the cache" in out
    again = model_json(folder)
    assert again["trial"]["trial_key"] == record["trial"]["trial_key"]  # the same refit trial
    assert again["chosen"] == record["chosen"] | {"report": again["chosen"]["report"]}
    trials = pd.read_parquet(folder / "trials.parquet")
    assert list(trials["model"]) == ["search", "refit"]
    assert list(trials["trial_key"]) == [record["refit"]["search_model"]["trial_key"],
                                         record["trial"]["trial_key"]]
    # a refit report's own model.json leads back to the same search trial
    third = Path(baseline(from_report=str(folder / "model"),
                          run=RunOptions(reports_dir=str(tmp_path))))
    assert model_json(third)["trial"]["trial_key"] == record["trial"]["trial_key"]


@flows
def test_the_baseline_refits_for_its_checkpointed_best_epoch(digits, tmp_path):
    from flows.train import baseline
    from tasks.trial.store import cached_results

    folder = Path(baseline(config=TrialConfig(units=8, batch_size=100, epochs=4),
                           run=RunOptions(data=str(digits), reports_dir=str(tmp_path)),
                           refit=True))
    record = model_json(folder)
    search = record["refit"]["search_model"]
    [result] = [r for r in cached_results() if r.trial_key == search["trial_key"]]
    assert record["refit"]["epochs"] == best_epoch_by_validation(result.history) \
        == result.best_epoch == search["best_epoch"]
    assert record["chosen"]["run"] == "baseline" and record["trial"]["config"]["epochs"] \
        == result.best_epoch and not record["trial"]["config"]["checkpoint"]
    assert "**refit** on train + validation" in (folder / "report.md").read_text()


def test_from_report_takes_no_network_options_and_needs_a_model(grids, tmp_path, capsys):
    from flows.train import main
    from tasks.cli import run_cli

    assert run_cli(main, ["--from-report", str(grids["plain"]), "--units", "64"]) == 2
    assert "--from-report takes the network from the report" in capsys.readouterr().err
    assert run_cli(main, ["--from-report", str(tmp_path)]) == 2
    assert "no model/model.json here" in capsys.readouterr().err


@flows
def test_other_data_than_the_reports_is_refused(grids, tmp_path):
    from flows.train import refit_from_report
    from tasks.errors import UserError

    other = write_npz(tmp_path / "other.npz", synthetic_mnist(n_train=300, n_test=300, seed=9))
    with pytest.raises(UserError, match="was trained on data"):
        refit_from_report(str(grids["plain"]), RunOptions(data=str(other),
                                                          reports_dir=str(tmp_path)))


def test_a_failed_refit_still_writes_the_report_and_ends_in_one_line(grids, digits, tmp_path,
                                                                     monkeypatch):
    from tasks.errors import ReportError
    from tasks.export import refit as refit_module
    from tasks.reports.grid import write_grid_report
    from tasks.trial.store import cached_results

    def broken(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(refit_module, "refit_data", broken)
    data, _ = prepare_data(str(digits))
    keys = set(pd.read_parquet(grids["plain"] / "trials.parquet")["trial_key"])
    results = [r for r in cached_results(data.fingerprint) if r.trial_key in keys]
    space = make_space(units=[8, 16], dropout=[0.0], batch_size=[100], epochs=3)
    with pytest.raises(ReportError, match="report step 'refit' failed .*No space left"):
        write_grid_report(results, space, tmp_path, data=data, refit=True)
    [folder] = [p for p in tmp_path.iterdir() if p.name.startswith("grid-")]
    assert (folder / "report.md").is_file() and (folder / "REPORT_FAILED.txt").is_file()


def test_the_exercise_chooses_among_refit_models_by_their_search_models_validation():
    from tasks.reports.exercise import chosen_val_accuracy

    plain = {"scores": {"val_accuracy": 0.9}}
    refit = {"scores": {"val_accuracy": 0.99}, "refit": {"search_model": {"val_accuracy": 0.8}}}
    assert chosen_val_accuracy(plain) == 0.9 and chosen_val_accuracy(refit) == 0.8
