"""What the pipeline promises, kept: keys that follow the code, searches that grow, a data
rebuild that two runs can share, settings Prefect reads before it starts, Ctrl-C that leaves
at once."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import PROJECT_ROOT, synthetic_mnist, write_npz
from holds import Hold

from tasks import config as config_module
from tasks.cli import INTERRUPTED
from tasks.config import TrialConfig, trial_key
from tasks.search.best_of_n import StudyPlan, study_configs
from tasks.search.space import DEFAULT_RANDOM_SPACE, make_space, sample_configs


# --------------------------------------------------------------------------------------------
# The code version is derived from the training code, never hand-kept
# --------------------------------------------------------------------------------------------
def test_a_change_to_the_training_code_changes_every_trial_key(tmp_path, monkeypatch):
    module = tmp_path / "fake_backend.py"
    source = '''"""A backend."""\n\ndef step(x):\n    return x * 2  # doubled\n'''
    module.write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(config_module, "TRAINING_CODE", {"tasks.fake": "fake_backend"})
    config = TrialConfig()

    def key() -> str:
        config_module.training_code_version.cache_clear()
        return trial_key(config, "fp")

    original = key()
    # a docstring, a comment or formatting does not change what a trial computes
    module.write_text(source.replace("A backend.", "The backend.").replace("# doubled", "")
                      .replace("x * 2", "x*2"))
    assert key() == original
    # a change to the computation does
    module.write_text(source.replace("x * 2", "x * 3"))
    assert key() != original
    # and so does another TensorFlow
    module.write_text(source)
    real_version = config_module.importlib.metadata.version
    monkeypatch.setattr(config_module.importlib.metadata, "version",
                        lambda name: "9.9" if name == "tensorflow" else real_version(name))
    assert key() != original
    config_module.training_code_version.cache_clear()


def test_an_added_activation_changes_only_its_own_trials_keys(tmp_path, monkeypatch):
    module = tmp_path / "fake_backend.py"
    source = ('def act(activation, tf):\n'
              '    return {"relu": tf.relu, "tanh": tf.tanh}[activation]\n')
    module.write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(config_module, "TRAINING_CODE", {"tasks.fake": "fake_backend"})
    relu, linear = TrialConfig(activation="relu"), TrialConfig(activation="linear")

    def key(config: TrialConfig) -> str:
        config_module.training_code_version.cache_clear()
        config_module.activation_code_version.cache_clear()
        return trial_key(config, "fp")

    before = key(relu)
    module.write_text(source.replace('"tanh": tf.tanh}', '"tanh": tf.tanh, "linear": tf.id}'))
    assert key(relu) == before  # adding `linear` leaves every other key as it was
    linear_key = key(linear)
    module.write_text(source.replace('"tanh": tf.tanh}', '"tanh": tf.tanh, "linear": tf.ident}'))
    assert key(relu) == before and key(linear) != linear_key  # its code is in its keys only
    module.write_text(source.replace('"relu": tf.relu', '"relu": tf.relu6')
                      .replace('"tanh": tf.tanh}', '"tanh": tf.tanh, "linear": tf.ident}'))
    assert key(relu) != before  # an edit of the others' entries changes every key
    config_module.training_code_version.cache_clear()
    config_module.activation_code_version.cache_clear()


def test_the_compiled_backend_keys_its_first_four_activations_as_before_linear():
    """The real table: the compiled backend's fingerprint is that of its source without the
    `linear` entry (the source every cached relu/elu/sigmoid/tanh trial was keyed with)."""
    import importlib.util

    source = Path(importlib.util.find_spec("tasks.engine.backend_compiled").origin).read_text()
    entry = ', "linear": tf.identity}'
    assert entry in source
    assert (config_module._code_fingerprint(source)
            == config_module._code_fingerprint(source.replace(entry, "}")))
    assert len(config_module.activation_code_version("linear")) == 16


def test_every_engine_module_is_training_code():
    engine = PROJECT_ROOT / "tasks" / "engine"
    modules = {f"tasks.engine.{path.stem}" for path in engine.glob("*.py")
               if path.stem not in ("__init__", "tf_runtime")}  # tf_runtime: threads, logs
    assert set(config_module.TRAINING_CODE.values()) == modules
    assert set(config_module.TRAINING_PACKAGES) >= {"tensorflow", "keras"}
    assert len(config_module.training_code_version()) == 16


def test_moving_a_module_changes_no_key():
    """The key hashes the code, not where it lives: the engine's imports read the same under
    the modules' names in the key, whatever their place and import order."""
    import ast
    import importlib.util

    for module in config_module.TRAINING_CODE.values():
        source = Path(importlib.util.find_spec(module).origin).read_text()
        # the module as it was before the package layout: legacy import paths, legacy order
        legacy = source
        for now, name in config_module.KEY_NAMES.items():
            parent, _, leaf = name.rpartition(".")
            now_parent, _, now_leaf = now.rpartition(".")
            legacy = legacy.replace(f"from {now_parent} import {now_leaf}\n",
                                    f"from {parent} import {leaf}\n")
            legacy = legacy.replace(f"from {now} import", f"from {name} import")
        lines = legacy.splitlines(keepends=True)
        imports = [i for i, line in enumerate(lines) if line.startswith("from tasks.")]
        shuffled = list(lines)
        for i, j in zip(imports, reversed(imports), strict=True):
            shuffled[i] = lines[j]
        assert (config_module._code_fingerprint("".join(shuffled))
                == config_module._code_fingerprint(source)), module
        # every project module the training code imports has a stable name in the key
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tasks"):
                names = [f"{node.module}.{alias.name}" for alias in node.names]
                stable = node.module in config_module.KEY_NAMES or node.module in STABLE
                assert stable or all(n in config_module.KEY_NAMES for n in names), node.module


