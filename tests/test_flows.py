"""Flow runs under a temporary Prefect API, on synthetic data: caching, retries, failures,
reports."""

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from flows.grid import grid_search
from flows.random_search import random_search
from flows.train import baseline
from tasks.config import TrialConfig
from tasks.errors import TrialsFailed
from tasks.run_options import FanOut, RunOptions
from tasks.search.best_of_n import make_study_plan
from tasks.search.space import make_space

pytestmark = pytest.mark.usefixtures("prefect_harness")


def run_grid(mnist_file, tmp_path, **space):
    space = make_space(**{"batch_size": [100], "epochs": 1, **space})
    folder = grid_search(space=space,
                         run=RunOptions(data=str(mnist_file),
                                        reports_dir=str(tmp_path / "reports")))
    return Path(folder), pd.read_parquet(Path(folder) / "trials.parquet")


def test_baseline_flow_writes_the_full_report(mnist_file, tmp_path):
    config = TrialConfig(units=16, epochs=2, batch_size=100)
    folder = Path(baseline(config=config,
                           run=RunOptions(data=str(mnist_file),
                                          reports_dir=str(tmp_path / "reports"))))
    assert folder.parent == tmp_path / "reports" and folder.name.startswith("baseline-")
    names = {p.name for p in folder.iterdir()}
    for expected in ("report.md", "history.png", "confusion_matrix.png", "history.parquet",
                     "first_test_images.png", "misclassified_grid.png", "model.weights.npz",
                     "misclassified_01.png", "evaluation.txt", "model_summary.txt"):
        assert expected in names
    history = pd.read_parquet(folder / "history.parquet")
    assert list(history["epoch"]) == [1, 2]
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy"} <= set(history.columns)
    report = (folder / "report.md").read_text()
    assert "| Test" in report and "Error rate [%]" in report and "12,730" in report
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".staging")]


def test_a_cached_baseline_whose_weights_are_gone_is_retrained(mnist_file, tmp_path, capsys):
    config = TrialConfig(units=19, batch_size=100, epochs=1)
    first = Path(baseline(config=config,
                          run=RunOptions(data=str(mnist_file), reports_dir=str(tmp_path / "r"))))
    trials = {p.parent.name: p for p in Path(os.environ["PIPELINE_DATA_DIR"]).glob(
        "trials/*/model.weights.npz")}
    summary = (first / "report.md").read_text()
    key = next(k for k in trials if k in summary)
    trials[key].unlink()  # the cache still holds the result; its weights are gone
    capsys.readouterr()
    second = Path(baseline(config=config,
                           run=RunOptions(data=str(mnist_file), reports_dir=str(tmp_path / "r"))))
    out = capsys.readouterr().out
    assert "weights are missing" in out and "trained in" in out
    assert trials[key].is_file() and (second / "model.weights.npz").is_file()


def test_grid_caches_across_runs_and_a_changed_parameter_misses(mnist_file, tmp_path, capsys):
    folder, first = run_grid(mnist_file, tmp_path, dropout=[0.0, 0.5], units=[8, 16])
    assert len(first) == 4 and not first["cached"].any()
    assert (first["status"] == "completed").all()
    out = capsys.readouterr().out
    assert "Grid done: 4 trained, 0 from cache" in out and out.count("(trained in") == 4
    _, second = run_grid(mnist_file, tmp_path, dropout=[0.0, 0.5], units=[8, 16])
    assert second["cached"].all()
    out = capsys.readouterr().out
    assert "Grid done: 0 trained, 4 from cache" in out
    # the cache was looked at before choosing the runner: nothing left, no worker pool
    assert "4 trials, 4 of them in the cache: threads x 1 (chosen by --runner auto)" in out
    pd.testing.assert_series_equal(first["test_accuracy"], second["test_accuracy"])
    # a larger grid trains only its new cells; another epoch count is a miss
    _, larger = run_grid(mnist_file, tmp_path, dropout=[0.0, 0.5], units=[8, 16, 24])
    assert larger["cached"].sum() == 4 and (~larger["cached"]).sum() == 2
    _, changed = run_grid(mnist_file, tmp_path, dropout=[0.0], units=[8], epochs=2)
    assert not changed["cached"].any()


