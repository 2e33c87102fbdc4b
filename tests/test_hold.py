"""The test hold (tasks.trial.hold): a trial stops at an armed point, says who holds it, and
goes on when released, disarmed or timed out; the setting travels with a run's trials."""

from __future__ import annotations

import os
import pickle
import socket
import threading
from pathlib import Path

import pandas as pd
import pytest
from holds import Hold, wait_for

from tasks.settings import Settings
from tasks.trial.hold import POINTS, epoch_hooks, hold


def settings(folder: Path, **values) -> Settings:
    return Settings(test_hold=folder, **values)


def held_in_thread(folder: Path, point: str, key: str, **values) -> threading.Thread:
    thread = threading.Thread(target=hold, args=(point, key),
                              kwargs={"settings": settings(folder, **values), "attempt": 2},
                              daemon=True)
    thread.start()
    return thread


def test_an_unarmed_point_or_no_setting_never_holds(tmp_path):
    assert hold("train", "k1", settings=Settings()) is False
    assert hold("train", "k1", settings=settings(tmp_path)) is False  # not armed
    Hold(tmp_path).arm("epoch")
    assert hold("train", "k1", settings=settings(tmp_path)) is False  # another point
    with pytest.raises(ValueError, match="one of train, epoch, stored, release"):
        hold("fit", "k1", settings=settings(tmp_path))


@pytest.mark.parametrize("point", POINTS)
def test_an_armed_point_holds_until_released_and_says_who_holds(tmp_path, point):
    test = Hold(tmp_path)
    test.arm(point)
    thread = held_in_thread(tmp_path, point, "trial-k1")
    [info] = test.wait(point)
    assert info["key"] == "k1" and info["point"] == point and info["attempt"] == 2
    assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
    assert thread.is_alive()
    test.release(point, "k1")
    thread.join(5)
    assert not thread.is_alive() and test.held() == []
    assert hold(point, "k1", settings=settings(tmp_path)) is False  # released from now on


def test_a_key_armed_alone_holds_only_that_key_and_disarming_lets_it_go(tmp_path):
    test = Hold(tmp_path)
    test.arm("train", "k2")
    assert hold("train", "k1", settings=settings(tmp_path)) is False
    thread = held_in_thread(tmp_path, "train", "k2")
    test.wait("train")
    test.disarm("train", "k2")
    thread.join(5)
    assert not thread.is_alive()


def test_a_hold_gives_up_after_its_time_limit(tmp_path, caplog):
    Hold(tmp_path).arm("epoch")
    assert hold("epoch", "k1", settings=settings(tmp_path, test_hold_timeout=0.2)) is True
    assert "not released within 0.2 s" in caplog.text
    assert Hold(tmp_path).held() == []


def test_the_held_file_of_a_killed_process_is_no_hold(tmp_path):
    """A trial's process killed with kill -9 while it held leaves its ``.held`` file; a later
    wait must not take it for a trial in flight (another host's file counts: its processes
    cannot be seen from here)."""
    import json
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    here = socket.gethostname()
    for key, host, pid in (("dead", here, int(gone.stdout)), ("live", here, os.getpid()),
                           ("elsewhere", here + "-other", int(gone.stdout))):
        (tmp_path / f"{key}.train.held").write_text(json.dumps(
            {"key": key, "point": "train", "host": host, "pid": pid, "attempt": 1}))
    assert sorted(h["key"] for h in Hold(tmp_path).held("train")) == ["elsewhere", "live"]


def test_the_epoch_hooks_delay_hold_then_call_the_trials_own_callback(tmp_path, monkeypatch):
    calls = []
    own = calls.append
    assert epoch_hooks(own, "k1") is own  # no test setting: itself
    monkeypatch.setenv("PIPELINE_TEST_EPOCH_DELAY", "0.01")
    hooked = epoch_hooks(own, "k1")
    assert hooked is not own and hooked({"epoch": 1}) is None
    assert calls == [{"epoch": 1}]


def test_the_hold_settings_travel_with_the_trials_lock_manager(tmp_path, monkeypatch):
    """As the lease settings do: the submitting run's, pickled with the trial task."""
    from tasks.trial.locks import TrialLockManager

    monkeypatch.setenv("PIPELINE_TEST_HOLD", str(tmp_path))
    monkeypatch.setenv("PIPELINE_TEST_EPOCH_DELAY", "0.5")
    shipped = pickle.dumps(TrialLockManager())
    monkeypatch.delenv("PIPELINE_TEST_HOLD")
    monkeypatch.delenv("PIPELINE_TEST_EPOCH_DELAY")
    worker = pickle.loads(shipped)
    assert worker.settings == {"test_hold": tmp_path, "test_epoch_delay": 0.5}


@pytest.mark.usefixtures("prefect_harness")
def test_a_grid_holds_at_each_point_in_turn_and_completes_once_released(
        mnist_file, tmp_path, monkeypatch):
    """A real grid (threads): its trial holds before training, after an epoch, after its
    result is stored (the result is there) and before its lock is released."""
    from flows.grid import grid_search
    from tasks.run_options import RunOptions
    from tasks.search.space import make_space

    test = Hold(tmp_path / "hold")
    monkeypatch.setenv("PIPELINE_TEST_HOLD", str(test.folder))
    for point in POINTS:
        test.arm(point)
    out: dict = {}

    def run():
        out["folder"] = grid_search(
            space=make_space(units=[13], dropout=[0.0], batch_size=[100], epochs=2, seed=7),
            run=RunOptions(data=str(mnist_file), reports_dir=str(tmp_path / "reports")))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    seen = []
    for point in POINTS:  # the stored point holds only where the store has the result
        [info] = test.wait(point, what=f"the trial held at {point}")
        seen.append((point, info["key"], info["attempt"], test.held()[0]["point"]))
        test.release(point, info["key"])
    wait_for(lambda: not thread.is_alive(), "the grid to finish")
    assert [(point, held) for point, _, _, held in seen] == [(p, p) for p in POINTS]
    assert len({key for _, key, _, _ in seen}) == 1 and {a for *_, a, _ in seen} == {1}
    table = pd.read_parquet(Path(out["folder"]) / "trials.parquet")
    assert list(table["status"]) == ["completed"] and not table["cached"].any()


def test_arming_again_undoes_an_earlier_release(tmp_path):
    test = Hold(tmp_path)
    test.arm("train")
    test.release_all()
    assert hold("train", "k1", settings=settings(tmp_path)) is False
    test.arm("train")
    thread = held_in_thread(tmp_path, "train", "k1")
    test.wait("train")
    test.release("train", "k1")
    thread.join(5)
    assert not thread.is_alive()
