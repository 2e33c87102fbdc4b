"""User-facing errors: one clear line that names the bad value and what is allowed."""

from __future__ import annotations

from pydantic import ValidationError


class UserError(Exception):
    """A problem with the user's input (parameters, data file, directories).

    The command line prints ``error: <message>`` and exits with status 2, without a traceback.
    """


class DataError(UserError):
    """The MNIST file is missing, unreadable, or does not hold valid MNIST arrays."""


def describe_validation_error(error: ValidationError, prefix: str = "") -> str:
    """Turn a pydantic error into one line, e.g. ``dropout=1.5: must be less than 1``."""
    parts = []
    for item in error.errors():
        # list positions are left out: `dropout=1.5`, not `dropout.0=1.5`
        field = ".".join(str(p) for p in item.get("loc", ()) if not isinstance(p, int))
        field = field or "value"
        name = f"{prefix}{field}"
        value = item.get("input")
        message = item.get("msg", "invalid value")
        message = message.replace("Input should be", "must be").replace("Value error, ", "")
        if item.get("type") == "extra_forbidden":
            parts.append(f"{name}: unknown parameter")
        elif item.get("type") == "missing":
            parts.append(f"{name}: required")
        else:
            parts.append(f"{name}={value!r}: {message}")
    return "; ".join(parts)


def as_user_error(error: ValidationError, prefix: str = "") -> UserError:
    """Wrap a pydantic ValidationError as a UserError with a one-line message."""
    return UserError(describe_validation_error(error, prefix))


#: Errors that only wrap the one that matters: their own message says nothing about it
#: (Optuna's "An exception is raised during the commit. This typically happens due to invalid
#: data in the commit, e.g. exceeding max length." for a database connection that was lost).
WRAPPERS = ("StorageInternalError",)


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message ("" for none): libraries' messages (SQLAlchemy's,
    Arrow's) run over several lines, an ``error:`` line is one."""
    text = str(error).strip()
    return text.splitlines()[0].strip() if text else ""


def one_line(error: BaseException) -> str:
    """``Type: first line of the message`` of ``error``, for an ``error:`` line; an error of
    :data:`WRAPPERS` names the error it wraps instead (its ``__cause__``)."""
    while type(error).__name__ in WRAPPERS and error.__cause__ is not None:
        error = error.__cause__
    line = first_line(error)
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


class ReportError(RuntimeError):
    """A report step failed after the trials table was written: the run's results are safe
    (``trials.parquet`` in the named folder) and a rerun rebuilds the report from the cache."""


class TrialsFailed(RuntimeError):
    """More trials failed (after their retries) than the run tolerates. Raised after the
    report is written, so the run ends Failed with its results on disk."""


class ServiceOutage(RuntimeError):
    """A shared service (the team stack's lock service) stayed away longer than the run waits
    for it. The trial that met it fails, and the search loop ends the run with it: one line;
    finished trials are in the cache, so rerunning the same command resumes."""
