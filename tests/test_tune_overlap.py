"""Several processes on one Optuna storage at once: a new SQLite file created by two at once,
two tunes of one study, grid and random exports at the same moment, a killed tune's trial
recovered while a live tune's is left alone (tasks.search.tune, tasks.search.optuna_storage).

Each process is this file run as a script (``python tests/test_tune_overlap.py ROLE JSON``):
a TuneProposer on the synthetic MNIST handle whose "training" is a short sleep (the proposer,
not Keras, is what is under test), or an export of a synthetic run. Processes wait for a
``go`` file so that they start their storage work at the same moment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPACE = {"units": "int_log:8:64", "dropout": "uniform:0:0.5:2", "activation": "choice:relu",
         "learning_rate": "choice:0.001", "batch_size": "choice:100", "epochs": 1}
TRAIN_SECONDS = 0.3


# --------------------------------------------------------------------------------------------
# The child processes
# --------------------------------------------------------------------------------------------
def wait_for(path: Path, timeout: float = 120.0) -> None:
    """Until ``path`` exists (a file the other side touches)."""
    end = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > end:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.02)


def ready(args: dict) -> None:
    """Imports done (Optuna's lazy ones too, by a storage in memory): say so, and wait for
    the others (``go``)."""
    from tasks.search.optuna_storage import open_storage

    open_storage("sqlite:///:memory:")
    Path(args["ready"]).touch()
    wait_for(Path(args["go"]))


def fake_result(config, fingerprint: str, value: float):
    from tasks.trial.result import TrialResult

    return TrialResult(trial_key=config.canonical_json(), config=config,
                       data_fingerprint=fingerprint, val_accuracy=value, test_accuracy=value,
                       train_seconds=TRAIN_SECONDS,
                       history=[{"epoch": 1.0, "val_accuracy": value}])


def child_tune(args: dict) -> None:
    """A tune of ``args["trials"]`` with 2 trials in flight; ``hold``: keep the first trial
    asked (write its number and params to ``holding``) until ``release`` appears (never, if
    not given: the test kills the process). Writes what it saw and told to ``out``."""
    from tasks.data.splits import DataHandle
    from tasks.search.tune.proposer import TuneProposer
    from tasks.search.tune_space import make_tune_space

    handle = DataHandle.model_validate_json(Path(args["data"]).read_text())
    space = make_tune_space(**SPACE)
    ready(args)
    proposer = TuneProposer(space, handle, "compiled", args["storage"], trials=args["trials"],
                            study_name=args["study"], warm_start=False, heartbeat_interval=1,
                            grace_period=args.get("grace", 3))
    described = proposer.describe()
    if "counted" in args:  # every tune has counted the study before any trial finishes
        Path(args["counted"]).touch()
        wait_for(Path(args["go_ask"]))
    told, asked_params, in_flight = [], [], []
    while True:
        while len(in_flight) < 2:
            asked = proposer.ask()
            if asked is None:
                break
            asked_params.append(asked.token.params)
            if args.get("hold") and len(asked_params) == 1:
                Path(args["holding"]).write_text(json.dumps(
                    {"number": asked.token.number, "params": asked.token.params}))
                if "release" not in args:
                    time.sleep(3600)  # killed here
                wait_for(Path(args["release"]))
            in_flight.append(asked)
        if not in_flight:
            break
        asked = in_flight.pop(0)
        time.sleep(TRAIN_SECONDS)
        proposer.tell(asked, fake_result(asked.config, handle.fingerprint,
                                         0.5 + asked.config.dropout / 2))
        told.append(asked.token.number)
    Path(args["out"]).write_text(json.dumps({"described": described, "told": told,
                                             "asked_params": asked_params}))


def child_export(args: dict) -> None:
    """Export a synthetic 2-config grid run as the study ``args["study"]``."""
    from tasks.config import TrialConfig
    from tasks.reports.optuna_export import export_run

    results = [fake_result(TrialConfig(units=units, epochs=1), "f", 0.5 + units / 100)
               for units in (8, 16)]
    ready(args)
    export_run(args["study"], results, {"units": [8, 16]}, args["storage"],
               attrs={"kind": "grid"})


def child_open(args: dict) -> None:
    """Open (create) the storage and a study in it, as a tune does first."""
    import optuna

    from tasks.search.optuna_storage import open_storage, storage_lock

    ready(args)
    with storage_lock(args["storage"]):
        optuna.create_study(study_name=args["study"], storage=open_storage(args["storage"]),
                            load_if_exists=True)


# --------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------
@pytest.fixture
def handle_file(mnist_file, tmp_path) -> Path:
    from tasks.config import SplitSpec
    from tasks.data.prepare import prepare_data

    handle, _ = prepare_data(mnist_file, SplitSpec())
    path = tmp_path / "handle.json"
    path.write_text(handle.model_dump_json())
    return path


def start(role: str, **args) -> subprocess.Popen:
    """This file as a script in a process of its own: ``role`` with ``args``; it touches
    ``args["ready"]`` once imported, then waits for ``args["go"]``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, __file__, role, json.dumps(args, default=str)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def go_together(folder: Path, processes: dict[str, subprocess.Popen]) -> None:
    """Once every process is ready, touch their ``go`` file: their storage work starts at
    the same moment."""
    for name, process in processes.items():
        end = time.monotonic() + 60
        while not (folder / f"ready-{name}").exists():
            assert process.poll() is None, finish(process)
            assert time.monotonic() < end, f"{name} never ready"
            time.sleep(0.02)
    (folder / "go").touch()


def finish(process: subprocess.Popen, timeout: float = 120) -> str:
    """The process's output; fails the test unless it ended well and wrote no traceback."""
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0 and "Traceback" not in err, out[-2000:] + err[-4000:]
    return out + err


def trials_of(storage: str, study: str) -> list:
    import optuna

    return optuna.load_study(study_name=study, storage=storage).get_trials()


@pytest.mark.slow
def test_processes_creating_a_new_storage_or_exporting_at_once_all_succeed(tmp_path):
    from optuna.trial import TrialState

    from tasks.config import TrialConfig
    from tasks.reports.optuna_export import export_run

    new, old = f"sqlite:///{tmp_path / 'new.db'}", f"sqlite:///{tmp_path / 'old.db'}"
    for name in ("grid-0", "grid-1"):  # exported before: replaced below
        export_run(name, [fake_result(TrialConfig(units=4, epochs=1), "f", 0.1)],
                   {"units": [4]}, old)
    # at once: two tunes' first step and a grid export on a storage that does not exist yet,
    # and two grid exports replacing their studies in one that does
    runs = {"tune-0": ("open", new), "tune-1": ("open", new), "grid-new": ("export", new),
            "grid-0": ("export", old), "grid-1": ("export", old)}
    processes = {name: start(role, storage=storage, study=name,
                             ready=tmp_path / f"ready-{name}", go=tmp_path / "go")
                 for name, (role, storage) in runs.items()}
    go_together(tmp_path, processes)
    for process in processes.values():
        finish(process)
    for storage, name in ((new, "grid-new"), (old, "grid-0"), (old, "grid-1")):
        trials = trials_of(storage, name)
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
        assert [t.params["units"] for t in trials] == [8, 16]
    assert trials_of(new, "tune-0") == trials_of(new, "tune-1") == []


def test_two_tunes_of_one_study_at_once_each_finish_their_own_budget(tmp_path, handle_file):
    import optuna
    from optuna.trial import TrialState

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    # configs enqueued (as for a dead tune's trials): each must be popped by one tune only
    study = optuna.create_study(study_name="race", storage=storage, direction="maximize")
    for units in (8, 16, 32, 64):
        study.enqueue_trial({"units": units, "dropout": 0.1, "activation": "relu",
                             "learning_rate": 0.001, "batch_size": 100})
    tunes = {f"tune-{i}": start("tune", storage=storage, study="race", trials=4,
                                data=handle_file, ready=tmp_path / f"ready-tune-{i}",
                                go=tmp_path / "go", counted=tmp_path / f"counted-{i}",
                                go_ask=tmp_path / "go-ask", out=tmp_path / f"out-{i}")
             for i in range(2)}
    go_together(tmp_path, tunes)  # both create (or load) the new study at once
    for i in range(2):
        wait_for(tmp_path / f"counted-{i}", timeout=60)
    (tmp_path / "go-ask").touch()
    for process in tunes.values():
        finish(process)
    outs = [json.loads((tmp_path / f"out-{i}").read_text()) for i in range(2)]
    for out in outs:  # each counted 0 finished when it started, and finished 4 of its own
        assert "0 of its own finished trials in the study, 4 more to reach 4" in out["described"]
        assert len(out["told"]) == 4
    told = outs[0]["told"] + outs[1]["told"]
    assert len(set(told)) == 8  # no trial told twice
    trials = trials_of(storage, "race")
    assert sorted(told) == [t.number for t in trials]
    assert {t.state for t in trials} == {TrialState.COMPLETE}
    configs = [tuple(sorted(t.params.items())) for t in trials]
    assert sorted(t.params["units"] for t in trials[:4]) == [8, 16, 32, 64]  # the enqueued
    assert len(set(configs)) == 8  # the two tunes' samplers do not draw the same configs


@pytest.mark.slow
def test_a_killed_tunes_trial_is_asked_again_and_a_live_tunes_is_left_alone(tmp_path,
                                                                            handle_file):
    from optuna.trial import TrialState

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    (tmp_path / "go").touch()
    common = {"storage": storage, "study": "kill", "trials": 1, "data": handle_file,
              "go": tmp_path / "go", "hold": True}
    killed = start("tune", **common, ready=tmp_path / "ready-killed",
                   holding=tmp_path / "killed-holds", out=tmp_path / "killed-out")
    wait_for(tmp_path / "killed-holds", timeout=60)
    live = start("tune", **common, ready=tmp_path / "ready-live",
                 holding=tmp_path / "live-holds", release=tmp_path / "release",
                 out=tmp_path / "live-out")
    wait_for(tmp_path / "live-holds", timeout=60)  # it started beside a live tune
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=30)
    dead = json.loads((tmp_path / "killed-holds").read_text())
    held = json.loads((tmp_path / "live-holds").read_text())
    later_dir = tmp_path / "later"
    later_dir.mkdir()
    later = start("tune", storage=storage, study="kill", trials=1, data=handle_file,
                  ready=later_dir / "ready-later", go=later_dir / "go",
                  out=tmp_path / "later-out")
    time.sleep(5)  # the dead tune's last heartbeat is older than the grace period (3 s)
    state = {t.number: t.state for t in trials_of(storage, "kill")}
    assert state == {dead["number"]: TrialState.RUNNING, held["number"]: TrialState.RUNNING}
    go_together(later_dir, {"later": later})
    finish(later)
    # the later tune failed the dead tune's trial and asked its config first, while the live
    # tune's trial, older than the grace period too, kept running
    state = {t.number: t.state for t in trials_of(storage, "kill")}
    assert state[dead["number"]] == TrialState.FAIL
    assert state[held["number"]] == TrialState.RUNNING
    assert json.loads((tmp_path / "later-out").read_text())["asked_params"] == [dead["params"]]
    (tmp_path / "release").touch()
    finish(live)
    assert json.loads((tmp_path / "live-out").read_text())["told"] == [held["number"]]
    trials = trials_of(storage, "kill")
    assert len(trials) == 3
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 2


if __name__ == "__main__":
    {"tune": child_tune, "export": child_export, "open": child_open}[sys.argv[1]](
        json.loads(sys.argv[2]))
