"""The Optuna search: spaces with distributions and rounding, ask/tell on the cached trial,
pruned trials, resume, and every run exported to one Optuna storage."""

from pathlib import Path

import optuna
import pandas as pd
import pytest

from flows.grid import grid_search
from flows.tune import main as tune_main
from flows.tune import tune
from tasks.config import SplitSpec, TrialConfig
from tasks.errors import UserError
from tasks.run_options import FanOut, RunOptions
from tasks.search.optuna_storage import storage_url
from tasks.search.space import make_space
from tasks.search.tune_space import Dimension, make_tune_space, read_space_file

TINY = {"units": "choice:20", "dropout": "choice:0,0.1", "activation": "choice:relu",
        "learning_rate": "choice:0.001", "batch_size": "choice:100", "epochs": 1}


# --------------------------------------------------------------------------------------------
# Spaces and rounding (no training)
# --------------------------------------------------------------------------------------------
def test_continuous_values_are_rounded_to_their_declared_precision():
    space = make_tune_space(learning_rate="log_uniform:1e-5:1e-1:2", dropout="uniform:0:0.6",
                            units="int_log:8:512", batch_size="choice:16,32")
    near = [{"learning_rate": 0.0012345, "dropout": 0.2049, "units": 100, "batch_size": 32,
             "activation": "relu"},
            {"learning_rate": 0.0011501, "dropout": 0.1951, "units": 100, "batch_size": 32,
             "activation": "relu"}]
    a, b = (space.config(p) for p in near)
    assert a.learning_rate == 0.0012 and a.dropout == 0.2
    assert a == b and a.canonical_json() == b.canonical_json()  # one cache entry
    assert space.config({**near[0], "learning_rate": 0.00125}).learning_rate == 0.0013
    three = make_tune_space(learning_rate="log_uniform:1e-5:1e-1:3")
    assert three.learning_rate.round(0.0012345) == 0.00123
    # the distributions Optuna samples: log scale for the rate and the units, the dropout
    # on its rounding grid
    dist = space.distributions()
    assert dist["learning_rate"].log and dist["units"].log and dist["dropout"].step == 0.01
    assert (dist["units"].low, dist["units"].high) == (8, 512)


def test_the_default_space_is_the_notebooks_and_bad_dimensions_name_what_is_allowed(tmp_path):
    from tasks.search.space import DEFAULT_RANDOM_SPACE
    from tasks.search.tune_space import DEFAULT_TUNE_SPACE

    for name, dim in DEFAULT_TUNE_SPACE.dimensions().items():
        assert dim.kind == "choice" and dim.choices == getattr(DEFAULT_RANDOM_SPACE, name)
    assert str(Dimension.parse("log_uniform:1e-5:0.1")) == "log_uniform:1e-05:0.1:2"
    for bad, words in (("units=int_log:0:512", "LOW > 0"), ("dropout=uniform:0:1.5", "dropout"),
                       ("units=gauss:1:2", "one of choice, uniform"),
                       ("activation=choice:relu,swish", "'relu', 'elu'"),
                       ("learning_rate=uniform:0.1:0.01", "LOW must be below HIGH")):
        name, text = bad.split("=")
        with pytest.raises(UserError, match=words.replace("(", r"\(")):
            make_tune_space(**{name: text})
    path = tmp_path / "space.toml"
    path.write_text('learning_rate = "log_uniform:1e-4:1e-2:3"\nunits = [32, 64]\n')
    space = read_space_file(path)
    assert space.learning_rate.kind == "log_uniform" and space.units.choices == [32, 64]
    assert space.dropout == DEFAULT_TUNE_SPACE.dropout  # left out: the default
    path.write_text("units = [32,")
    with pytest.raises(UserError, match="space.toml: not valid TOML"):
        read_space_file(path)


