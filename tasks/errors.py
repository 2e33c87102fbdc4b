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
