"""The data step as a Prefect task: prepare the splits once, hand the trials a small handle."""

from __future__ import annotations

from prefect import get_run_logger, task

from tasks.config import SplitSpec
from tasks.data.mnist import DataHandle, prepare_data


# --------------------------------------------------------------------------------------------
@task(name="prepare-data")
def prepare_data_task(
    mnist_path: str | None = None,
    split: SplitSpec | None = None,
    data_dir: str | None = None,
) -> DataHandle:
    """Load, validate, normalize, split and write MNIST once; return a small handle."""
    handle, reused = prepare_data(mnist_path, split, data_dir)
    get_run_logger().info(
        "%s processed data %s (train %d / validation %d / test %d)",
        "reusing" if reused else "wrote", handle.directory, handle.train_size,
        handle.validation_size, handle.test_size,
    )
    return handle
