"""Command-line plumbing shared by the flows: common options, quiet logs, one-line errors."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from pydantic import ValidationError

from tasks.config import ACTIVATIONS
from tasks.errors import ReportError, UserError, describe_validation_error
from tasks.runners import RUNNERS


def add_common_options(parser: argparse.ArgumentParser, epochs: int) -> None:
    """Options every flow shares: data, output, training length, runner, logging."""
    group = parser.add_argument_group("data and output")
    group.add_argument("--data", metavar="PATH", default=None,
                       help="Keras-format mnist.npz (default: $MNIST_PATH, else Keras' "
                            "cache/download)")
    group.add_argument("--train-samples", type=int, metavar="N", default=None,
                       help="use only the first N training images (quick runs)")
    group.add_argument("--reports-dir", metavar="DIR", default=None,
                       help="where the run folder is written (default: ./reports or "
                            "$PIPELINE_REPORTS_DIR)")
    group.add_argument("--data-dir", metavar="DIR", default=None,
                       help="processed data and trained weights (default: ./data or "
                            "$PIPELINE_DATA_DIR)")
    group = parser.add_argument_group("training")
    group.add_argument("--epochs", type=int, default=epochs, help=f"epochs per trial "
                       f"(default: {epochs})")
    group.add_argument("--backend", choices=["compiled", "keras"], default="compiled",
                       help="compiled: whole epochs as one TF graph (fast, default); keras: "
                            "the exercise's model.fit (reference)")
    group.add_argument("-v", "--verbose", action="store_true",
                       help="show Prefect's and TensorFlow's own logs")


def add_runner_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("fan-out")
    group.add_argument("--runner", choices=RUNNERS, default="auto",
                       help="task runner: threads (in this process), processes (worker "
                            "processes) or dask (prefect-dask); default: auto = one worker "
                            "process per core for a large search, one thread for a small one")
    group.add_argument("--workers", type=int, default=None,
                       help="trials trained at once (default: one per core for processes "
                            "and dask, 1 for threads)")
    group.add_argument("--dask-address", metavar="tcp://HOST:PORT", default=None,
                       help="with --runner dask: an existing scheduler (default: a local "
                            "cluster of --workers processes)")


def add_hyperparameter_options(parser: argparse.ArgumentParser, defaults: dict,
                               many: bool) -> None:
    """--units, --dropout, --activation, --learning-rate, --batch-size (one or many values)."""
    group = parser.add_argument_group("hyperparameters" + (" (each takes one or more "
                                      "values; the grid is their product)" if many else ""))
    nargs = "+" if many else None

    def shown(name: str) -> str:
        value = defaults[name]
        return " ".join(str(v) for v in value) if isinstance(value, list) else str(value)

    group.add_argument("--units", type=int, nargs=nargs, default=defaults["units"],
                       help=f"hidden units, >= 1 (default: {shown('units')})")
    group.add_argument("--dropout", type=float, nargs=nargs, default=defaults["dropout"],
                       help=f"dropout rate in [0, 1) (default: {shown('dropout')})")
    group.add_argument("--activation", choices=ACTIVATIONS, nargs=nargs,
                       default=defaults["activation"],
                       help=f"hidden activation (default: {shown('activation')})")
    group.add_argument("--learning-rate", type=float, nargs=nargs,
                       default=defaults["learning_rate"],
                       help=f"Adam learning rate, > 0 (default: {shown('learning_rate')})")
    group.add_argument("--batch-size", type=int, nargs=nargs, default=defaults["batch_size"],
                       help=f"minibatch size, >= 1 (default: {shown('batch_size')})")


def check_runner(runner: str, workers: int | None, dask_address: str | None = None) -> None:
    if workers is not None and workers < 1:
        raise UserError(f"workers={workers}: must be at least 1")
    if dask_address:
        if runner != "dask":
            raise UserError(f"--dask-address needs --runner dask (not {runner})")
        from tasks.runners import check_api_for_cluster

        check_api_for_cluster(dask_address)


def check_inputs(args: argparse.Namespace) -> None:
    """Fail fast, before Prefect or TensorFlow start: fan-out options, training subset,
    reports directory and the data file (read and validated)."""
    from tasks.config import make_split
    from tasks.data import check_mnist_file
    from tasks.report import check_writable_dir, default_reports_dir

    if hasattr(args, "workers"):
        check_runner(args.runner, args.workers, getattr(args, "dask_address", None))
    split = make_split(args.train_samples)
    check_writable_dir(args.reports_dir or default_reports_dir())
    check_mnist_file(args.data, split)


def quiet_logs(verbose: bool) -> None:
    """Keep the terminal to one line per trial: Prefect's console shows warnings only (runs
    still send their INFO logs to the Prefect UI) and TensorFlow's start-up stays quiet.
    Call before the first flow run (Prefect configures its logging then)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # the temporary local server can take longer than Prefect's 20 s on a busy 2-core machine
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if verbose:
        os.environ["PIPELINE_TF_LOGS"] = "1"
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")  # new processes
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler

    for name in ("", "uvicorn", "fastapi"):  # this process: logging is already configured
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, PrefectConsoleHandler):
                handler.setLevel(logging.WARNING)


def say(line: str) -> None:
    """A line for the person at the terminal, also sent to the run's log in the Prefect UI."""
    print(line, flush=True)
    try:
        from prefect import get_run_logger

        get_run_logger().info(line)
    except Exception:  # outside a run: the terminal is enough
        pass


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    """Run ``main``; user errors become ``error: <one line>`` and exit status 2."""
    try:
        main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"error: {describe_validation_error(exc)}", file=sys.stderr)
        return 2
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished trials are cached; rerun the same command to resume",
              file=sys.stderr)
        return 130
    return 0
