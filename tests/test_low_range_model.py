"""Integer images of a narrow range (4-bit scans stored as uint8, 0..15): standardized by the
data step (tasks.data.prepare.scaling_rule), and their model takes them as they are (uint8, the
standardization inside) where this project cannot be imported, scoring the report's test
accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import synthetic_mnist, write_npz
from test_model_export import TOLERANCE, model_json, run_standalone

from flows.grid import grid_search
from tasks.run_options import RunOptions
from tasks.search.space import make_space


@pytest.mark.usefixtures("prefect_harness")
def test_a_low_range_uint8_models_standardization_is_inside_and_stands_alone(tmp_path):
    arrays = synthetic_mnist(n_train=600, n_test=300, seed=5)
    arrays["x_train"] //= 16  # 0..15
    arrays["x_test"] //= 16
    source = write_npz(tmp_path / "scans.npz", arrays)
    report = Path(grid_search(
        space=make_space(units=[16], dropout=[0.0], batch_size=[50], epochs=3),
        run=RunOptions(data=str(source), reports_dir=str(tmp_path / "reports"))))
    record = model_json(report)
    assert record["normalization"]["kind"] == "standardize"
    assert "training maximum is 15, below 128" in record["normalization"]["rule"]
    assert "training maximum is 15, below 128" in (report / "model" / "MODEL.md").read_text()
    assert "its input normalized as integer images" in (report / "report.md").read_text()
    trials = pd.read_parquet(report / "trials.parquet")
    reported = float(trials["test_accuracy"].item())
    got = run_standalone({"scans": {"format": "npz", "source": str(source),
                                    "folder": str(report / "model")}},
                         tmp_path / "standalone")["scans"]
    assert got["input"] == ["uint8", [28, 28]] and got["x_dtype"] == "uint8"
    assert abs(got["called_accuracy"] - reported) <= TOLERANCE, (got, reported)
    assert reported > 0.5  # learned: standardized, not squeezed into 0..0.06
    assert np.isclose(sum(1 for _ in got["called"]), record["data"]["sizes"]["test"])
