"""Multi-objective tunes (``--objectives val_accuracy params``): the objectives checked in one
line, the study's two directions and Pareto front, warm starts with both values, the
objectives as part of the study's identity, and the report's Pareto-front figure. Synthetic
data, 1 epoch, tiny spaces."""

from pathlib import Path

import optuna
import pandas as pd
import pytest

from flows.tune import main as tune_main
from flows.tune import tune
from tasks.cli import run_cli
from tasks.errors import UserError
from tasks.run_options import FanOut, RunOptions
from tasks.search.optuna_storage import IMPORTED_ATTR, storage_url
from tasks.search.pareto import pareto_front
from tasks.search.tune.objectives import check_objectives
from tasks.search.tune_space import make_tune_space

TINY = {"units": "choice:20", "dropout": "choice:0,0.1", "activation": "choice:relu",
        "learning_rate": "choice:0.001", "batch_size": "choice:100", "epochs": 1}
#: Networks of different sizes, so the two objectives have a front to speak of.
SIZES = {"units": "int_log:8:64", "dropout": "uniform:0:0.5:1"}
BOTH = ["val_accuracy", "params"]
PRUNING_REFUSED = ("pruner='median' with 2 objectives: Optuna cannot prune a multi-objective "
                   "study; use --pruner none")


def tiny_tune(mnist_file, tmp_path, study, trials, objectives=("val_accuracy",),
              pruner="none", warm_start=False, sampler="tpe", **space):
    return Path(tune(space=make_tune_space(**{**TINY, **space}), trials=trials, pruner=pruner,
                     study_name=study, warm_start=warm_start, objectives=list(objectives),
                     sampler=sampler,
                     run=RunOptions(data=str(mnist_file), reports_dir=str(tmp_path / "reports")),
                     fan_out=FanOut(runner="threads")))


def load(study: str) -> optuna.Study:
    return optuna.load_study(study_name=study, storage=storage_url())


def point(val_accuracy: float, params: float) -> tuple[float, float]:
    return round(float(val_accuracy), 12), round(float(params), 6)


# --------------------------------------------------------------------------------------------
# The objectives, checked before anything starts (no training)
# --------------------------------------------------------------------------------------------
def test_objectives_are_read_spaced_or_comma_separated_and_a_bad_list_is_one_line():
    assert check_objectives(["val_accuracy"]) == ["val_accuracy"]
    assert check_objectives(BOTH) == BOTH
    assert check_objectives(["val_accuracy,params"]) == BOTH
    assert check_objectives("val_accuracy, params") == BOTH
    assert check_objectives("val_accuracy,params,latency") == [*BOTH, "latency"]
    allowed = r"allowed: val_accuracy, params, latency \(val_accuracy first\)"
    for bad, words in ((["val_accuracy", "flops"], "unknown objective 'flops'"),
                       (["params", "val_accuracy"], "the first objective must be val_accuracy"),
                       ([], "none given")):
        with pytest.raises(UserError, match=f"{words}.*{allowed}") as caught:
            check_objectives(bad)
        assert "\n" not in str(caught.value)
    with pytest.raises(UserError, match="params given more than once"):
        check_objectives(["val_accuracy", "params", "params"])
    with pytest.raises(UserError, match=f"^{PRUNING_REFUSED}$"):
        check_objectives(BOTH, "median")
    assert check_objectives(["val_accuracy"], "median") == ["val_accuracy"]  # as before


