"""The search as one model (``--ensemble K`` on every search, ``python flows/ensemble.py
--from-report DIR``): greedy selection with replacement on validation probabilities, ties by
log loss; the members' probabilities from their stored weights, cached by trial key; a trial
without weights skipped and counted, never trained; the exported ensemble loads without the
project and scores its card's test accuracy; predict and serve take it. Tiny synthetic data;
the full-size figures are in docs/results.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import PROJECT_ROOT, synthetic_mnist, write_npz
from test_predict import animals

from tasks.config import TrialConfig
from tasks.ensemble import selection as selection_module
from tasks.ensemble.members import ProbabilityCache, cache_path, candidates, forward
from tasks.ensemble.selection import greedy_selection, log_loss
from tasks.run_options import RunOptions
from tasks.search.space import make_space
from tasks.trial.result import TrialResult

flows = pytest.mark.usefixtures("prefect_harness")
#: one worker runs this module's flow tests, in order, on the runs of its module fixtures
pytestmark = pytest.mark.xdist_group("ensemble")


# --------------------------------------------------------------------------------------------
# The greedy selection (pure NumPy)
# --------------------------------------------------------------------------------------------
def one_hot(labels, classes: int = 3, confidence: float = 0.9) -> np.ndarray:
    p = np.full((len(labels), classes), (1 - confidence) / (classes - 1), np.float32)
    p[np.arange(len(labels)), labels] = confidence
    return p


def naive_greedy(probabilities: np.ndarray, labels: np.ndarray, k: int) -> list[int]:
    """The definition, one candidate and one pick at a time."""
    picks: list[int] = []
    for _ in range(k):
        scores = []
        for c in range(len(probabilities)):
            average = probabilities[picks + [c]].astype(np.float64).mean(axis=0)
            correct = int((average.argmax(axis=1) == labels).sum())
            loss = float(-np.log(np.maximum(average[np.arange(len(labels)), labels],
                                            1e-7)).mean())
            scores.append((correct, -loss, -c))
        picks.append(-max(scores)[2])
    return picks


def test_greedy_selection_is_the_definition_with_replacement_and_a_prefix_of_itself():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 300)
    logits = rng.normal(0, 1, (12, 300, 4)) + 1.2 * np.eye(4)[labels]  # 12 noisy classifiers
    probabilities = (np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)).astype(
        np.float32)
    greedy = greedy_selection(probabilities, labels, 15)
    assert [s.candidate for s in greedy.steps] == naive_greedy(probabilities, labels, 15)
    assert greedy.counts().sum() == 15 and greedy.counts().max() >= 2  # picked again
    assert greedy.steps[-1].accuracy > max(
        np.mean(p.argmax(axis=1) == labels) for p in probabilities)
    short = greedy_selection(probabilities, labels, 6)
    assert short.steps == greedy.steps[:6]  # greedy: the 6-pick ensemble is the first 6
    assert sum(c for _, c in greedy.members(6)) == 6


def test_greedy_selection_scores_in_chunks_as_at_once(monkeypatch):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 100)
    probabilities = rng.dirichlet(np.ones(3), (9, 100)).astype(np.float32)
    whole = greedy_selection(probabilities, labels, 7)
    monkeypatch.setattr(selection_module, "CHUNK", 2)
    assert selection_module.greedy_selection(probabilities, labels, 7) == whole


def test_an_accuracy_tie_goes_to_the_lower_log_loss_and_then_to_the_better_candidate():
    labels = np.array([0, 1, 2, 0, 1, 2])
    sure, unsure = one_hot(labels, confidence=0.9), one_hot(labels, confidence=0.5)
    # the same accuracy (every sample right), the unsure one first in the order
    greedy = greedy_selection(np.stack([unsure, sure]), labels, 1)
    assert greedy.steps[0].candidate == 1
    assert greedy.steps[0].log_loss == pytest.approx(-np.log(0.9), rel=1e-6)
    # equal in both: the first candidate (the better by validation)
    assert greedy_selection(np.stack([sure, sure.copy()]), labels, 3).counts().tolist() == [3, 0]


def test_log_loss_clips_a_zero_probability():
    labels = np.array([0, 1])
    p = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    assert log_loss(p, labels) == pytest.approx(-np.log(1e-7) / 2)


def test_bad_picks_and_an_empty_pool_are_refused():
    with pytest.raises(ValueError, match="at least 1"):
        greedy_selection(np.ones((2, 3, 2), np.float32), np.zeros(3), 0)
    with pytest.raises(ValueError, match="no candidate"):
        greedy_selection(np.ones((0, 3, 2), np.float32), np.zeros(3), 1)


# --------------------------------------------------------------------------------------------
# The members' probabilities
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("activation", ["relu", "elu", "sigmoid", "tanh", "linear"])
def test_the_numpy_forward_pass_is_the_engines_network(activation):
    from tasks.engine.model import build_model, predict_probabilities

    config = TrialConfig(units=12, layers=2, activation=activation, seed=4)
    model = build_model(config, 20, 5)
    rng = np.random.default_rng(2)
    model.set_weights([rng.normal(0, 0.8, w.shape).astype(np.float32)
                       for w in model.get_weights()])
    x = rng.random((300, 20), dtype=np.float32) * 3
    ours = forward(config, model.get_weights(), x)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, predict_probabilities(model, x), atol=2e-6)


def fake_result(key: str, folder: Path, val: float, fingerprint: str = "f" * 20,
                weights: list[np.ndarray] | None = None, status: str = "completed",
                config: TrialConfig | None = None) -> TrialResult:
    from tasks.engine.model import save_weights

    path = folder / key / "model.weights.npz"
    if weights is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_weights(weights, path)
    return TrialResult(config=config or TrialConfig(units=4), trial_key=key,
                       data_fingerprint=fingerprint, status=status, val_accuracy=val,
                       val_loss=1 - val, test_accuracy=val, weights_path=str(path))


def test_the_pool_is_completed_trials_of_this_data_with_weights_best_first(tmp_path):
    w = [np.zeros((3, 4), np.float32), np.zeros(4, np.float32), np.zeros((4, 2), np.float32),
         np.zeros(2, np.float32)]
    results = [fake_result("a", tmp_path, 0.5, weights=w), fake_result("b", tmp_path, 0.9,
                                                                         weights=w),
               fake_result("b", tmp_path, 0.9, weights=w),  # the same trial twice
               fake_result("c", tmp_path, 0.8),  # its weights are gone
               fake_result("d", tmp_path, 0.95, weights=w, status="failed"),
               fake_result("e", tmp_path, 0.99, fingerprint="g" * 20, weights=w)]
    pool = candidates(results, "f" * 20)
    assert [r.trial_key for r in pool.trials] == ["b", "a"]
    assert pool.skipped == ("c",) and pool.completed == 3 and pool.other_data == 1
    assert "1 skipped: weights gone" in pool.line() and "2 of 3 completed" in pool.line()


def test_probabilities_are_computed_once_per_trial_and_again_when_its_weights_change(tmp_path):
    rng = np.random.default_rng(3)
    config = TrialConfig(units=4)
    weights = [rng.normal(size=s).astype(np.float32) for s in ((6, 4), (4,), (4, 3), (3,))]
    result = fake_result("k1", tmp_path, 0.5, weights=weights, config=config)
    x = rng.random((50, 6), dtype=np.float32)
    first = ProbabilityCache("validation", x)
    p = first.of(result)
    assert (first.computed, first.read) == (1, 0)
    assert cache_path(result, "validation").is_file()
    again = ProbabilityCache("validation", x)
    np.testing.assert_array_equal(again.of(result), p)
    assert (again.computed, again.read) == (0, 1)
    # the trial's weights written again (a retrained trial): computed again
    fake_result("k1", tmp_path, 0.5, weights=[w * 2 for w in weights], config=config)
    changed = ProbabilityCache("validation", x)
    assert not np.array_equal(changed.of(result), p) and changed.computed == 1
    # an unreadable cache file is computed again, not an error
    cache_path(result, "validation").write_bytes(b"not an npz")
    broken = ProbabilityCache("validation", x)
    broken.of(result)
    assert broken.computed == 1


def test_the_curve_is_each_ks_greedy_ensemble_and_top_k_average(tmp_path):
    """Every row of the curve against the averages computed directly, k beyond the pool
    included (the top-k average then stays at the whole pool)."""
    from tasks.data.splits import DataHandle, Splits
    from tasks.ensemble.choose import choose_ensemble

    rng = np.random.default_rng(6)
    labels_val, labels_test = rng.integers(0, 3, 80), rng.integers(0, 3, 120)
    x_val, x_test = (rng.normal(size=(80, 5)).astype(np.float32),
                     rng.normal(size=(120, 5)).astype(np.float32))
    x_val[np.arange(80), labels_val] += 1.5
    x_test[np.arange(120), labels_test] += 1.5
    results = []
    for index in range(4):
        config = TrialConfig(units=3, seed=index)
        weights = [rng.normal(0, 1, s).astype(np.float32) for s in ((5, 3), (3,), (3, 3), (3,))]
        probabilities = forward(config, weights, x_val)
        results.append(fake_result(f"t{index}", tmp_path, float(np.mean(
            probabilities.argmax(axis=1) == labels_val)), weights=weights, config=config))
    splits = Splits(np.zeros((1, 5), np.float32), np.zeros(1), x_val, labels_val, x_test,
                    labels_test, 3)
    data = DataHandle(directory=str(tmp_path), fingerprint="f" * 20, train_size=1,
                      validation_size=80, test_size=120, features=5, classes=3)
    choice = choose_ensemble(results, data, 7, splits=splits)
    order = list(choice.pool.trials)
    val = {r.trial_key: forward(r.config, _weights(r), x_val) for r in order}
    test = {r.trial_key: forward(r.config, _weights(r), x_test) for r in order}
    for row in choice.curve.to_dict("records"):
        k = row["k"]
        picked = [order[s.candidate].trial_key for s in choice.greedy.steps[:k]]
        assert row["val_accuracy"] == pytest.approx(np.mean(
            np.mean([val[t] for t in picked], axis=0).argmax(axis=1) == labels_val))
        assert row["test_accuracy"] == pytest.approx(np.mean(
            np.mean([test[t] for t in picked], axis=0).argmax(axis=1) == labels_test))
        top = [r.trial_key for r in order[:min(k, 4)]]
        assert row["top_k_members"] == len(top) and row["members"] == len(set(picked))
        assert row["top_k_test_accuracy"] == pytest.approx(np.mean(
            np.mean([test[t] for t in top], axis=0).argmax(axis=1) == labels_test))
    assert sum(m.picks for m in choice.members) == 7
    assert choice.test_accuracy == choice.curve["test_accuracy"].iloc[-1]
    assert choice.best_single.trial_key == order[0].trial_key


def _weights(result: TrialResult) -> list[np.ndarray]:
    from tasks.engine.model import read_weights

    return read_weights(result.weights_path)


@pytest.mark.parametrize("scaling", ["pixels", "standardize"])
def test_the_ensemble_network_is_its_members_weighted_average_and_reloads(scaling, tmp_path):
    import keras

    from tasks.engine.model import build_model
    from tasks.export.ensemble import build_ensemble
    from tasks.export.inputs import ModelInput

    rng = np.random.default_rng(5)
    shape = (4, 5) if scaling == "pixels" else (20,)
    mean, std = rng.normal(size=20), rng.random(20) + 0.5
    spec = ModelInput(kind="image" if scaling == "pixels" else "table", shape=shape,
                      dtype="uint8" if scaling == "pixels" else "float64",
                      classes=("a", "b", "c"), scaling=scaling,
                      mean=None if scaling == "pixels" else mean,
                      std=None if scaling == "pixels" else std)
    members = []
    for index, (config, weight) in enumerate(((TrialConfig(units=6), 0.5),
                                              (TrialConfig(units=9, layers=2,
                                                           activation="tanh"), 0.3),
                                              (TrialConfig(units=6, activation="elu"), 0.2))):
        weights = [rng.normal(0, 0.7, w.shape).astype(np.float32)
                   for w in build_model(config, 20, 3).get_weights()]
        members.append((config, weights, weight, f"member_{index + 1}_abcdef{index}"))
    model = build_ensemble(members, spec)
    raw = (rng.integers(0, 256, (64, *shape)).astype(np.uint8) if scaling == "pixels"
           else rng.normal(size=(64, 20)) * std + mean)
    processed = (raw.reshape(64, -1) / np.float32(255) if scaling == "pixels"
                 else (raw - mean) / std).astype(np.float32)
    expected = sum(weight * forward(config, weights, processed)
                   for config, weights, weight, _ in members)
    np.testing.assert_allclose(model.predict(raw, verbose=0), expected, atol=1e-5)
    model.save(tmp_path / "e.keras")
    loaded = keras.saving.load_model(tmp_path / "e.keras")
    np.testing.assert_allclose(loaded.predict(raw, verbose=0), expected, atol=1e-5)
    names = [layer.name for layer in loaded.layers]
    assert [n for n in names if n.startswith("member_")] == [m[3] for m in members]
    assert names[-1] == "average"
    assert {type(layer).__module__.split(".")[0] for layer in loaded.layers} == {"keras"}


# --------------------------------------------------------------------------------------------
# Searches with --ensemble, and flows/ensemble.py --from-report
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return write_npz(tmp_path_factory.mktemp("ensemble-data") / "digits.npz",
                     synthetic_mnist(n_train=600, n_test=300, seed=7))


SPACE = make_space(units=[8, 16, 32], dropout=[0.0, 0.5], batch_size=[32], epochs=2)


@pytest.fixture(scope="module")
def grid(digits, tmp_path_factory, prefect_harness) -> Path:
    """A 6-cell grid whose model is an ensemble of 6 picks."""
    from flows.grid import grid_search

    return Path(grid_search(space=SPACE, ensemble=6, run=RunOptions(
        data=str(digits), reports_dir=str(tmp_path_factory.mktemp("ensemble-reports")))))


def record_of(folder: Path) -> dict:
    return json.loads((folder / "model" / "model.json").read_text())


@flows
def test_a_grid_with_ensemble_exports_the_weighted_members_and_compares_them(grid):
    record = record_of(grid)
    ensemble, comparison = record["ensemble"], record["comparison"]
    trials = pd.read_parquet(grid / "trials.parquet")
    members = ensemble["members"]
    assert sum(m["picks"] for m in members) == ensemble["k"] == 6
    assert sum(ensemble["weights"]) == pytest.approx(1.0)
    assert ensemble["trial_keys"] == [m["trial_key"] for m in members]
    assert set(ensemble["trial_keys"]) <= set(trials["trial_key"])
    assert len({m["name"] for m in members}) == len(members)
    assert ensemble["candidates"] == 6 and ensemble["skipped"] == 0
    best = trials.loc[trials["val_accuracy"].idxmax()]
    assert comparison["best_single"]["trial_key"] == best["trial_key"]
    assert comparison["best_single"]["test_accuracy"] == pytest.approx(best["test_accuracy"])
    assert record["scores"]["val_accuracy"] >= best["val_accuracy"]  # greedy starts there
    assert record["check"]["differing_predictions"] == 0
    curve = pd.read_parquet(grid / "ensemble.parquet")
    assert curve["k"].tolist() == list(range(1, 7))
    assert curve["val_accuracy"].iloc[0] == pytest.approx(best["val_accuracy"])
    for latency in (comparison["ensemble"]["latency_ms"], comparison["best_single"]["latency_ms"]):
        assert latency["batch_256"] > 0 and latency["batch_1"] > 0
    card = (grid / "model" / "MODEL.md").read_text()
    assert "the best single trial by validation" in card
    assert f"**{record['scores']['test_accuracy']:.4f}**" in card
    report = (grid / "report.md").read_text()
    assert "## Ensemble" in report and "**ensemble** of" in report
    assert (grid / "ensemble.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "trial" not in record  # no single trial is the model


@flows
def test_the_ensemble_loads_without_the_project_and_scores_its_cards_test_accuracy(grid,
                                                                                 digits,
                                                                                 tmp_path):
    from test_model_export import run_standalone

    got = run_standalone({"ensemble": {"format": "npz", "source": str(digits),
                                       "folder": str(grid / "model")}}, tmp_path)["ensemble"]
    record = record_of(grid)
    assert got["custom_objects"] == ["keras"] and got["sums_to_one"]
    assert got["input"] == ["uint8", [28, 28]]
    assert got["accuracy"] == pytest.approx(record["scores"]["test_accuracy"], abs=1e-9)
    assert got["called_accuracy"] == pytest.approx(record["scores"]["test_accuracy"], abs=1e-9)


@flows
def test_from_report_trains_nothing_skips_a_trial_without_weights_and_counts_it(grid, digits,
                                                                                tmp_path):
    from flows.ensemble import ensemble_from_report

    trials = pd.read_parquet(grid / "trials.parquet")
    gone = trials.sort_values("val_accuracy").iloc[0]
    Path(gone["weights_path"]).unlink()
    before = {str(p): p.stat().st_mtime_ns for p in Path(gone["weights_path"]).parents[1].rglob(
        "*.weights.npz")}
    folder = Path(ensemble_from_report([str(grid)], 4, RunOptions(data=str(digits),
                                                                 reports_dir=str(tmp_path))))
    record = record_of(folder)
    assert record["ensemble"]["skipped"] == 1
    assert record["ensemble"]["skipped_trial_keys"] == [gone["trial_key"]]
    assert record["ensemble"]["candidates"] == 5 and record["ensemble"]["k"] == 4
    assert not Path(gone["weights_path"]).exists()  # not trained again
    after = {str(p): p.stat().st_mtime_ns for p in Path(gone["weights_path"]).parents[1].rglob(
        "*.weights.npz")}
    assert after == before
    # every member's probabilities came from the grid's run: none computed again
    assert record["ensemble"]["probabilities"]["computed"] == 0
    assert "1 skipped: weights gone" in (folder / "report.md").read_text()
    assert record["chosen"]["report"] == grid.name


@flows
def test_two_reports_of_the_same_data_make_one_pool(grid, digits, tmp_path):
    from flows.ensemble import ensemble_from_report
    from flows.grid import grid_search

    run = RunOptions(data=str(digits), reports_dir=str(tmp_path))
    other = Path(grid_search(space=make_space(units=[4], dropout=[0.2], batch_size=[32],
                                              epochs=2), run=run))
    folder = Path(ensemble_from_report([str(grid), str(other)], 3, run))
    record = record_of(folder)
    ensemble = record["ensemble"]
    assert ensemble["completed"] == 7  # 6 cells + 1, whatever a test deleted
    assert ensemble["candidates"] + ensemble["skipped"] == 7
    assert record["chosen"]["report"] == f"{grid.name}, {other.name}"
    assert record["chosen"]["run"] == "grid"
    pool = pd.concat([pd.read_parquet(f / "trials.parquet") for f in (grid, other)])
    usable = pool[pool["weights_path"].map(lambda w: Path(w).is_file())]
    assert record["comparison"]["best_single"]["val_accuracy"] == usable["val_accuracy"].max()
    assert "the reports" in (folder / "report.md").read_text()


@flows
def test_predict_and_serve_take_the_ensemble(grid, digits, tmp_path):
    import keras
    from test_serve import app_client

    from flows.predict import predict

    record = record_of(grid)
    folder = Path(predict(model=str(grid), data=str(digits), split="test",
                          reports_dir=str(tmp_path)))
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["accuracy"] == pytest.approx(record["scores"]["test_accuracy"])
    assert summary["model"]["ensemble_trial_keys"] == record["ensemble"]["trial_keys"]
    assert "an ensemble of" in (folder / "report.md").read_text()
    x = np.load(digits)["x_test"][:20]
    own = keras.saving.load_model(grid / "model" / "model.keras").predict(x, verbose=0)
    with app_client({"models": {"ensemble": grid}}, "ensemble") as (_, http):
        answer = http.post("/predict", json={"instances": x.tolist()}).json()
        assert np.argmax(answer["predictions"], axis=1).tolist() == own.argmax(axis=1).tolist()
        assert http.get("/model").json()["ensemble"]["trial_keys"] == record["ensemble"][
            "trial_keys"]
        assert "ensemble" in http.get("/").text  # the page's card lists the members


@flows
def test_a_table_search_and_a_tune_take_ensemble_too(tmp_path):
    from test_model_export import run_standalone

    from flows.random_search import random_search
    from flows.tune import tune
    from tasks.search.tune_space import make_tune_space

    table = tmp_path / "animals.csv"
    rows = animals(300, 4)
    rows.to_csv(table, index=False)
    run = RunOptions(data=str(table), reports_dir=str(tmp_path / "reports"))
    searched = Path(random_search(space=make_space(units=[4, 8, 16], dropout=[0.0],
                                                   batch_size=[20], learning_rate=[0.01],
                                                   epochs=2), trials=3, ensemble=5, run=run))
    record = record_of(searched)
    assert record["input"]["dtype"] == "float64" and record["ensemble"]["k"] == 5
    assert record["chosen"]["run"] == "random search"
    from tasks.config import SplitSpec
    from tasks.data.prepare import prepare
    from tasks.data.readers import read_data

    rows_test = prepare(read_data(table), SplitSpec()).rows["test"][1]
    got = run_standalone({"table": {"format": "table", "source": str(table),
                                    "rows": rows_test.tolist(),
                                    "folder": str(searched / "model")}}, tmp_path / "alone")
    assert got["table"]["accuracy"] == pytest.approx(record["scores"]["test_accuracy"])
    tuned = Path(tune(space=make_tune_space(units="choice:4,8", dropout="choice:0.0",
                                            batch_size="choice:20", epochs=2), trials=3,
                      study_name="ensemble-tune", ensemble=3, run=run))
    record = record_of(tuned)
    assert record["chosen"]["run"] == "tune" and record["ensemble"]["k"] == 3
    assert "## Ensemble" in (tuned / "report.md").read_text()


# --------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------
def command(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=120, env=env or os.environ.copy())


def test_from_report_on_a_folder_without_trials_is_one_line_exit_2(tmp_path):
    baseline = tmp_path / "baseline-20260101-000000-abcd"
    baseline.mkdir()
    (baseline / "history.parquet").write_bytes(b"")
    for folder, why in ((baseline, "a baseline's or a refit's report holds one trial"),
                        (tmp_path / "nowhere", "no such report folder")):
        done = command("flows/ensemble.py", "--from-report", str(folder))
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines() == [
            f"error: {folder}: no trials.parquet here ({why}); an ensemble needs a search's "
            "report: reports/grid-..., reports/random-..., reports/tune-..."]
        assert not done.stdout
    done = command("flows/ensemble.py")
    assert done.returncode == 2 and done.stderr.startswith("error: give --from-report DIR")


@pytest.mark.parametrize("flow", ["flows/grid.py", "flows/random_search.py", "flows/tune.py"])
def test_ensemble_and_refit_together_are_one_line_exit_2(flow):
    done = command(flow, "--ensemble", "5", "--refit")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: refit=True with ensemble=5: the exported model is either the best trial "
        "refitted on train + validation (--refit) or an ensemble of the search's own trials "
        "(--ensemble, never refitted); leave out one of them"]
    done = command(flow, "--ensemble", "0")
    assert done.returncode == 2 and "ensemble=0" in done.stderr


@flows
def test_a_refit_of_an_ensemble_report_is_refused_in_one_line(grid):
    done = command("flows/train.py", "--from-report", str(grid))
    assert done.returncode == 2
    assert "its model is an ensemble of the search's trials" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