def test_the_command_line_reads_a_space_file_and_options_beside_it_win(tmp_path, monkeypatch):
    seen = {}

    class Recorder:  # the flow's signature and name, without running it
        fn = staticmethod(tune.fn)
        name = tune.name

        def __call__(self, **kwargs):
            seen.update(kwargs)

    monkeypatch.setattr("flows.tune.tune", Recorder())
    path = tmp_path / "space.toml"
    path.write_text('learning_rate = "log_uniform:1e-4:1e-2"\nunits = "int_log:8:64"\n')
    monkeypatch.setattr("tasks.cli.check_inputs", lambda kwargs: None)
    tune_main(["--space-file", str(path), "--units", "choice:16,32", "--trials", "7",
               "--seed", "3", "--pruner", "median"])
    space = seen["space"]
    assert space.learning_rate.kind == "log_uniform" and space.units.choices == [16, 32]
    assert (seen["trials"], seen["sampler_seed"], seen["pruner"]) == (7, 3, "median")


# --------------------------------------------------------------------------------------------
# Flows (temporary Prefect API, synthetic data)
# --------------------------------------------------------------------------------------------
pytestmark_flows = pytest.mark.usefixtures("prefect_harness")


def tiny_tune(mnist_file, tmp_path, study, trials, pruner="none", warm_start=False, **space):
    return Path(tune(space=make_tune_space(**{**TINY, **space}), trials=trials, pruner=pruner,
                     study_name=study, warm_start=warm_start,
                     run=RunOptions(data=str(mnist_file), reports_dir=str(tmp_path / "reports")),
                     fan_out=FanOut(runner="threads")))


def load(study: str) -> optuna.Study:
    return optuna.load_study(study_name=study, storage=storage_url())


@pytestmark_flows
def test_a_config_the_grid_trained_is_not_trained_again_by_a_tune(mnist_file, tmp_path,
                                                                     capsys):
    grid = Path(grid_search(space=make_space(units=[20], dropout=[0.0, 0.1], batch_size=[100],
                                             epochs=1),
        run=RunOptions(data=str(mnist_file), reports_dir=str(tmp_path / "reports"))))
    grid_val = pd.read_parquet(grid / "trials.parquet").set_index("dropout")["val_accuracy"]
    capsys.readouterr()
    # the space holds the grid's 2 configs; the third trial repeats one of them
    folder = tiny_tune(mnist_file, tmp_path, "after-grid", trials=3)
    out = capsys.readouterr().out
    assert "Tune done: 0 trained, 2 from cache, 0 failed" in out
    trials = load("after-grid").get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    for trial in trials:  # the grid's own numbers, and its epochs as intermediate values
        assert trial.value == pytest.approx(grid_val[trial.params["dropout"]])
        assert trial.intermediate_values == {1: pytest.approx(trial.value)}
        assert trial.user_attrs["cached"] is True
    frame = pd.read_parquet(folder / "trials.parquet")
    assert len(frame) == 3 and set(frame["status"]) == {"completed"}
    assert "optuna-dashboard sqlite:///" in (folder / "report.md").read_text()


@pytestmark_flows
def test_a_tune_resumes_and_a_larger_budget_trains_only_the_new_trials(mnist_file, tmp_path,
                                                                          capsys):
    space = {"units": "int_log:8:64", "dropout": "uniform:0:0.5:1", "activation":
             "choice:relu,tanh"}
    tiny_tune(mnist_file, tmp_path, "grow", trials=3, **space)
    first = {t.number: t.params for t in load("grow").get_trials()}
    assert len(first) == 3
    capsys.readouterr()
    tiny_tune(mnist_file, tmp_path, "grow", trials=5, **space)
    out = capsys.readouterr().out
    assert "3 of its own finished trials in the study, 2 more to reach 5" in out
    trials = load("grow").get_trials()
    assert len(trials) == 5 and {t.number: t.params for t in trials[:3]} == first
    # a rerun with the budget reached trains nothing
    capsys.readouterr()
    tiny_tune(mnist_file, tmp_path, "grow", trials=5, **space)
    assert "5 of its own finished trials in the study, 0 more to reach 5" in capsys.readouterr().out
    # another space under the same name is refused: its values would not compare
    with pytest.raises(UserError, match="another space"):
        tiny_tune(mnist_file, tmp_path, "grow", trials=6, units="choice:8")


