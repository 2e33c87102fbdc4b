"""Grid expansion, random sampling and the best-of-N estimator."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from tasks.errors import UserError
from tasks.search.best_of_n import (
    StudyPlan,
    best_of_n_table,
    expected_best_of_n,
    study_configs,
    subset_count,
    trainings_needed,
)
from tasks.search.space import (
    DEFAULT_GRID,
    DEFAULT_RANDOM_SPACE,
    expand_grid,
    make_space,
    sample_configs,
)


def test_default_grid_is_the_exercise_grid_in_its_order():
    configs = expand_grid(DEFAULT_GRID)
    assert len(configs) == 25
    assert [(c.dropout, c.units) for c in configs[:6]] == [
        (0.0, 16), (0.0, 32), (0.0, 64), (0.0, 128), (0.0, 256), (0.1, 16)]
    assert {c.batch_size for c in configs} == {32} and {c.epochs for c in configs} == {10}


def test_grid_is_the_product_of_the_value_lists():
    space = make_space(dropout=[0, 0.5], units=[16, 64], activation=["relu", "tanh"], epochs=1)
    configs = expand_grid(space)
    assert len(configs) == space.size == 8
    assert {(c.dropout, c.units, c.activation) for c in configs} == set(
        itertools.product([0.0, 0.5], [16, 64], ["relu", "tanh"]))


@pytest.mark.parametrize("values, words", [
    (dict(units=[]), "units has no values"),
    (dict(dropout=[0.1, 1.5]), "dropout=1.5"),
    (dict(learning_rate=[0.0]), "learning_rate=0.0"),
    (dict(batch_size=[0]), "batch_size=0"),
])
def test_bad_spaces_fail_with_one_line(values, words):
    with pytest.raises(UserError, match=words):
        make_space(**values)


def test_sampling_has_no_repeats_and_is_reproducible():
    a = sample_configs(DEFAULT_RANDOM_SPACE, 200, seed=1)
    assert len({c.canonical_json() for c in a}) == 200
    assert a == sample_configs(DEFAULT_RANDOM_SPACE, 200, seed=1)
    assert a != sample_configs(DEFAULT_RANDOM_SPACE, 200, seed=2)
    small = make_space(units=[8, 16], dropout=[0.0, 0.5], epochs=1)
    everything = sample_configs(small, 4, seed=0)
    assert {c.canonical_json() for c in everything} == {
        c.canonical_json() for c in expand_grid(small)}


def test_too_many_trials_is_a_clear_error():
    small = make_space(units=[8, 16], dropout=[0.0, 0.5], epochs=1)
    with pytest.raises(UserError, match=r"trials=5: more than the 4 distinct.*allowed 1\.\.4"):
        sample_configs(small, 5, seed=0)
    assert DEFAULT_RANDOM_SPACE.size == 3000


def brute_force(selection, reported, n):
    values = []
    for subset in itertools.combinations(range(len(selection)), n):
        best = max(subset, key=lambda i: (selection[i], i))  # ties: later position wins
        values.append(reported[best])
    return float(np.mean(values)), float(np.std(values))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_best_of_n_estimator_matches_brute_force(n):
    rng = np.random.default_rng(n)
    selection = rng.uniform(0.8, 1.0, size=7)
    reported = selection + rng.normal(0, 0.01, size=7)
    mean, std = expected_best_of_n(selection, reported, n)
    expected_mean, expected_std = brute_force(selection, reported, n)
    assert mean == pytest.approx(expected_mean, abs=1e-12)
    assert std == pytest.approx(expected_std, abs=1e-9)
    if n == 7:
        assert std == 0.0  # one subset only: no spread at N = pool size


def test_selection_is_by_validation_not_test():
    # trial b has the best test accuracy but a poor validation accuracy
    trials = pd.DataFrame({
        "trial_key": ["a", "b", "c"],
        "val_accuracy": [0.97, 0.90, 0.95],
        "test_accuracy": [0.96, 0.99, 0.94],
        "status": ["completed"] * 3,
    })
    plan = StudyPlan(n_values=[3], protocol="repeats", repeats=1)
    table = best_of_n_table(plan, {(3, 0): ["a", "b", "c"]}, trials)
    assert table.loc[0, "val_selected_test_mean"] == pytest.approx(0.96)
    assert table.loc[0, "max_test_mean"] == pytest.approx(0.99)
    pool = StudyPlan(n_values=[3], protocol="pool")
    table = best_of_n_table(pool, {(3, 0): ["a", "b", "c"]}, trials)
    assert table.loc[0, "val_selected_test_mean"] == pytest.approx(0.96)


def test_failed_trials_are_left_out_of_the_study():
    trials = pd.DataFrame({
        "trial_key": ["a", "b"], "val_accuracy": [0.9, np.nan],
        "test_accuracy": [0.8, np.nan], "status": ["completed", "failed"]})
    plan = StudyPlan(n_values=[1], protocol="repeats", repeats=1)
    table = best_of_n_table(plan, {(1, 0): ["b", "a"]}, trials)
    assert table.loc[0, "val_selected_test_mean"] == pytest.approx(0.8)


def test_study_sizes_for_the_exercise():
    notebook = StudyPlan(protocol="repeats", repeats=3)
    assert trainings_needed(notebook, DEFAULT_RANDOM_SPACE) == 1140
    pool = StudyPlan(protocol="pool")
    assert trainings_needed(pool, DEFAULT_RANDOM_SPACE) == 400
    draws = study_configs(notebook, DEFAULT_RANDOM_SPACE, seed=0)
    assert len(draws) == 15 and sum(len(d) for d in draws.values()) == 1140
    assert all(len({c.canonical_json() for c in d}) == len(d) for d in draws.values())
    with pytest.raises(UserError, match="pool_size=5"):
        study_configs(StudyPlan(n_values=[10], pool_size=5), DEFAULT_RANDOM_SPACE, 0)


def test_subset_counts_past_int64_stay_exact_floats_and_overflow_to_inf():
    # C(400, 10) ~ 2.6e19 is past int64: storing it made writing best_of_n.parquet crash
    assert subset_count(400, 10) == pytest.approx(math.comb(400, 10), rel=1e-15)
    assert subset_count(400, 10) > np.iinfo(np.int64).max
    assert subset_count(400, 200) == pytest.approx(math.comb(400, 200), rel=1e-15)
    assert subset_count(3000, 1500) == math.inf  # past float range: inf, not an error
    frame = pd.DataFrame({"samples": [subset_count(400, n) for n in (10, 200)]})
    assert frame["samples"].dtype == np.float64
