"""The engine grew (hidden layers, any input width, any number of classes) without changing a
trial key: its new code is declared equivalent to the code it replaced
(``tasks.config.EQUIVALENT_CODE``), and this module proves the declaration. The replaced
modules are kept, as they were, in ``tests/engine_before/``; trained on MNIST-shaped data,
both give byte-identical weights, histories and metrics for every activation and protocol."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import PROJECT_ROOT, synthetic_mnist

import tasks.data.splits
import tasks.engine.model
from tasks import config as config_module
from tasks.config import TrialConfig
from tasks.data.prepare import prepare_data

BEFORE = PROJECT_ROOT / "tests" / "engine_before"
#: name in the key -> (file in tests/engine_before, the module today)
MODULES = {"tasks.backend_compiled": ("backend_compiled", "tasks.engine.backend_compiled"),
           "tasks.backend_keras": ("backend_keras", "tasks.engine.backend_keras"),
           "tasks.model": ("model", "tasks.engine.model")}


def fingerprint_of(path: Path) -> str:
    return config_module._code_fingerprint(path.read_text())


def test_the_declared_equivalences_are_of_todays_code_and_of_the_kept_code():
    assert set(config_module.EQUIVALENT_CODE) == set(MODULES)
    for name, (kept, module) in MODULES.items():
        (now, before), = config_module.EQUIVALENT_CODE[name].items()
        assert fingerprint_of(Path(importlib.util.find_spec(module).origin)) == now, name
        assert fingerprint_of(BEFORE / f"{kept}.py") == before, name


def test_the_code_version_is_the_one_every_cached_trial_was_keyed_with():
    """a9aa99d70c8c4ec0: the training-code version of every trial trained before the engine
    grew, with TensorFlow 2.21.0, Keras 3.15.1 and NumPy 2.4.6 (the pinned versions)."""
    versions = {p: config_module.importlib.metadata.version(p)
                for p in config_module.TRAINING_PACKAGES}
    if versions != {"tensorflow": "2.21.0", "keras": "3.15.1", "numpy": "2.4.6"}:
        pytest.skip(f"other package versions than the pinned ones: {versions}")
    config_module.training_code_version.cache_clear()
    assert config_module.training_code_version() == "a9aa99d70c8c4ec0"


@pytest.fixture(scope="module")
def before(request):
    """The replaced engine modules, loaded from tests/engine_before as they imported each
    other (and the data module by its old name)."""
    patch = pytest.MonkeyPatch()
    patch.setitem(sys.modules, "tasks.data.mnist", tasks.data.splits)
    loaded = {}
    for kept in ("model", "backend_compiled", "backend_keras"):
        spec = importlib.util.spec_from_file_location(f"engine_before_{kept}",
                                                      BEFORE / f"{kept}.py")
        module = importlib.util.module_from_spec(spec)
        with pytest.MonkeyPatch.context() as during:  # the old model, for the old backends
            during.setitem(sys.modules, "tasks.engine.model",
                           loaded.get("model", tasks.engine.model))
            spec.loader.exec_module(module)
        loaded[kept] = module
    yield loaded
    patch.undo()


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    from tasks.data.splits import load_splits

    folder = tmp_path_factory.mktemp("equivalence")
    np.savez(folder / "mnist.npz", **synthetic_mnist(n_train=300, n_test=500, seed=3))
    handle, _ = prepare_data(folder / "mnist.npz", None, folder / "data")
    return load_splits(handle)


CONFIGS = [TrialConfig(units=16, activation=activation, dropout=dropout, batch_size=batch,
                       epochs=2, seed=seed, checkpoint=checkpoint, epoch_metrics=metrics,
                       learning_rate=rate)
           for activation, dropout, batch, seed, checkpoint, metrics, rate in [
               ("relu", 0.3, 64, 0, True, True, 1e-3),   # the baseline's protocol
               ("elu", 0.0, 100, 1, False, False, 1e-2),  # the searches' protocol
               ("sigmoid", 0.5, 32, 2, False, False, 1e-3),
               ("tanh", 0.1, 128, 3, True, False, 1e-1),
               ("linear", 0.2, 300, 4, False, True, 1e-4)]]


def same_run(a: dict, b: dict) -> None:
    assert len(a["weights"]) == len(b["weights"]) == 4
    for x, y in zip(a["weights"], b["weights"], strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()  # byte-identical, not close
    assert a["history"] == b["history"] and a["metrics"] == b["metrics"]
    assert a["best_epoch"] == b["best_epoch"]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.activation)
def test_the_compiled_backend_trains_byte_identical_weights_to_the_code_it_replaced(
        before, splits, config):
    from tasks.engine import backend_compiled

    same_run(before["backend_compiled"].train(config, splits),
             backend_compiled.train(config, splits))


@pytest.mark.parametrize("config", CONFIGS[:2], ids=lambda c: c.activation)
def test_the_keras_backend_trains_byte_identical_weights_to_the_code_it_replaced(
        before, splits, config):
    from tasks.engine import backend_keras

    same_run(before["backend_keras"].train(config, splits), backend_keras.train(config, splits))
