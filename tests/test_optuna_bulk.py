"""Finished trials written to an Optuna study in one transaction read back exactly as Optuna's
own ``add_trials`` writes them."""

from __future__ import annotations

import datetime

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from tasks.search.optuna_bulk import add_trials

DISTRIBUTIONS = {"units": IntDistribution(8, 512, log=True),
                 "dropout": FloatDistribution(0.0, 0.6),
                 "activation": CategoricalDistribution(["relu", "tanh"])}


def trials(count: int, values: int = 1) -> list:
    start = datetime.datetime(2026, 12, 1, 12, 0, 0)
    made = []
    for i in range(count):
        trial = create_trial(
            state=TrialState.COMPLETE if i % 5 else TrialState.PRUNED,
            values=[0.9 + i / 1000, float(i)][:values] if i % 5 else None,
            params={"units": 8 * (1 + i % 64), "dropout": (i % 7) / 10,
                    "activation": ["relu", "tanh"][i % 2]},
            distributions=DISTRIBUTIONS,
            user_attrs={"trial_key": f"k{i}", "test_accuracy": 0.5 + i / 1e4},
            system_attrs={"note": [i, "x"]},
            intermediate_values={epoch: 0.1 * epoch + i / 1e5 for epoch in range(1, 11)})
        trial.datetime_start = start + datetime.timedelta(seconds=i)
        trial.datetime_complete = start + datetime.timedelta(seconds=i + 1)
        made.append(trial)
    return made


def read(study) -> list[tuple]:
    return [(t.number, t.state, t.values, t.params, t.distributions, t.user_attrs,
             t.system_attrs, t.intermediate_values, t.datetime_start, t.datetime_complete)
            for t in study.get_trials(deepcopy=False)]


@pytest.mark.parametrize("objectives", [1, 2])
def test_bulk_trials_read_back_as_optunas_own(tmp_path, objectives):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    directions = ["maximize", "minimize"][:objectives]
    ours = optuna.create_study(study_name="ours", storage=storage, directions=directions)
    theirs = optuna.create_study(study_name="theirs", storage=storage, directions=directions)
    first, second = trials(30, objectives), trials(20, objectives)
    for study in (ours, theirs):  # a study that already holds trials: numbered after them
        study.add_trials(first)
    add_trials(ours, second)
    theirs.add_trials(second)
    assert read(ours) == read(theirs) and len(read(ours)) == 50
    # and as a fresh process reads them from the file
    reopened = optuna.load_study(study_name="ours", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert read(reopened) == read(theirs)


def test_a_parameter_with_another_distribution_is_refused_as_optuna_refuses_it(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    add_trials(study, trials(3))
    other = create_trial(value=0.5, params={"units": "big"},
                         distributions={"units": CategoricalDistribution(["big"])})
    with pytest.raises(ValueError):
        add_trials(study, [other])
    assert len(study.get_trials()) == 3  # nothing of the refused batch was written


def test_an_in_memory_study_gets_optunas_own_add_trials():
    study = optuna.create_study()
    add_trials(study, trials(4))
    assert [t.number for t in study.get_trials()] == [0, 1, 2, 3]