#: Project modules the training code imports that have not moved since keys were defined.
STABLE = {"tasks.config", "tasks.files"}


# --------------------------------------------------------------------------------------------
# Growing a search trains only the new configs
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("small, large", [(20, 40), (1, 3000), (200, 400)])
def test_a_larger_random_search_extends_the_smaller_one(small, large):
    a = sample_configs(DEFAULT_RANDOM_SPACE, small, seed=4)
    b = sample_configs(DEFAULT_RANDOM_SPACE, large, seed=4)
    assert b[:small] == a
    assert len({c.canonical_json() for c in b}) == large


def test_a_larger_study_pool_extends_the_smaller_one():
    (small,) = study_configs(StudyPlan(n_values=[10, 100]), DEFAULT_RANDOM_SPACE, 0).values()
    (large,) = study_configs(StudyPlan(), DEFAULT_RANDOM_SPACE, 0).values()
    assert (len(small), len(large)) == (200, 400) and large[:200] == small


def test_the_repeats_protocol_keeps_independent_draws():
    draws = study_configs(StudyPlan(protocol="repeats", n_values=[10, 20], repeats=2),
                          DEFAULT_RANDOM_SPACE, 0)
    assert draws[(20, 0)][:10] != draws[(10, 0)]  # not nested: each draw is its own
    assert draws[(10, 0)] != draws[(10, 1)]


def test_a_huge_space_is_drawn_without_a_permutation_and_keeps_the_prefix():
    space = make_space(units=list(range(1, 1001)), dropout=[i / 100 for i in range(99)],
                       learning_rate=[1e-3, 1e-2], batch_size=list(range(1, 11)), epochs=1)
    assert space.size > 1_000_000
    a, b = sample_configs(space, 5, seed=1), sample_configs(space, 50, seed=1)
    assert b[:5] == a and len({c.canonical_json() for c in b}) == 50


# --------------------------------------------------------------------------------------------
# Two runs that both find damaged processed data
# --------------------------------------------------------------------------------------------
def _prepare_after(barrier, mnist: str, data_dir: str, results) -> None:
    """In a child process: slow writes (so that both runs are inside the rebuild at once),
    then prepare the data and read every split back."""
    import tasks.data.splits as data
    from tasks.data.prepare import prepare_data

    real_write = data.write_split

    def slow_write(*args, **kwargs):
        time.sleep(0.3)
        return real_write(*args, **kwargs)

    data.write_split = slow_write
    barrier.wait()
    try:
        handle, reused = prepare_data(mnist, None, data_dir)
        splits = data.load_splits(handle)
        results.put(("ok", reused, handle.fingerprint, len(splits.x_train)))
    except Exception as exc:  # pragma: no cover (the failure this test guards against)
        results.put(("error", repr(exc), None, None))