def test_the_command_line_refuses_pruning_and_unknown_objectives_in_one_line(
        monkeypatch, capsys):
    class Never:  # the flow's signature and name; running it fails the test
        fn = staticmethod(tune.fn)
        name = tune.name

        def __call__(self, **kwargs):  # pragma: no cover (the point: nothing starts)
            raise AssertionError("the flow started")

    monkeypatch.setattr("tasks.cli.check_inputs", lambda kwargs: None)
    monkeypatch.setattr("flows.tune.tune", Never())
    with pytest.raises(UserError, match=f"^{PRUNING_REFUSED}$"):
        tune_main(["--objectives", "val_accuracy", "params", "--pruner", "median"])
    with pytest.raises(UserError, match=r"^pruner='hyperband' with 2 objectives"):
        tune_main(["--objectives", "val_accuracy,params", "--pruner", "hyperband"])
    capsys.readouterr()
    assert run_cli(tune_main, ["--objectives", "val_accuracy", "flops"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "unknown objective 'flops'" in lines[0]
    assert "allowed: val_accuracy, params, latency" in lines[0]


# --------------------------------------------------------------------------------------------
# Flows (temporary Prefect API, synthetic data)
# --------------------------------------------------------------------------------------------
pytestmark_flows = pytest.mark.usefixtures("prefect_harness")


@pytestmark_flows
def test_the_flow_refuses_pruning_and_unknown_objectives_before_anything_trains(
        mnist_file, tmp_path, monkeypatch):
    def never(*args, **kwargs):  # pragma: no cover (the point: nothing starts)
        raise AssertionError("the tune started")

    monkeypatch.setattr("flows.tune.prepare_data_task", never)
    monkeypatch.setattr("flows.tune.run_trials", never)
    with pytest.raises(UserError, match=f"^{PRUNING_REFUSED}$"):
        tiny_tune(mnist_file, tmp_path, "mo-pruned", trials=2, objectives=BOTH,
                  pruner="median", **SIZES)
    with pytest.raises(UserError, match="unknown objective 'flops'"):
        tiny_tune(mnist_file, tmp_path, "mo-flops", trials=2,
                  objectives=["val_accuracy", "flops"], **SIZES)
    for name in ("mo-pruned", "mo-flops"):
        with pytest.raises(KeyError):
            load(name)


@pytestmark_flows
def test_a_two_objective_tune_keeps_the_pareto_front_of_accuracy_and_size(mnist_file,
                                                                          tmp_path, capsys):
    folder = tiny_tune(mnist_file, tmp_path, "mo", trials=4, objectives=BOTH, **SIZES)
    assert "objectives val_accuracy, params" in capsys.readouterr().out
    study = load("mo")
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE,
                                optuna.study.StudyDirection.MINIMIZE]
    assert study.metric_names == BOTH
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 4
    for trial in trials:  # told (val_accuracy, param_count); the epochs as intermediate values
        stored = trial.user_attrs["result"]
        assert trial.values == [pytest.approx(stored["val_accuracy"]),
                                float(stored["param_count"])]
        assert trial.intermediate_values == {1: pytest.approx(trial.values[0])}
    # Optuna's Pareto front is the project's, on the report's trials (up to ties)
    frame = pd.read_parquet(folder / "trials.parquet")
    assert len(frame) == 4
    front = pareto_front(frame)
    assert {point(*t.values) for t in study.best_trials} == {
        point(a, p) for a, p in zip(front["val_accuracy"], front["param_count"], strict=True)}
    report = (folder / "report.md").read_text()
    assert "Objectives: val_accuracy (maximize), params (minimize)" in report
    assert "![Optuna's Pareto front](pareto_front_optuna.png)" in report
    assert "## Accuracy against size" in report  # the project's own section stays
    for name in ("pareto_front_optuna.png", "pareto.png", "history.png", "slice.png",
                 "parallel_coordinates.png", "param_importance.png"):
        assert (folder / name).stat().st_size > 5_000, name

    # the random sampler extends the same study; a warm start imports both values
    tiny_tune(mnist_file, tmp_path, "mo", trials=5, objectives=BOTH, sampler="random",
              **SIZES)
    assert len(load("mo").get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 5
    tiny_tune(mnist_file, tmp_path, "mo-warm", trials=1, objectives=BOTH, warm_start=True,
              **SIZES)
    warm = load("mo-warm")
    imported = [t for t in warm.trials if t.user_attrs.get(IMPORTED_ATTR)]
    assert len(imported) >= len({t.user_attrs["trial_key"] for t in load("mo").trials})
    for trial in imported:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert trial.values == [pytest.approx(trial.user_attrs["result"]["val_accuracy"]),
                                float(trial.user_attrs["result"]["param_count"])]


@pytestmark_flows
def test_a_study_refuses_other_objectives_under_the_same_name(mnist_file, tmp_path):
    tiny_tune(mnist_file, tmp_path, "one-objective", trials=1)
    with pytest.raises(UserError, match="study 'one-objective' in .* was run with objectives "
                                        "val_accuracy, this run asks for val_accuracy,params"):
        tiny_tune(mnist_file, tmp_path, "one-objective", trials=2, objectives=BOTH)
    single = load("one-objective")
    assert len(single.directions) == 1 and len(single.trials) == 1  # untouched
    tiny_tune(mnist_file, tmp_path, "two-objectives", trials=1, objectives=BOTH)
    with pytest.raises(UserError, match="was run with objectives val_accuracy,params, this "
                                        "run asks for val_accuracy:"):
        tiny_tune(mnist_file, tmp_path, "two-objectives", trials=2)


@pytestmark_flows
def test_a_tune_can_trade_accuracy_against_measured_latency(mnist_file, tmp_path):
    folder = tiny_tune(mnist_file, tmp_path, "mo-latency", trials=3,
                       objectives=["val_accuracy", "latency"], **SIZES)
    study = load("mo-latency")
    assert study.metric_names == ["val_accuracy", "latency"]
    for trial in study.get_trials():  # told the latency each trial measured after training
        stored = trial.user_attrs["result"]
        assert stored["latency_ms"] > 0
        assert trial.values == [pytest.approx(stored["val_accuracy"]),
                                pytest.approx(stored["latency_ms"])]
    report = (folder / "report.md").read_text()
    assert "latency (minimize)" in report and "## Accuracy against latency" in report


@pytestmark_flows
def test_three_objectives_make_one_study_and_a_report(mnist_file, tmp_path):
    three = [*BOTH, "latency"]
    folder = tiny_tune(mnist_file, tmp_path, "mo-three", trials=2, objectives=three, **SIZES)
    study = load("mo-three")
    assert study.metric_names == three and len(study.directions) == 3
    assert all(len(t.values) == 3 for t in study.get_trials())
    report = (folder / "report.md").read_text()
    assert "params (minimize), latency (minimize)" in report
