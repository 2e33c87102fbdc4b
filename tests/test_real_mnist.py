"""Checks on the real MNIST file (MNIST_PATH; CI sets it and requires it): the file itself in
the fast suite, flows on it in the end-to-end suite."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.config import SplitSpec
from tasks.data.prepare import check_data, prepare_data
from tasks.data.splits import dataset_info, load_splits
from tasks.run_options import RunOptions

pytestmark = pytest.mark.real_data


def test_real_file_loads_validates_and_splits(real_mnist, tmp_path):
    raw = check_data(real_mnist).raw
    assert list(raw.y_train[:5]) == [5, 0, 4, 1, 9]
    assert int(raw.x_train[0].sum()) == 27525
    arrays = {"y_test": raw.y_test}
    handle, _ = prepare_data(real_mnist, SplitSpec(), tmp_path)
    assert (handle.train_size, handle.validation_size, handle.test_size) == (60000, 2000, 8000)
    # the fingerprint every MNIST trial key of the project was issued with
    assert handle.fingerprint == "207846362c7bac8d66d8"
    assert (handle.features, handle.classes) == (784, 10)
    assert dataset_info(handle).name == "MNIST"  # recognized by its labels
    splits = load_splits(handle)
    assert splits.x_train.mean() == pytest.approx(0.1307, abs=1e-4)
    assert np.array_equal(splits.y_val, arrays["y_test"][8000:])
    assert np.array_equal(splits.y_test, arrays["y_test"][:8000])


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_baseline_and_grid_on_real_data(real_mnist, tmp_path):
    from flows.grid import grid_search
    from flows.train import baseline
    from tasks.config import TrialConfig
    from tasks.search.space import make_space

    config = TrialConfig(epochs=2)  # the exercise's network and batch size, 2 epochs
    folder = Path(baseline(config=config,
                           run=RunOptions(data=str(real_mnist),
                                          train_samples=20000, reports_dir=str(tmp_path))))
    evaluation = pd.read_parquet(folder / "evaluation.parquet")
    test = evaluation.set_index("")["Accuracy"]["Test"]
    assert test > 0.85
    space = make_space(dropout=[0.1], units=[64, 128], batch_size=[128], epochs=1)
    grid = Path(grid_search(space=space,
                            run=RunOptions(data=str(real_mnist),
                                           train_samples=20000, reports_dir=str(tmp_path))))
    trials = pd.read_parquet(grid / "trials.parquet")
    assert (trials["status"] == "completed").all()
    assert trials["test_accuracy"].min() > 0.88