def test_trials_a_dead_tune_left_running_are_asked_again_first_a_live_tunes_never(
        mnist_file, tmp_path):
    import time

    from tasks.data.prepare import prepare_data
    from tasks.search.tune.proposer import TuneProposer

    handle, _ = prepare_data(mnist_file, SplitSpec())
    space = make_tune_space(**{**TINY, "units": "int_log:8:64"})
    running, failed = optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL

    def proposer(study: str) -> TuneProposer:
        return TuneProposer(space, handle, "compiled", storage_url(), trials=4,
                            study_name=study, warm_start=False, heartbeat_interval=1,
                            grace_period=2)

    def states(study: str) -> list:
        return [t.state for t in load(study).get_trials()]

    first = proposer("killed")
    asked = first.ask()
    # its tune lives (heartbeats): another tune starting and asking leaves the trial running
    other = proposer("killed")
    time.sleep(3.5)  # longer than the grace period
    assert other.ask() is not None and states("killed")[0] == running
    first.heartbeats.stop()  # ... and both processes die: no more heartbeats
    other.heartbeats.stop()
    time.sleep(3.5)
    again = proposer("killed")
    assert states("killed")[0] == failed
    assert again.ask().config == asked.config and again.plan().trials == 4
    # had the first tune only been paused, its late tell neither raises nor revives the trial
    from tasks.trial.result import TrialResult

    first.tell(asked, TrialResult(trial_key="k", config=asked.config, val_accuracy=0.5,
                                  data_fingerprint=handle.fingerprint))
    assert states("killed")[0] == failed

    # a tune that stops with a trial in hand (not killed) fails it at once, asked first again
    stopped = proposer("stopped")
    asked = stopped.ask()
    stopped.close()
    assert states("stopped") == [failed, optuna.trial.TrialState.WAITING]
    resumed = proposer("stopped")
    assert resumed.ask().config == asked.config

    # a running trial without the heartbeat attribute (an ask cut off half-way, a tune from
    # before heartbeats) is failed at once by the next tune's recovery, under the storage lock
    legacy = optuna.load_study(study_name="stopped", storage=storage_url())
    legacy_params = legacy.ask(space.distributions()).params
    assert states("stopped")[1:] == [running, running]
    late = proposer("stopped")
    assert states("stopped")[1:3] == [running, failed]  # the resumed tune's trial lives
    assert late.ask().token.params == legacy_params


def test_a_trial_whose_tune_process_is_gone_is_failed_at_once(mnist_file, tmp_path):
    """A rerun right after a run that died (killed, or ended on a storage outage) fails the
    dead run's running trials at once, without waiting out the grace period: their owner (host,
    pid, start time) is a process of this host that is gone. A live owner's trial lives."""
    import subprocess
    import sys

    import psutil

    from tasks.data.prepare import prepare_data
    from tasks.search.tune.proposer import TuneProposer
    from tasks.search.tune.recovery import OWNER_ATTR, owner_gone, this_owner

    handle, _ = prepare_data(mnist_file, SplitSpec())
    space = make_tune_space(**{**TINY, "units": "int_log:8:64"})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_owner = {**this_owner(), "pid": dead.pid,
                  "started": round(psutil.Process(dead.pid).create_time(), 2)}
    dead.wait()
    assert owner_gone(dead_owner) and not owner_gone(this_owner())
    assert owner_gone({**this_owner(), "started": this_owner()["started"] - 100})  # pid reused
    assert not owner_gone({**dead_owner, "host": "another-host"})  # its heartbeat decides

    def proposer() -> TuneProposer:  # a grace period no test waits out
        return TuneProposer(space, handle, "compiled", storage_url(), trials=4,
                            study_name="owners", warm_start=False, grace_period=3600)

    first, second = proposer(), proposer()
    lost, kept = first.ask(), second.ask()
    first.heartbeats.stop()  # the first tune "dies": its trial's owner is gone
    first.storage.set_trial_system_attr(first.trial_id(lost.token.number), OWNER_ATTR,
                                        dead_owner)
    third = proposer()
    trials = load("owners").get_trials()
    assert [t.state.name for t in trials[:2]] == ["FAIL", "RUNNING"]
    assert third.ask().config == lost.config  # asked again first
    assert kept.token.number == 1


