"""The tests' side of the test hold (:mod:`tasks.trial.hold`), and the waits every fault test
uses: a trial in flight is one the test holds, never one it hopes is still training.

    hold = Hold(tmp_path / "hold")
    env = {**env, **hold.env}            # the run's trials carry it to their workers
    hold.arm("epoch")                    # any trial stops after its first epoch
    held = hold.wait("epoch")[0]         # {"key", "point", "host", "pid", "attempt", ...}
    os.kill(held["pid"], signal.SIGKILL) # the trial in flight, however fast the machine
    hold.release_all()

Also the test settings of the fault suites' variants (docs/settings.md, "Testing"):
``MNIST_TEST_SPEED=slow`` slows every epoch of their runs (``PIPELINE_TEST_EPOCH_DELAY``),
``MNIST_TEST_SPEED=fast`` gives their runs the smallest data they allow.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

#: How long a wait may be without a reason given (seconds).
WAIT_BOUND = 60.0
#: The fault suites' variant (docs/settings.md, "Testing"): "", "slow" or "fast".
SPEED = os.environ.get("MNIST_TEST_SPEED", "")
#: Seconds added after every epoch in the slowed variant.
SLOW_EPOCH = 0.3


def speed_env() -> dict[str, str]:
    """The environment a fault test's runs get for the variant (:data:`SPEED`)."""
    return {"PIPELINE_TEST_EPOCH_DELAY": str(SLOW_EPOCH)} if SPEED == "slow" else {}


def train_samples(usual: int, smallest: int = 200) -> str:
    """``--train-samples`` for a fault test's runs: the usual, or the smallest the test
    allows in the fastest variant."""
    return str(smallest if SPEED == "fast" else usual)


def wait_for(check, what: str, timeout: float = WAIT_BOUND, *, why: str = "",
             every: float = 0.1):
    """Poll ``check()`` until it returns something true (returned), or fail after ``timeout``
    seconds naming ``what``. A wait longer than :data:`WAIT_BOUND` says why (``why``)."""
    if timeout > WAIT_BOUND and not why:
        raise ValueError(f"a wait of {timeout:g} s for {what} needs a reason (why=...)")
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


class Hold:
    """A hold folder: arm points, see who holds, release them."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    @property
    def env(self) -> dict[str, str]:
        return {"PIPELINE_TEST_HOLD": str(self.folder)}

    def _touch(self, name: str) -> None:
        (self.folder / name).write_text("")

    def arm(self, point: str, key: str = "*") -> None:
        """Arm ``point`` for ``key`` (every trial: ``*``); an earlier release of it (of every
        key, for ``*``) no longer counts."""
        pattern = f"*.{point}.release" if key == "*" else f"{key}.{point}.release"
        for release in self.folder.glob(pattern):
            release.unlink(missing_ok=True)
        self._touch(f"{key}.{point}.arm")

    def disarm(self, point: str, key: str = "*") -> None:
        (self.folder / f"{key}.{point}.arm").unlink(missing_ok=True)

    def release(self, point: str, key: str = "*") -> None:
        """Let ``key`` (every trial: ``*``) go on at ``point``, now and from now on."""
        self._touch(f"{key}.{point}.release")

    def release_all(self) -> None:
        """Every point disarmed and released: nothing holds from now on."""
        from tasks.trial.hold import POINTS

        for point in POINTS:
            self.release(point)
        for arm in self.folder.glob("*.arm"):
            arm.unlink(missing_ok=True)

    def held(self, point: str | None = None) -> list[dict]:
        """Who holds now (at ``point``, or anywhere): the ``.held`` files' contents, but for
        those of a process of this host that is gone: a trial's process killed with
        ``kill -9`` while it held cannot remove its own file, and a later wait would take it
        for a trial in flight."""
        found = []
        for path in self.folder.glob(f"*.{point or '*'}.held"):
            try:
                info = json.loads(path.read_text())
            except (OSError, ValueError):  # removed, or being replaced
                continue
            if info["host"] != socket.gethostname() or alive(info["pid"]):
                found.append(info)
        return found

    def wait(self, point: str, count: int = 1, where=None, *, what: str = "",
             timeout: float = WAIT_BOUND, why: str = "") -> list[dict]:
        """Wait until ``count`` trials hold at ``point`` (those for which ``where(info)`` is
        true, if given); returns every one holding then (more than ``count`` where several
        workers reached it)."""
        def holding():
            found = [h for h in self.held(point) if where is None or where(h)]
            return found if len(found) >= count else None

        return wait_for(holding, what or f"{count} trial(s) held at {point}", timeout, why=why,
                        every=0.02)

    def let_through(self, point: str, done, *, what: str, timeout: float = WAIT_BOUND,
                    why: str = "") -> dict:
        """With ``point`` armed: let every trial that holds there go, one key at a time, until
        ``done()`` is true (e.g. the run has its first result); then wait for a trial held
        there that was not let go, and return it: a trial in flight, however fast the
        machine."""
        released: set[str] = set()

        def progressed():
            for info in self.held(point):
                if info["key"] not in released:
                    released.add(info["key"])
                    self.release(point, info["key"])
            return done()

        wait_for(progressed, what, timeout, why=why, every=0.02)
        return self.wait(point, where=lambda h: h["key"] not in released,
                         what=f"a trial held at {point} after {what}")[0]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs on this host (a zombie, killed but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
