"""``--budget``: the budget's text, the cost model, and the loop that never starts a trial the
rest of the budget cannot finish (a synthetic cost model, no training), then a real budgeted
random search and tune on synthetic data, and warm starts."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
import pytest
from prefect import flow, task

from tasks.config import SplitSpec, TrialConfig, trial_key
from tasks.errors import UserError
from tasks.run_options import FanOut, RunOptions
from tasks.search import loop
from tasks.search.proposers import ListProposer
from tasks.search.spending import (
    DEFAULT_SECONDS_PER_COST,
    CostModel,
    Spending,
    Verdict,
    parse_budget,
)
from tasks.trial.result import TrialResult


# --------------------------------------------------------------------------------------------
# The budget's text
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, minutes", [("10m", 10.0), ("90s", 1.5), ("1.5h", 90.0),
                                           ("2", 2.0), (" 30 min ", 30.0), (".5m", 0.5),
                                           (3, 3.0)])
def test_a_budget_is_read_in_training_minutes(text, minutes):
    assert parse_budget(text) == pytest.approx(minutes)


@pytest.mark.parametrize("text", ["ten", "10 days", "-5m", "0", "0s", ""])
def test_a_bad_budget_is_one_line_naming_the_value_and_what_is_allowed(text):
    with pytest.raises(ValueError, match=r"budget=.*(10m, 90s, 1.5h|more than 0)"):
        parse_budget(text)


def test_the_command_line_refuses_a_bad_budget_and_a_budget_with_the_study(capsys):
    from flows.random_search import main

    with pytest.raises(UserError, match=r"^budget='soon': expected training minutes as a "
                                        r"number with an optional unit: 10m, 90s, 1.5h"):
        main(["--budget", "soon"])
    with pytest.raises(UserError, match="a budget applies to a plain search"):
        main(["--study", "--budget", "10m"])


# --------------------------------------------------------------------------------------------
# The cost model
# --------------------------------------------------------------------------------------------
def result(config: TrialConfig, seconds: float, status: str = "completed",
           epochs_done: int | None = None, fingerprint: str = "fp") -> TrialResult:
    done = config.epochs if epochs_done is None else epochs_done
    return TrialResult(trial_key=trial_key(config, fingerprint), config=config,
                       data_fingerprint=fingerprint, status=status, val_accuracy=0.9,
                       test_accuracy=0.9, train_seconds=seconds,
                       history=[{"epoch": float(e + 1), "val_accuracy": 0.9}
                                for e in range(done)])


def test_the_cost_model_uses_the_config_then_its_shape_then_a_size_model():
    a = TrialConfig(units=64, batch_size=32, epochs=2, dropout=0.1)
    same_shape = TrialConfig(units=64, batch_size=32, epochs=2, dropout=0.5)
    other = TrialConfig(units=16, batch_size=128, epochs=1)
    pruned = TrialConfig(units=64, batch_size=32, epochs=2, dropout=0.3)
    model = CostModel([result(a, 10.0), result(same_shape, 14.0),
                       result(pruned, 4.0, "pruned", epochs_done=1)], train_size=600)
    assert model.predict(a, trial_key(a, "fp")) == 10.0  # its own time
    # a new config of that shape: the mean of its shape, the pruned one scaled to 2 epochs
    new = TrialConfig(units=64, batch_size=32, epochs=2, dropout=0.2)
    assert model.predict(new) == pytest.approx((10 + 14 + 8) / 3)
    assert "3 trials of its shape" in model.source(new)
    # another shape: the median seconds per unit of training_cost
    rates = sorted(s / c.training_cost(600) for s, c in ((10, a), (14, same_shape),
                                                          (8, pruned)))
    assert model.predict(other) == pytest.approx(rates[1] * other.training_cost(600))
    assert model.source(other) == "size model"
    # nothing measured yet: the default rate
    assert CostModel([], 600).predict(other) == pytest.approx(
        DEFAULT_SECONDS_PER_COST * other.training_cost(600))


def test_a_trial_starts_only_if_the_rest_of_the_budget_can_finish_it():
    big, small = TrialConfig(units=64), TrialConfig(units=16)
    model = CostModel([result(big, 50.0), result(small, 10.0)], train_size=600)
    spending = Spending(1.0, model, "fp", "compiled")  # 60 s
    assert spending.admit(big) is Verdict.START
    spending.started(big)
    assert spending.admit(small) is Verdict.START  # 50 + 10 <= 60
    spending.started(small)
    other_big = TrialConfig(units=64, dropout=0.2)  # 50 s predicted by its shape
    assert spending.admit(other_big) is Verdict.WAIT  # in flight: wait for them
    spending.charge(result(big, 45.0))
    spending.charge(result(small, 9.0))
    assert spending.spent_seconds == 54.0
    assert spending.admit(other_big) is Verdict.STOP  # nothing in flight, does not fit
    summary = spending.summary()
    assert summary.trials == 2 and summary.spent_minutes == pytest.approx(0.9)
    assert summary.overrun == pytest.approx(-0.1)
    assert "did not fit in the 6.0 s left" in summary.line()


def test_a_cached_config_is_taken_while_budget_is_left_at_its_measured_time():
    cached, new = TrialConfig(units=64), TrialConfig(units=64, dropout=0.2)
    model = CostModel([result(cached, 50.0)], train_size=600)
    spending = Spending(0.5, model, "fp", "compiled")  # 30 s: less than the cached 50 s
    assert spending.admit(new) is Verdict.STOP  # not cached, predicted 50 s: not started
    spending = Spending(0.5, model, "fp", "compiled")
    assert spending.admit(cached) is Verdict.START  # nothing to train: taken
    spending.started(cached)
    spending.charge(result(cached, 50.0).model_copy(update={"cached": True}))
    assert spending.summary().from_cache == 1 and spending.spent_seconds == 50.0
    assert spending.admit(TrialConfig(units=8)) is Verdict.STOP


# --------------------------------------------------------------------------------------------
# The loop on a budget, with a synthetic cost model (no training)
# --------------------------------------------------------------------------------------------
def true_seconds(config: TrialConfig) -> float:
    """The synthetic cost of a trial: what the fake task reports as its training time."""
    return config.units / 4 + config.dropout * 10


@task
def fake_trial(config, data, backend="compiled", data_dir=None, link=None) -> TrialResult:
    key = trial_key(config, data.fingerprint, backend)
    return TrialResult(trial_key=key, config=config, data_fingerprint=data.fingerprint,
                       backend=backend, val_accuracy=config.units / 1000,
                       test_accuracy=config.units / 1000,
                       train_seconds=true_seconds(config),
                       history=[{"epoch": 1.0, "val_accuracy": config.units / 1000}])


@pytest.fixture
def synthetic_handle(mnist_file):
    from tasks.data.prepare import prepare_data

    handle, _ = prepare_data(mnist_file, SplitSpec())
    return handle


def configs_for_budget() -> list[TrialConfig]:
    return [TrialConfig(units=u, dropout=d, epochs=1) for u in (8, 40, 16, 64, 24, 32, 48, 8)
            for d in (0.0, 0.5)][:14]


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("minutes, workers", [(0.5, 1), (0.5, 2), (1.3, 2), (10.0, 2)])
def test_the_loop_never_starts_a_trial_the_budget_cannot_finish(synthetic_handle, monkeypatch,
                                                                minutes, workers):
    monkeypatch.setattr(loop, "configured_task", lambda refresh=False: fake_trial)
    configs = configs_for_budget()
    # an exact model: every shape (units, batch, epochs) measured once before the run
    # (by configs of another seed: none of the run's configs is in the cache)
    model = CostModel([result(c.model_copy(update={"seed": 1}), true_seconds(c),
                              fingerprint=synthetic_handle.fingerprint)
                       for c in configs if c.dropout == 0.0], synthetic_handle.train_size)
    # ... exact for dropout 0, and 5 s low for dropout 0.5: the over-run is bounded by that
    spending = Spending(minutes, model, synthetic_handle.fingerprint, "compiled")
    proposer = ListProposer(configs, synthetic_handle, "random", "Random search",
                            in_order=True)

    @flow
    def budgeted() -> list[TrialResult]:
        return loop.run_trials(proposer, synthetic_handle, RunOptions(),
                               FanOut(runner="threads", workers=workers), spending=spending)

    results = budgeted()
    spent = sum(r.train_seconds for r in results)
    assert spent == pytest.approx(spending.spent_seconds)
    budget = minutes * 60
    # the trials bought are the first ones in the order given: no cheaper one jumped ahead
    assert [r.config for r in results] == configs[:len(results)]
    if len(results) < len(configs):  # ended by the budget: the next one did not fit
        refused = configs[len(results)]
        assert spending.refused is not None and spending.refused[0] == refused.label()
        assert spent + spending.predict(refused) > budget
    # every start fitted by its prediction; only a prediction's error can over-run
    misses = sum(5.0 for r in results if r.config.dropout == 0.5)
    assert spent <= budget + misses
    summary = spending.summary()
    assert summary.trials == len(results) and summary.budget_minutes == minutes


@pytest.mark.parametrize("true, predicted", [(20.0, 10.0), (10.0, 20.0)])
def test_predictions_follow_the_runs_own_pace(true, predicted):
    """The cache's times came from a machine twice as fast (or slow) as this run's: after
    PACE_AFTER trained trials the predictions are scaled, and the budget is spent to within
    one trial without over-running it."""
    configs = [TrialConfig(units=8 + i) for i in range(40)]  # a shape each
    model = CostModel([result(c.model_copy(update={"seed": 9}), predicted) for c in configs],
                      600)  # every shape measured in the cache, at the other machine's pace
    spending = Spending(2.0, model, "fp", "compiled")  # 120 s
    for config in configs:
        verdict = spending.admit(config)
        if verdict is Verdict.STOP:
            break
        spending.started(config)
        spending.charge(result(config, true))
    assert spending.pace() == pytest.approx(true / predicted, rel=0.2)
    assert 120 - true < spending.spent_seconds <= 120
    assert spending.refused is not None and "at this run's pace" in spending.refused[2]
    assert spending.predict(configs[-1]) == pytest.approx(
        model.predict(configs[-1]) * spending.pace())
    # a shape this run trained is predicted by this run's own measurements
    again = spending.run_shapes and configs[0].model_copy(update={"dropout": 0.5})
    assert spending.predict(again) == pytest.approx(true)
    assert "trained in this run" in spending.source(again)


def test_with_one_worker_the_budget_is_never_exceeded_by_an_exact_model():
    """The gate alone, driven one trial at a time over many random pools."""
    import numpy as np

    rng = np.random.default_rng(0)
    for _ in range(200):
        costs = rng.uniform(1, 60, size=30)
        configs = [TrialConfig(units=8 + i) for i in range(30)]  # one shape each
        # measured before: another config of each shape (not the configs themselves)
        model = CostModel([result(c.model_copy(update={"dropout": 0.5}), s)
                           for c, s in zip(configs, costs, strict=True)], 600)
        spending = Spending(float(rng.uniform(0.1, 20)), model, "fp", "compiled")
        for config, cost in zip(configs, costs, strict=True):
            verdict = spending.admit(config)
            assert verdict is not Verdict.WAIT  # nothing in flight
            if verdict is Verdict.STOP:
                assert spending.spent_seconds + cost > spending.budget_seconds
                break
            spending.started(config)
            spending.charge(result(config, cost))
            assert spending.spent_seconds <= spending.budget_seconds + 1e-9


# --------------------------------------------------------------------------------------------
# Real runs on synthetic data
# --------------------------------------------------------------------------------------------
pytestmark_flows = pytest.mark.usefixtures("prefect_harness")


@pytestmark_flows
def test_a_budgeted_random_search_reports_its_budget_and_replays_from_the_cache(
        mnist_file, tmp_path, capsys):
    from flows.random_search import random_search
    from tasks.search.space import make_space

    space = make_space(units=[8, 16, 24, 32, 48, 64], dropout=[0.0, 0.2, 0.4],
                       batch_size=[100, 200], learning_rate=[0.01], activation=["relu"],
                       epochs=1)
    run = RunOptions(data=str(mnist_file), reports_dir=str(tmp_path / "reports"))
    fan_out = FanOut(runner="threads", workers=1)
    # what the first config drawn costs on this machine now: the budget is 2.5 times that
    first = pd.read_parquet(Path(random_search(space=space, trials=1, draw_seed=5, run=run,
                                               fan_out=fan_out)) / "trials.parquet")
    budget = f"{2.5 * first['train_seconds'].iloc[0]:.1f}s"

    def search() -> tuple[pd.DataFrame, str, str]:
        capsys.readouterr()
        folder = Path(random_search(space=space, budget=budget, draw_seed=5, run=run,
                                    fan_out=fan_out))
        return (pd.read_parquet(folder / "trials.parquet"), (folder / "report.md").read_text(),
                capsys.readouterr().out)

    frame, report, out = search()
    # the first draw (cached) is taken; the budget ends the search long before the 36 configs
    assert 1 <= len(frame) < space.size and frame["trial_key"].iloc[0] == first["trial_key"][0]
    shown = budget.removesuffix("s")
    assert f"Budget: {float(shown):.3g} s of training" in out
    assert f"Budget {float(shown):.3g} s of training:" in report
    assert frame["train_seconds"].sum() <= float(shown) + frame["train_seconds"].max()
    assert f"{len(frame)} trials bought" in report
    # the same command again: the same trials, all from the cache, at their measured time
    again, report_again, out_again = search()
    assert list(again["trial_key"]) == list(frame["trial_key"])
    assert set(again["cached"]) == {True}
    assert f"{len(frame)} trials bought ({len(frame)} of them from the cache" in report_again
    assert "0 trained" in out_again


@pytestmark_flows
def test_a_warm_tune_imports_every_cached_trial_of_its_space_and_trains_only_new_ones(
        mnist_file, tmp_path, capsys):
    from flows.grid import grid_search
    from flows.tune import tune
    from tasks.search.optuna_storage import IMPORTED_ATTR, storage_url
    from tasks.search.space import make_space
    from tasks.search.tune_space import make_tune_space

    run = RunOptions(data=str(mnist_file), reports_dir=str(tmp_path / "reports"))
    grid_search(space=make_space(units=[12, 20], dropout=[0.0, 0.1], batch_size=[150],
                                 learning_rate=[0.001], activation=["relu"], epochs=1),
                run=run)
    # a 1-epoch grid cell outside the tune's space (other epochs) is not imported
    grid_search(space=make_space(units=[12], dropout=[0.0], batch_size=[150],
                                 learning_rate=[0.001], activation=["relu"], epochs=2), run=run)
    space = make_tune_space(units="choice:12,20,28", dropout="choice:0,0.1",
                            activation="choice:relu", learning_rate="choice:0.001",
                            batch_size="choice:150", epochs=1)
    capsys.readouterr()
    folder = Path(tune(space=space, trials=2, study_name="warm", run=run,
                       fan_out=FanOut(runner="threads")))
    out = capsys.readouterr().out
    assert "warm start: 4 trials imported from the cache now, 4 in all" in out
    study = optuna.load_study(study_name="warm", storage=storage_url())
    imported = [t for t in study.trials if t.user_attrs.get(IMPORTED_ATTR)]
    own = [t for t in study.trials if not t.user_attrs.get(IMPORTED_ATTR)
           and t.state == optuna.trial.TrialState.COMPLETE]
    repeats = [t for t in study.trials if t.user_attrs.get("repeat_of")]
    assert len(imported) == 4 and len(own) == 2
    # a proposal of an imported config was replaced by one the study did not hold
    assert all(t.state == optuna.trial.TrialState.FAIL for t in repeats)
    assert not {t.params["units"] for t in own} <= {12, 20} or not repeats
    assert {(t.params["units"], t.params["dropout"]) for t in imported} == {
        (12, 0.0), (12, 0.1), (20, 0.0), (20, 0.1)}
    assert all(t.intermediate_values for t in imported)
    # the tune's own trials: what the grid did not train is trained, the rest is free
    report = (folder / "report.md").read_text()
    assert "4 of them imported from the cache by warm starts (4 by this run)" in report
    # on the cost axis: the tune's own 2 trials, beside random orders of the 4 imported ones
    path = pd.read_parquet(folder / "trajectory.parquet")
    assert len(path) == 2 and path["minutes"].is_monotonic_increasing
    assert len(pd.read_parquet(folder / "best_by_budget.parquet")) > 0
    assert "random orders of the 4 trials the warm start imported" in report
    # a second start imports nothing new; a cold start imports nothing
    capsys.readouterr()
    tune(space=space, trials=3, study_name="warm", run=run, fan_out=FanOut(runner="threads"))
    assert "warm start: 0 trials imported from the cache now, 4 in all" in capsys.readouterr().out
    capsys.readouterr()
    tune(space=space, trials=1, study_name="cold", warm_start=False, run=run,
         fan_out=FanOut(runner="threads"))
    out = capsys.readouterr().out
    assert "warm start" not in out
    cold = optuna.load_study(study_name="cold", storage=storage_url())
    assert not any(t.user_attrs.get(IMPORTED_ATTR) for t in cold.trials)


@pytestmark_flows
def test_a_budgeted_tune_stops_before_the_budget_and_leaves_no_trial_running(
        mnist_file, tmp_path, capsys):
    from flows.tune import tune
    from tasks.search.optuna_storage import storage_url
    from tasks.search.tune_space import make_tune_space

    space = make_tune_space(units="int_log:8:64", dropout="uniform:0:0.5:1",
                            activation="choice:relu", learning_rate="choice:0.001",
                            batch_size="choice:100", epochs=1)
    run = RunOptions(data=str(mnist_file), reports_dir=str(tmp_path / "reports"))
    capsys.readouterr()
    folder = Path(tune(space=space, budget="2s", study_name="budgeted", warm_start=False,
                       run=run, fan_out=FanOut(runner="threads", workers=1)))
    out = capsys.readouterr().out
    study = optuna.load_study(study_name="budgeted", storage=storage_url())
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete and "Budget 2 s of training:" in out and "trials bought" in out
    assert "0 of its own finished trials in the study, more until the budget is spent" in out
    withdrawn = [t for t in study.trials if t.user_attrs.get("withdrawn")]
    assert len(withdrawn) == 1 and withdrawn[0].state == optuna.trial.TrialState.FAIL
    assert len(study.get_trials(states=(optuna.trial.TrialState.WAITING,))) == 1  # asked next
    report = (folder / "report.md").read_text()
    assert f"{len(complete)} trials bought" in report


@pytest.mark.usefixtures("prefect_harness")
def test_a_config_the_search_already_held_costs_no_budget(synthetic_handle, monkeypatch):
    """A tune asking a trial its study held before the run (imported by a warm start, or its
    own from an earlier run) spends nothing: not gated, not charged."""
    monkeypatch.setattr(loop, "configured_task", lambda refresh=False: fake_trial)
    configs = configs_for_budget()[:6]

    class Known(ListProposer):
        def ask(self):
            asked = super().ask()
            return None if asked is None else loop.Ask(asked.config, known=True)

    spending = Spending(0.01, CostModel([], synthetic_handle.train_size),  # 0.6 s
                        synthetic_handle.fingerprint, "compiled")
    proposer = Known(configs, synthetic_handle, "tune", "Tune", in_order=True)

    @flow
    def known() -> list[TrialResult]:
        return loop.run_trials(proposer, synthetic_handle, RunOptions(),
                               FanOut(runner="threads", workers=2), spending=spending)

    assert len(known()) == 6  # every one told, though each costs more than the budget
    assert spending.spent_seconds == 0 and spending.summary().trials == 0


def test_a_tune_asks_an_unseen_config_instead_of_a_trial_its_study_holds(mnist_file):
    from tasks.data.prepare import prepare_data
    from tasks.search.optuna_storage import storage_url
    from tasks.search.tune.proposer import TuneProposer
    from tasks.search.tune_space import make_tune_space

    handle, _ = prepare_data(mnist_file, SplitSpec())
    space = make_tune_space(units="choice:20,28", dropout="choice:0,0.1",
                            activation="choice:relu", learning_rate="choice:0.001",
                            batch_size="choice:150", epochs=1)
    configs = [space.config({"units": u, "dropout": d, "activation": "relu",
                             "learning_rate": 0.001, "batch_size": 150})
               for u in (20, 28) for d in (0.0, 0.1)]
    keys = [trial_key(c, handle.fingerprint) for c in configs]
    proposer = TuneProposer(space, handle, "compiled", storage_url(), trials=100,
                            study_name="unseen", warm_start=False)
    proposer.known_keys = set(keys[:3])  # as if the study held three of the four
    for _ in range(3):  # whatever the sampler proposes, the one unseen config is asked
        asked = proposer.ask()
        assert asked.config == configs[3] and not asked.known
        proposer.heartbeats.release(asked.token.number)
        proposer.known_keys, proposer.asked_keys = set(keys[:3]), set()
    repeats = [t for t in proposer.study.trials if t.user_attrs.get("repeat_of")]
    assert all(t.state == optuna.trial.TrialState.FAIL for t in repeats)
    assert {t.user_attrs["repeat_of"] for t in repeats} <= set(keys[:3])
    # nor is a config this run asked and is still training asked again
    proposer.known_keys, proposer.asked_keys = set(keys[:2]), set()
    first, second = proposer.ask(), proposer.ask()
    assert {first.config, second.config} == set(configs[2:])
    for asked in (first, second):
        proposer.heartbeats.release(asked.token.number)
    # nothing unseen is left: the repeat is asked (it costs nothing), and 25 in a row stop
    proposer.known_keys, proposer.asked_keys = set(keys), set()
    asks = [proposer.ask() for _ in range(30)]
    done = [a for a in asks if a is not None]
    assert all(a.known for a in done) and len(done) == 25 and asks[-1] is None
    proposer.close()
