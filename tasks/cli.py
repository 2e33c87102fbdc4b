"""Command-line plumbing shared by the flows: common options, quiet logs, one-line errors."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from tasks.console import say
from tasks.errors import (
    ReportError,
    TrialsFailed,
    UserError,
    describe_validation_error,
    one_line,
)

__all__ = ["flow_main", "run_cli", "say"]  # say: the flows' one import for terminal lines


def check_inputs(kwargs: dict) -> None:
    """Fail fast, before Prefect or TensorFlow start: an existing Dask cluster needs a real
    Prefect server, the training subset must fit, the reports directory must be writable and
    the data must be readable and valid (read, validated and split, nothing written). Bounds
    are the models' own."""
    from tasks.data.prepare import check_data
    from tasks.files import check_writable_dir
    from tasks.run_options import FanOut
    from tasks.settings import current

    if "run" not in kwargs:  # a flow without the shared run options (predict) checks its own
        return
    run, fan_out = kwargs["run"], kwargs.get("fan_out", FanOut())
    if fan_out.dask_address:
        from tasks.search.runners import check_api_for_cluster

        check_api_for_cluster(fan_out.dask_address)
    check_data(run.data, run.split(), run.label)
    check_writable_dir(run.reports_dir or current().reports_dir)


def flow_main(flow, description: str, argv: list[str] | None = None,
              expand: tuple[str, ...] = (), make: dict | None = None,
              check: Callable[[dict], None] | None = None,
              files: dict[str, Callable] | None = None,
              prefixes: dict[str, str] | None = None):
    """A flow's command line: options generated from its signature (:mod:`tasks.options`),
    every input checked (``check``: the flow's own cross-field rules), then the flow run
    with the project's Prefect settings (:data:`PREFECT_SETTINGS`). ``files``: expanded
    models that can also be read from ``--NAME-file PATH`` by the given reader; ``prefixes``:
    expanded models whose options carry a prefix (:func:`tasks.options.flow_parser`)."""
    from tasks.options import flow_arguments, flow_parser

    files = files or {}
    parser = flow_parser(flow, description, expand, files=tuple(files), prefixes=prefixes)
    args = parser.parse_args(argv)
    quiet_logs(args.verbose)
    base = {name: read(getattr(args, f"{name}_file")) for name, read in files.items()
            if getattr(args, f"{name}_file", None)}
    kwargs = flow_arguments(flow, args, expand, make, base)
    if check is not None:
        check(kwargs)
    check_inputs(kwargs)
    with project_prefect_settings():
        end_temporary_server_with_command()
        return flow(**kwargs)


def end_temporary_server_with_command() -> None:
    """Where Prefect will start a temporary server for this command (no ``PREFECT_API_URL``),
    make it end with the command even after ``kill -9`` (:mod:`tasks.prefect_server`)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if not PREFECT_API_URL.value() and PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        from tasks.prefect_server import install

        install()


#: Prefect settings every command of the project runs with, from any working directory
#: (a ``prefect.toml`` would be read from the working directory only). A variable the user set
#: wins. A new PREFECT_HOME's temporary server creates and migrates its database first: ~21 s
#: on the project's 2-core machine, past Prefect's default of 20 s.
PREFECT_SETTINGS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": 120,
    "PREFECT_SERVER_ANALYTICS_ENABLED": False,
}


@contextlib.contextmanager
def project_prefect_settings():
    """Prefect's settings context with :data:`PREFECT_SETTINGS` (those not set by the user)."""
    import prefect.settings
    from prefect.settings import temporary_settings

    updates = {getattr(prefect.settings, name): value for name, value in PREFECT_SETTINGS.items()
               if name not in os.environ}
    with temporary_settings(updates=updates):
        yield


#: Run logs kept in ``<PREFECT_HOME>/logs`` (the oldest beyond it are removed).
KEPT_LOGS = 50
#: This command's log file, once :func:`quiet_logs` has opened it.
_log_path: Path | None = None


