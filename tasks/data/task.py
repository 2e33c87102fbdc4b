"""The data step as a Prefect task: prepare the splits once, hand the trials a small handle."""

from __future__ import annotations

from prefect import get_run_logger, task

from tasks.config import SplitSpec
from tasks.data.prepare import prepare_data
from tasks.data.splits import DataHandle


# --------------------------------------------------------------------------------------------
@task(name="prepare-data")
def prepare_data_task(
    data: str | None = None,
    split: SplitSpec | None = None,
    data_dir: str | None = None,
    label: str = "label",
) -> DataHandle:
    """Read the data (any format), validate, normalize, split and write it once; return a
    small handle."""
    handle, reused = prepare_data(data, split, data_dir, label)
    get_run_logger().info(
        "%s processed data %s (train %d / validation %d / test %d; %d features, %d classes)",
        "reusing" if reused else "wrote", handle.directory, handle.train_size,
        handle.validation_size, handle.test_size, handle.features, handle.classes,
    )
    return handle