@pytestmark_flows
def test_a_pruned_trial_is_kept_as_pruned_and_never_taken_for_a_complete_one(
        mnist_file, tmp_path, monkeypatch, capsys):
    # a pruner that stops every trial after its second epoch
    monkeypatch.setattr("tasks.trial.pruning.make_pruner", lambda name, epochs:
                        optuna.pruners.ThresholdPruner(lower=2.0, n_warmup_steps=2))
    space = {"units": "choice:20,24", "epochs": 3}
    folder = tiny_tune(mnist_file, tmp_path, "pruned", trials=3, pruner="median", **space)
    out = capsys.readouterr().out
    assert out.count("pruned after epoch 2") == 3
    trials = load("pruned").get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.PRUNED] * 3
    assert all(sorted(t.intermediate_values) == [1, 2] for t in trials)
    configs = {(t.params["units"], t.params["dropout"]) for t in trials}
    frame = pd.read_parquet(folder / "trials.parquet")
    assert set(frame["status"]) == {"pruned"} and frame["test_accuracy"].isna().all()
    data_dir = Path(storage_url()[len("sqlite:///"):]).parent
    records = list(data_dir.glob("trials/*/pruned.json"))
    assert len(records) == len(configs)  # one per distinct config, whatever was repeated
    for record in records:  # no weights for a pruned trial
        assert not list(record.parent.glob("*.weights.npz"))
    # a later pruned tune of the same configs replays the records: pruned, nothing trained
    capsys.readouterr()
    tiny_tune(mnist_file, tmp_path, "pruned-again", trials=2, pruner="median", **space)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "pruned after epoch 2" in line]
    assert len(lines) == 2
    assert all("(trained 0.0s)" in line or "(cached)" in line for line in lines)
    # the grid asks for the same configs unpruned: they train fully, nothing from the cache
    capsys.readouterr()
    units = sorted({u for u, _ in configs})
    dropouts = sorted({d for _, d in configs})
    grid = Path(grid_search(space=make_space(units=units, dropout=dropouts, batch_size=[100],
                                             epochs=3),
        run=RunOptions(data=str(mnist_file), reports_dir=str(tmp_path / "reports"))))
    cells = len(units) * len(dropouts)
    assert f"{cells} trained, 0 from cache" in capsys.readouterr().out
    full = pd.read_parquet(grid / "trials.parquet")
    assert (full["best_epoch"] == 3).all() and full["test_accuracy"].notna().all()