def test_report_content_matches_the_parquet_table(mnist_file, tmp_path):
    folder, trials = run_grid(mnist_file, tmp_path, dropout=[0.0, 0.3], units=[8, 32])
    expected = {"trial_key", "units", "dropout", "activation", "learning_rate", "batch_size",
                "epochs", "seed", "val_loss", "val_accuracy", "test_loss", "test_accuracy",
                "test_error_rate", "train_seconds", "cached", "status"}
    assert expected <= set(trials.columns)
    assert trials["trial_key"].is_unique
    assert ((trials["test_error_rate"] - 100 * (1 - trials["test_accuracy"])).abs() < 1e-9).all()
    best = trials.loc[trials["val_accuracy"].idxmax()]
    report = (folder / "report.md").read_text()
    assert f"validation {best['val_accuracy']:.4f}, **test {best['test_accuracy']:.4f}**" in report
    for row in trials.itertuples():
        assert (f"dropout = {row.dropout:.2f}, {row.units} neurons -> accuracy "
                f"{row.test_accuracy:.3f}") in report
    assert (folder / "heatmap_test_accuracy.png").stat().st_size > 5000
    # accuracy against size: the front of the 4 cells, and the report's direct answer
    from tasks.search.pareto import pareto_front

    front = pd.read_parquet(folder / "pareto.parquet")
    assert list(front["trial_key"]) == list(pareto_front(trials)["trial_key"])
    assert "Smallest network within 0.005 of the best validation accuracy:" in report
    assert "](pareto.png)" in report and (folder / "pareto.png").stat().st_size > 5000


