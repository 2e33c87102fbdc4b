"""The predict run's steps as Prefect tasks (thin: the work is in :mod:`tasks.predict`).
Their inputs are arrays and a model folder, held in this process: no cache, no stored
results (the report folder is the result)."""

from __future__ import annotations

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.predict import inbox as inbox_files
from tasks.predict.inputs import Inputs, SplitName, take_checked
from tasks.predict.model import ModelFolder, predict

STEP = {"cache_policy": NO_CACHE, "persist_result": False}


@task(name="read-input", **STEP)
def read_input_task(model: ModelFolder, data: str, split: SplitName = "all",
                    label: str = "label") -> Inputs:
    """The input as the model takes it (what the command line checked, if unchanged)."""
    return take_checked(model, data, split, label)


@task(name="read-inbox", **STEP)
def read_inbox_task(model: ModelFolder, batch: inbox_files.Batch,
                    label: str = "label") -> tuple[Inputs | None, dict[str, str]]:
    """The claimed inbox files that fit the model, as one input, and the lines of those that
    do not."""
    return inbox_files.read_claimed(model, batch, label)


@task(name="predict", **STEP)
def predict_task(model: ModelFolder, inputs: Inputs) -> np.ndarray:
    """``model.keras`` on the raw input: class probabilities, one row per input."""
    return predict(model, inputs.x)