@pytestmark_flows
def test_every_grid_and_random_run_is_an_optuna_study_with_its_figures(mnist_file, tmp_path):
    folder = Path(grid_search(space=make_space(units=[12, 24], dropout=[0.0, 0.3],
                                               batch_size=[100], epochs=1),
        run=RunOptions(data=str(mnist_file), reports_dir=str(tmp_path / "reports"))))
    frame = pd.read_parquet(folder / "trials.parquet")
    study = load(folder.name)
    assert study.user_attrs["kind"] == "grid"
    trials = study.get_trials()
    assert len(trials) == 4
    by_key = frame.set_index("trial_key")
    for trial in trials:
        row = by_key.loc[trial.user_attrs["trial_key"]]
        assert trial.params == {"dropout": row["dropout"], "units": row["units"],
                                "activation": "relu", "learning_rate": 0.001,
                                "batch_size": 100}
        assert trial.value == pytest.approx(row["val_accuracy"])
        assert trial.user_attrs["test_accuracy"] == pytest.approx(row["test_accuracy"])
        assert trial.duration.total_seconds() == pytest.approx(row["train_seconds"], abs=0.01)
    from tasks.reports.optuna_export import varying

    assert varying(study) == ["dropout", "units"]  # what the figures are drawn over
    importance = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(),
        params=varying(study))
    assert set(importance) == {"dropout", "units"}
    report = (folder / "report.md").read_text()
    assert "![parameter importance](param_importance.png)" in report
    assert "![parallel coordinates](parallel_coordinates.png)" in report
    for name in ("param_importance.png", "parallel_coordinates.png"):
        assert (folder / name).stat().st_size > 10_000


def test_the_pruned_status_is_not_a_completed_trial_anywhere():
    from tasks.reports.folder import trials_frame
    from tasks.search.best_of_n import best_of_n_table
    from tasks.trial.task import TrialResult

    config = TrialConfig(units=8, epochs=10)
    done = [TrialResult(trial_key=f"k{i}", config=config.model_copy(update={"seed": i}),
                        data_fingerprint="f", val_accuracy=0.5 + i / 100,
                        test_accuracy=0.5 + i / 100) for i in range(3)]
    pruned = TrialResult(trial_key="p", config=config, data_fingerprint="f", status="pruned",
                         val_accuracy=0.99, history=[{"epoch": 1, "val_accuracy": 0.99}])
    from tasks.search.best_of_n import StudyPlan

    table = best_of_n_table(StudyPlan(n_values=[2]), {(2, 0): ["k0", "k1", "k2", "p"]},
                            trials_frame([*done, pruned]))
    assert table.loc[0, "max_test_mean"] < 0.99  # the pruned trial's 0.99 is not in it


def test_the_command_line_rejects_a_bad_dimension_in_one_line():
    import subprocess
    import sys

    from conftest import PROJECT_ROOT

    bad = subprocess.run([sys.executable, "flows/tune.py", "--units", "int_log:0:512"],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "error: units='int_log:0:512': int_log needs LOW > 0 (got 0)"]


def test_a_tune_closing_during_a_storage_outage_fails_its_trials_once_the_storage_answers(
        mnist_file, tmp_path, monkeypatch):
    """The trials a tune holds when it stops are failed on its way out, the storage tried
    again with backoff (PIPELINE_OUTAGE) while it does not answer; past the bound, it raises."""
    from tasks.data.prepare import prepare_data
    from tasks.search.tune.proposer import TuneProposer

    handle, _ = prepare_data(mnist_file, SplitSpec())
    space = make_tune_space(**{**TINY, "units": "int_log:8:64"})
    tune = TuneProposer(space, handle, "compiled", storage_url(), trials=4,
                        study_name="outage", warm_start=False)
    asked = tune.ask()
    real_fail, calls = tune.fail, []

    def flaky(number):
        calls.append(number)
        if len(calls) <= 2:
            raise ConnectionError("the storage restarting")
        return real_fail(number)

    monkeypatch.setattr(tune, "fail", flaky)
    monkeypatch.setenv("PIPELINE_OUTAGE", "10")
    tune.close()
    assert len(calls) == 3
    assert [t.state.name for t in load("outage").get_trials()] == ["FAIL", "WAITING"]
    # past the outage bound, the error is raised (the exit hook says it in one line)
    again = TuneProposer(space, handle, "compiled", storage_url(), trials=4,
                         study_name="outage", warm_start=False)
    assert again.ask().config == asked.config

    def down(number):
        raise ConnectionError("the storage away")

    monkeypatch.setattr(again, "fail", down)
    monkeypatch.setenv("PIPELINE_OUTAGE", "0.5")
    with pytest.raises(ConnectionError):
        again.close()