def test_a_transient_failure_is_retried(mnist_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PIPELINE_FAULTS", json.dumps([{"units": 12, "times": 1}]))
    _, trials = run_grid(mnist_file, tmp_path, dropout=[0.0], units=[12])
    assert trials.loc[0, "status"] == "completed" and not trials.loc[0, "cached"]
    assert trials.loc[0, "attempts"] == 2  # the first attempt failed, the retry trained it


def test_a_deterministic_error_is_not_retried(mnist_file, tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_FAULTS",
                       json.dumps([{"units": 15, "times": -1, "error": "deterministic"}]))
    with pytest.raises(TrialsFailed, match="1 of 1 trials failed"):
        run_grid(mnist_file, tmp_path, dropout=[0.0], units=[15])
    trials = pd.read_parquet(only_report(tmp_path) / "trials.parquet")
    assert trials.loc[0, "error"] == (
        "ValueError: injected deterministic fault for units=15 dropout=0 act=relu lr=0.001 "
        "batch=100 epochs=1 seed=0 (attempt 1)")  # one attempt: no retry, no backoff


def only_report(tmp_path) -> Path:
    (folder,) = (tmp_path / "reports").iterdir()
    return folder


def test_a_permanent_failure_is_reported_and_the_run_ends_failed(mnist_file, tmp_path,
                                                                 monkeypatch, capsys):
    monkeypatch.setenv("PIPELINE_FAULTS", json.dumps([{"units": 13, "times": -1}]))
    with pytest.raises(TrialsFailed) as error:
        run_grid(mnist_file, tmp_path, dropout=[0.0, 0.2], units=[13, 14])
    folder = only_report(tmp_path)
    # the report is written in full first, and the run's message points at it
    assert str(error.value) == f"2 of 4 trials failed (see report {folder})"
    trials = pd.read_parquet(folder / "trials.parquet")
    failed = trials[trials["status"] == "failed"]
    assert sorted(failed["units"]) == [13, 13]
    assert failed["error"].str.contains(r"injected transient fault .* \(attempt 3\)").all()
    assert failed["test_accuracy"].isna().all()
    assert (trials[trials["units"] == 14]["status"] == "completed").all()
    assert "FAILED" in (folder / "report.md").read_text()
    assert "2 failed" in capsys.readouterr().out
    # tolerated failures: the same run completes
    space = make_space(batch_size=[100], epochs=1, dropout=[0.0, 0.2], units=[13, 14])
    grid_search(space=space,
                run=RunOptions(data=str(mnist_file), reports_dir=str(tmp_path / "tolerant")),
        fan_out=FanOut(max_failures=2))
    # once the fault is gone, the failed cells train and the others come from the cache
    monkeypatch.delenv("PIPELINE_FAULTS")
    _, again = run_grid(mnist_file, tmp_path / "fixed", dropout=[0.0, 0.2], units=[13, 14])
    assert (again["status"] == "completed").all()
    assert list(again["cached"]) == [False, True, False, True]


def test_a_failed_run_ends_failed_in_prefect(mnist_file, tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_FAULTS", json.dumps([{"units": 21, "times": -1}]))
    space = make_space(batch_size=[100], epochs=1, dropout=[0.0], units=[21])
    state = grid_search(space=space, return_state=True,
                        run=RunOptions(data=str(mnist_file), reports_dir=str(tmp_path / "reports")))
    assert state.is_failed()
    assert state.message.endswith(f"1 of 1 trials failed (see report {only_report(tmp_path)})")


def test_random_study_reuses_cached_trials_across_n_and_repeats(mnist_file, tmp_path, capsys):
    space = make_space(units=[9, 17], dropout=[0.0, 0.5], batch_size=[100], epochs=1)
    plan = make_study_plan(n_values=[2, 3], protocol="repeats", repeats=2)
    folder = Path(random_search(space=space, study=plan, draw_seed=0,
                                run=RunOptions(data=str(mnist_file),
                                               reports_dir=str(tmp_path / "r"))))
    out = capsys.readouterr().out
    # 10 trainings asked for from a space of 4 configs: at most 4 are trained
    assert "10 trainings asked for, 4 distinct configurations" in out
    assert "Random search done: 4 trained, 0 from cache" in out
    trials = pd.read_parquet(folder / "trials.parquet")
    assert len(trials) == 4 and trials["trial_key"].is_unique
    study = pd.read_parquet(folder / "best_of_n.parquet")
    assert list(study["n"]) == [2, 3] and list(study["samples"]) == [2, 2]
    assert (study["max_test_mean"] >= study["val_selected_test_mean"] - 1e-12).all()
    assert (folder / "best_of_n.png").exists() and (folder / "hyperparameters.png").exists()
    # the same study again: everything from the cache; the pool protocol reuses them too
    random_search(space=space, study=plan, draw_seed=0,
                  run=RunOptions(data=str(mnist_file), reports_dir=str(tmp_path / "r")))
    assert "Random search done: 0 trained, 4 from cache" in capsys.readouterr().out
    pool = make_study_plan(n_values=[2, 3], protocol="pool", pool_size=4)
    folder = Path(random_search(space=space, study=pool, draw_seed=3,
                                run=RunOptions(data=str(mnist_file),
                                               reports_dir=str(tmp_path / "r"))))
    assert "Random search done: 0 trained, 4 from cache" in capsys.readouterr().out
    study = pd.read_parquet(folder / "best_of_n.parquet")
    assert list(study["pool_size"]) == [4, 4]


def test_a_config_the_grid_trained_is_not_trained_again_by_random_search(
        mnist_file, tmp_path, capsys):
    run_grid(mnist_file, tmp_path, dropout=[0.0, 0.1], units=[20])
    capsys.readouterr()
    space = make_space(units=[20], dropout=[0.0, 0.1], batch_size=[100], epochs=1)
    random_search(space=space, trials=2, draw_seed=5,
                  run=RunOptions(data=str(mnist_file), reports_dir=str(tmp_path / "r")))
    assert "Random search done: 0 trained, 2 from cache" in capsys.readouterr().out


def test_a_damaged_cached_result_is_recomputed_not_trusted(mnist_file, tmp_path):
    import os

    _, first = run_grid(mnist_file, tmp_path, dropout=[0.0, 0.1], units=[11])
    storage = Path(os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"])
    damaged = storage / f"trial-{first.loc[0, 'trial_key']}"
    assert damaged.exists()
    damaged.write_bytes(damaged.read_bytes()[:150])  # truncated mid-JSON
    _, second = run_grid(mnist_file, tmp_path, dropout=[0.0, 0.1], units=[11])
    assert list(second["cached"]) == [False, True]
    assert (second["status"] == "completed").all()
    assert second.loc[0, "test_accuracy"] == pytest.approx(first.loc[0, "test_accuracy"])
    _, third = run_grid(mnist_file, tmp_path, dropout=[0.0, 0.1], units=[11])
    assert third["cached"].all()  # the recomputed entry was stored again


def test_the_whole_exercise_writes_one_combined_report(mnist_file, tmp_path):
    import re

    from flows.exercise import exercise

    # the top-level `epochs` replaces the epochs of all three parts
    space = make_space(units=[10, 18], dropout=[0.0, 0.5], batch_size=[100], epochs=4)
    folder = Path(exercise(
        baseline_config=TrialConfig(units=10, epochs=3, batch_size=100),
        grid=make_space(units=[10], dropout=[0.0, 0.5], batch_size=[100], epochs=5),
        random_space=space, study=make_study_plan(n_values=[2, 3], pool_size=4), epochs=1,
        run=RunOptions(data=str(mnist_file), reports_dir=str(tmp_path / "reports"))))
    parts = {p.name.split("-")[0]: p for p in (tmp_path / "reports").iterdir() if p != folder}
    assert len(pd.read_parquet(parts["baseline"] / "history.parquet")) == 1
    for part in ("grid", "random"):
        assert (pd.read_parquet(parts[part] / "trials.parquet")["epochs"] == 1).all()
    report = (folder / "report.md").read_text()
    for heading in ("# Baseline", "# Grid search", "# Random search", "Max accuracy estimate",
                    "## Accuracy against size"):
        assert heading in report
    links = re.findall(r"\]\(([^)]+\.png)\)", report)
    assert len(links) > 10 and all((folder / link).resolve().exists() for link in links)


def test_an_opt_in_concurrency_tag_reaches_every_training_task(mnist_file, tmp_path,
                                                                monkeypatch):
    import time

    from prefect import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterTags

    from tasks.trial.task import concurrency_tags, train_trial_task

    # off by default: a tagged task waits for Prefect's slot check before every start
    monkeypatch.delenv("PIPELINE_CONCURRENCY_TAG", raising=False)
    assert concurrency_tags() == [] and not train_trial_task.tags
    tag = f"cap-{tmp_path.name}"
    monkeypatch.setenv("PIPELINE_CONCURRENCY_TAG", tag)
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=tag, concurrency_limit=1)
        try:
            _, trials = run_grid(mnist_file, tmp_path, dropout=[0.0, 0.4], units=[11])
            assert (trials["status"] == "completed").all()
            tagged = TaskRunFilter(tags=TaskRunFilterTags(all_=[tag]))
            deadline = time.monotonic() + 20  # task runs reach the API as events
            runs = client.read_task_runs(task_run_filter=tagged)
            while len(runs) < 2 and time.monotonic() < deadline:
                time.sleep(0.5)
                runs = client.read_task_runs(task_run_filter=tagged)
            assert sorted(run.name for run in runs) == [
                "train 11u-d0.0-relu-lr0.001-b100-e1", "train 11u-d0.4-relu-lr0.001-b100-e1"]
            # under a limit of 1 both trials ran, one after the other, and no slot is left held
            assert not client.read_concurrency_limit_by_tag(tag).active_slots
        finally:
            client.delete_concurrency_limit_by_tag(tag)


def test_the_command_line_of_a_failed_run_exits_1_with_one_line(mnist_file, tmp_path,
                                                                  monkeypatch, capsys):
    from flows import grid
    from tasks.cli import run_cli

    monkeypatch.setenv("PIPELINE_FAULTS", json.dumps([{"units": 22, "times": -1}]))
    code = run_cli(grid.main, ["--data", str(mnist_file), "--units", "22", "--dropout", "0",
                               "--batch-size", "100", "--epochs", "1",
                               "--reports-dir", str(tmp_path / "reports")])
    err = capsys.readouterr().err.strip()
    assert code == 1
    report = only_report(tmp_path)
    assert err.startswith(f"error: 1 of 1 trials failed (see report {report}) (details: ")
    assert "\n" not in err and Path(err.split("(details: ")[1][:-1]).is_file()
    # tolerated, the same command succeeds
    code = run_cli(grid.main, ["--data", str(mnist_file), "--units", "22", "--dropout", "0",
                               "--batch-size", "100", "--epochs", "1", "--max-failures", "1",
                               "--reports-dir", str(tmp_path / "tolerant")])
    assert code == 0