def test_two_runs_rebuilding_damaged_data_do_not_break_each_other(tmp_path):
    from tasks.data.prepare import prepare_data

    mnist = str(write_npz(tmp_path / "mnist.npz", synthetic_mnist(n_train=300, n_test=10000)))
    handle, _ = prepare_data(mnist, None, tmp_path / "data")
    train = Path(handle.directory) / "train.arrow"
    train.write_bytes(train.read_bytes()[:-100])  # damaged: the checksum no longer matches
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    children = [context.Process(target=_prepare_after,
                                args=(barrier, mnist, str(tmp_path / "data"), results))
                for _ in range(2)]
    for child in children:
        child.start()
    outcomes = [results.get(timeout=120) for _ in children]
    for child in children:
        child.join(timeout=60)
    assert [o[0] for o in outcomes] == ["ok", "ok"], outcomes
    # exactly one of them rebuilt; the other waited and used the fresh copy
    assert sorted(o[1] for o in outcomes) == [False, True]
    assert {o[3] for o in outcomes} == {300}
    _, reused = prepare_data(mnist, None, tmp_path / "data")
    assert reused


# --------------------------------------------------------------------------------------------
# Settings that hold for every command, from any working directory
# --------------------------------------------------------------------------------------------
def test_the_project_settings_hold_from_another_working_directory(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_SERVER_", "PIPELINE_"))}  # nothing from outside
    env["PREFECT_HOME"] = str(tmp_path / "fresh-home")
    code = ("from tasks.cli import project_prefect_settings\n"
            "from tasks.settings import current\n"
            "from tasks.trial.task import train_trial_task as t\n"
            "from prefect.settings import get_current_settings as s\n"
            "with project_prefect_settings():\n"
            "    print(s().server.ephemeral.startup_timeout_seconds, "
            "s().server.analytics_enabled, t.retries, t.retry_delay_seconds, "
            "current().data_dir)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout.split(maxsplit=5)
    # Prefect's own defaults are 20 s, analytics on, no retries
    assert out[:5] == ["120", "False", "2", "[2.0,", "8.0]"]
    assert out[5].strip() == str(PROJECT_ROOT / "data")


# --------------------------------------------------------------------------------------------
# Ctrl-C
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ctrl_c_exits_at_once_leaves_no_process_and_the_rerun_resumes(mnist_file, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "home"), PIPELINE_DATA_DIR=str(tmp_path / "data"),
               PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(tmp_path / "home" / "storage"))
    command = [sys.executable, str(PROJECT_ROOT / "flows/grid.py"), "--data", str(mnist_file),
               "--reports-dir",
               str(tmp_path / "reports"), "--dropout", "0", "0.1", "0.2", "0.3", "--units",
               "8", "16", "--batch-size", "16", "--epochs", "3", "--runner", "processes",
               "--workers", "2"]
    # 2 results in and a trial held before training (the test hold): interrupted mid-run,
    # however fast the machine
    hold = Hold(tmp_path / "hold")
    hold.arm("train")
    # from another working directory, as `cd /tmp && python /path/to/flows/grid.py` would
    process = subprocess.Popen(command, cwd=tmp_path, env={**env, **hold.env},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    lines: list[str] = []

    def read():
        for line in process.stdout:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    hold.let_through("train", lambda: any(line.startswith("[2/8]") for line in lines),
                     what="two results", timeout=240,
                     why="a new Prefect home's temporary server and the workers start")
    family = [process.pid, *(c.pid for c in psutil.Process(process.pid).children(True))]
    assert len(family) >= 3  # the command, its temporary server, its workers
    interrupted = time.monotonic()
    os.killpg(process.pid, 2)  # what a terminal's Ctrl-C does: SIGINT to the process group
    process.wait(timeout=60)
    seconds = time.monotonic() - interrupted
    assert process.returncode == 130
    # one line, no tracebacks from the workers or the server that got the same SIGINT
    assert process.stderr.read().strip() == INTERRUPTED
    time.sleep(1)
    left = [pid for pid in family if psutil.pid_exists(pid)
            and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert left == [], f"left running: {left}"
    print(f"Ctrl-C to exit: {seconds:.1f} s")
    assert seconds < 30  # it took ~150 s before the Ctrl-C handler
    # the rerun trains only what had not finished
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (summary,) = [line for line in done.stdout.splitlines() if line.startswith("Grid done")]
    cached = int(summary.split(" trained, ")[1].split(" from cache")[0])
    assert cached >= 2, summary
