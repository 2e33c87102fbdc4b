"""Prefect's temporary server ends with the command that started it, even after ``kill -9``.

Without ``PREFECT_API_URL``, Prefect starts a temporary API server for the command: a
``python -m uvicorn ...`` child started with a plain ``Popen``
(``prefect.server.api.server.SubprocessASGIServer``) and stopped only from an ``atexit``
hook. ``kill -9`` (the OOM killer, a deployment cancelled hard) skips that hook, and the
server (~250 MB) runs on for ever (issue 31: every kill test left one).

:func:`install` makes Prefect start the same command through this file instead
(``python tasks/prefect_server.py PARENT_PID -m uvicorn ...``): it starts a watch thread and
then runs uvicorn in the same process, as ``python -m uvicorn`` would. The watch checks every
:data:`POLL_SECONDS` s that the process that started the server is still its parent; once it
is not, the server stops as on Prefect's own stop (SIGTERM), and exits at once if that takes
longer than :data:`STOP_SECONDS` s. ``prctl(PR_SET_PDEATHSIG)`` is not used: it fires when
the *thread* that started the child ends, and Prefect may start its server from any thread.

Run as a script, this file imports nothing of the project (its folder is not a package
root there), so the server's own imports are what ``python -m uvicorn`` has.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

#: How often the server checks that the command that started it is alive (seconds).
POLL_SECONDS = 0.5
#: Seconds the server has to stop by itself (SIGTERM) before it exits at once.
STOP_SECONDS = 3.0


def end_with_parent(parent: int, poll: float = POLL_SECONDS, stop: float = STOP_SECONDS) -> None:
    """End this process soon after ``parent`` (its parent's pid at start) has died: SIGTERM to
    itself, then ``os._exit`` after ``stop`` seconds. Exits at once if ``parent`` is gone
    already (killed while this process started)."""
    if os.getppid() != parent:
        os._exit(0)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll)
        os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's own graceful stop
        time.sleep(stop)
        os._exit(0)

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()


def watched_command(args: list[str]) -> list[str]:
    """``args`` (``[python, "-m", "uvicorn", ...]``) run through this file, watching this
    process; any other command unchanged."""
    if len(args) >= 3 and args[1:3] == ["-m", "uvicorn"]:
        return [args[0], os.path.abspath(__file__), str(os.getpid()), *args[1:]]
    return args


class _Subprocess:
    """Stands for the ``subprocess`` module inside ``prefect.server.api.server``: its
    ``Popen`` starts the server through :func:`watched_command`; everything else is the
    module's own."""

    def __getattr__(self, name: str):
        import subprocess

        return getattr(subprocess, name)

    @staticmethod
    def Popen(args, *more, **kwargs):  # noqa: N802 (subprocess's name)
        import subprocess

        return subprocess.Popen(watched_command(list(args)), *more, **kwargs)


def install() -> None:
    """Make this process's temporary Prefect server (if it starts one) end with it.
    Idempotent; call before the first flow run."""
    from prefect.server.api import server

    if not isinstance(server.subprocess, _Subprocess):
        server.subprocess = _Subprocess()


def main(argv: list[str]) -> None:
    """``PARENT_PID -m MODULE ARGS...``: watch PARENT_PID, then run MODULE as ``python -m``."""
    import runpy

    if len(argv) < 3 or argv[1] != "-m":
        sys.exit(f"usage: {os.path.basename(__file__)} PARENT_PID -m MODULE [ARGS...]")
    end_with_parent(int(argv[0]))
    sys.path[0] = os.getcwd()  # what `python -m` puts first (not this file's folder)
    sys.argv = [argv[2], *argv[3:]]
    runpy.run_module(argv[2], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