def quiet_logs(verbose: bool) -> Path | None:
    """Keep the terminal to the progress lines and one final line: Prefect's console handler
    shows nothing (runs still send their logs to the Prefect UI), Prefect's records and
    tracebacks go to a log file in ``<PREFECT_HOME>/logs/`` (returned, and named by the final
    error line), TensorFlow's start-up stays quiet. ``verbose``: everything on the terminal.
    Call before the first flow run (Prefect configures its logging then)."""
    global _log_path
    if verbose:
        from tasks.settings import override

        override(tf_logs=True)
        return None
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # a log handler that fails (Prefect's sender, with its server away) stays off the terminal,
    # and so do libraries' warnings (Optuna's figures on a one-value axis): to the log file
    logging.raiseExceptions = False
    logging.captureWarnings(True)
    # worker processes started from here: their Prefect records go to the UI only
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    from prefect.logging.handlers import PrefectConsoleHandler
    from prefect.settings import get_current_settings

    for name in ("", "uvicorn", "fastapi"):  # this process: logging is already configured
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, PrefectConsoleHandler):
                handler.setLevel(logging.CRITICAL)
    folder = Path(get_current_settings().home).expanduser() / "logs"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for old in sorted(folder.glob("*.log"))[:-KEPT_LOGS]:
            old.unlink(missing_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = folder / f"{Path(sys.argv[0]).stem or 'run'}-{stamp}-{os.getpid()}.log"
        handler = logging.FileHandler(path, delay=True, encoding="utf-8")
    except OSError:  # no writable Prefect home: the UI still has the records
        return None
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s | %(levelname)-7s | %(name)s | %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger("distributed.nanny").addHandler(_DaskWorkerLoss())
    _log_path = path
    return path


class _DaskWorkerLoss(logging.Handler):
    """One terminal line when Dask restarts a worker that died (Dask reruns its trials)."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Restarting worker"):
            say("worker lost (a Dask worker died: killed by signal 9 or the OOM killer?); "
                "Dask restarts it and retries its trials")


def _details() -> str:
    return f" (details: {_log_path})" if _log_path is not None else ""


INTERRUPTED = "interrupted: finished trials are cached; rerun the same command to resume"


def stop_children(grace: float = 2.0) -> None:
    """End every process this one started (the temporary Prefect server, process-pool and
    Dask workers): SIGTERM, then SIGKILL after ``grace`` seconds."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=grace)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()


def _on_interrupt(signum, frame) -> None:  # pragma: no cover (tested through a real command)
    """Ctrl-C: leave at once. Every finished trial is already in the result storage; waiting
    for Prefect to wind down against a temporary server that the same Ctrl-C has stopped
    took minutes of API errors."""
    print(INTERRUPTED, file=sys.stderr, flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # what this process's other threads say while it ends is noise
    stop_children()
    os._exit(130)


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    """Run ``main``; user errors become ``error: <one line>`` and exit status 2, a failed run
    (failed trials, a failed report step) exit status 1, Ctrl-C exit status 130 at once."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, _on_interrupt)
    try:
        main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"error: {describe_validation_error(exc)}", file=sys.stderr)
        return 2
    except (ReportError, TrialsFailed) as exc:
        print(f"error: {exc}{_details()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except RuntimeError as exc:
        if "ephemeral Prefect API server" not in str(exc):
            return unexpected(exc)
        from prefect.settings import get_current_settings

        limit = get_current_settings().server.ephemeral.startup_timeout_seconds
        print(f"error: Prefect's temporary server did not start within {limit:g} s (a busy "
              "machine?): raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or point "
              "PREFECT_API_URL at a running `prefect server start`", file=sys.stderr)
        return 1
    except Exception as exc:
        return unexpected(exc)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return 0


def unexpected(error: BaseException) -> int:
    """Anything else that ends a run: one line on the terminal, the traceback in the log
    (on the terminal too when there is no log: ``-v``, or no writable Prefect home)."""
    import traceback

    if _log_path is None:
        traceback.print_exception(error)
    else:
        logging.getLogger("tasks.cli").error("the run failed", exc_info=error)
    outage = server_outage(error)
    if outage:
        print(f"error: {outage} ({one_line(error)}); finished trials are cached: "
              f"rerun the same command once it is back{_details()}", file=sys.stderr)
        return 1
    print(f"error: {one_line(error)}{_details()}", file=sys.stderr)
    return 1


def server_outage(error: BaseException) -> str | None:
    """Which server a run lost, in words, when ``error`` says it could not reach Prefect's
    API (a refused or timed-out connection, Prefect's "Failed to reach API"); else None."""
    import httpx

    text = str(error)
    if isinstance(error, httpx.TransportError) or "Failed to reach API" in text:
        from prefect.settings import PREFECT_API_URL

        url = PREFECT_API_URL.value()
        return (f"the Prefect server {url} stopped answering" if url
                else "Prefect's temporary server stopped answering")
    return None
