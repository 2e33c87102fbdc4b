"""Test set-up: isolated Prefect home, a result storage, data directory, reports directory and
Optuna storage of its own for every test module (:func:`module_storage`), retries at once,
synthetic MNIST.

Two suites (``pyproject.toml``): ``python -m pytest -q`` is the fast one (unit and flow tests,
no server beyond Prefect's test harness), ``python -m pytest -q -m slow`` the end-to-end one
(real servers, killed workers; the team stack's tests also need ``MNIST_TEAM_TESTS=1``).
Both pass in any order, in one process (``-n 0``) or on every core (pytest-xdist, the default:
each worker process has its own Prefect home and harness).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Before anything imports prefect: results, database and cache records go to a temp dir.
_HOME = Path(tempfile.mkdtemp(prefix="mnist-search-tests-"))
os.environ["PREFECT_HOME"] = str(_HOME / "prefect")
os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(_HOME / "prefect" / "storage")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_TASKS_DEFAULT_RETRY_DELAY_SECONDS"] = "0"
os.environ["PIPELINE_RETRY_DELAYS"] = "0,0"  # the trials' retries: at once
os.environ["PIPELINE_DATA_DIR"] = str(_HOME / "data")
os.environ["PIPELINE_REPORTS_DIR"] = str(_HOME / "reports")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("PIPELINE_FAULTS", None)
os.environ.pop("PIPELINE_OPTUNA_STORAGE", None)  # Optuna studies go under PIPELINE_DATA_DIR
os.environ.pop("PIPELINE_LOCKS", None)  # trial locks: OS file locks, not a team's Redis

import numpy as np  # noqa: E402
import pytest  # noqa: E402

#: The team stack's end-to-end tests run only where this is 1 (``.ci/run`` sets it after
#: starting the stack with ``scripts/up.sh --team``).
TEAM_TESTS = "MNIST_TEAM_TESTS"

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def synthetic_mnist(n_train: int = 600, n_test: int = 300, seed: int = 0) -> dict[str, np.ndarray]:
    """A small, learnable MNIST look-alike: one random 28x28 prototype per class plus noise,
    uint8 pixels, labels 0..9, in Keras' layout. As in the real MNIST, some pixels are zero in
    every training image (the top row here) but not in the test images."""
    rng = np.random.default_rng(seed)
    prototypes = rng.uniform(0, 255, size=(10, 28, 28))

    def make(n):
        y = rng.integers(0, 10, size=n).astype(np.uint8)
        x = prototypes[y] * 0.6 + rng.uniform(0, 255, size=(n, 28, 28)) * 0.4
        return np.clip(x, 0, 255).astype(np.uint8), y

    x_train, y_train = make(n_train)
    x_train[:, 0, :] = 0
    x_test, y_test = make(n_test)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def spy_figures(monkeypatch) -> list:
    """Record every figure the reports save, as (file name, Figure); each is still saved and
    closed."""
    from tasks.reports.figures import common as figures

    captured: list = []
    real_save = figures.save

    def spy(fig, path):
        captured.append((Path(path).name, fig))
        return real_save(fig, path)

    monkeypatch.setattr(figures, "save", spy)
    return captured


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="session")
def mnist_file(tmp_path_factory) -> Path:
    """A synthetic Keras-format mnist.npz: 600 train / 10000 test images, so the exercise's
    default split (validation = x_test[8000:], test = x_test[:8000]) applies."""
    arrays = synthetic_mnist(n_train=600, n_test=10000)
    return write_npz(tmp_path_factory.mktemp("mnist") / "mnist.npz", arrays)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API for the whole session (flow tests use it)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def real_mnist() -> Path:
    """The real MNIST as ``--data mnist`` finds it ($MNIST_PATH, else Keras' cache); skipped
    (with the reason) where there is none. CI sets MNIST_PATH and requires the file."""
    from tasks.data.readers import known_copies

    found = [path for path in known_copies("mnist") if path.is_file()]
    if not found:
        pytest.skip("real MNIST not available: set MNIST_PATH to a Keras-format mnist.npz "
                    "(or put one at ~/.keras/datasets/mnist.npz)")
    return found[0]


@pytest.fixture(scope="module", autouse=True)
def module_storage(request, tmp_path_factory):
    """Every test module trains into a result storage, data directory (processed data,
    weights, the default Optuna storage) and reports directory of its own, so no module finds
    another's trials in the cache, whatever order the modules run in. Tests within a module
    share them; a test that must start empty takes ``tmp_path`` folders of its own."""
    from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings

    root = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    values = {"PREFECT_RESULTS_LOCAL_STORAGE_PATH": root / "storage",
              "PIPELINE_DATA_DIR": root / "data", "PIPELINE_REPORTS_DIR": root / "reports"}
    patch = pytest.MonkeyPatch()
    for name, value in values.items():  # subprocesses (command-line tests) inherit them
        patch.setenv(name, str(value))
    try:
        # this process's Prefect read its settings at import: change them in its context too
        with temporary_settings(updates={PREFECT_RESULTS_LOCAL_STORAGE_PATH:
                                         values["PREFECT_RESULTS_LOCAL_STORAGE_PATH"]}):
            yield root
    finally:
        patch.undo()


def pytest_collection_modifyitems(config, items):
    """The team stack's tests skip, with the reason, unless ``MNIST_TEAM_TESTS=1``; they run
    one after the other on one stack, so under pytest-xdist (``--dist loadgroup``) they are
    one group, on one worker, while the other end-to-end tests run beside them."""
    run = os.environ.get(TEAM_TESTS) == "1"
    skip = pytest.mark.skip(reason=f"team stack tests: set {TEAM_TESTS}=1 and start the "
                                   "stack (scripts/up.sh --team); .ci/run does both")
    for item in items:
        if "team" in item.keywords:
            item.add_marker(pytest.mark.xdist_group("team") if run else skip)
