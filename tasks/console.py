"""Lines for the person at the terminal: printed, and sent to the run's log in the Prefect UI.

The bottom layer: it imports nothing of the project, so every module may use it."""

from __future__ import annotations


def say(line: str) -> None:
    """A line for the person at the terminal, also sent to the run's log in the Prefect UI."""
    print(line, flush=True)
    try:
        from prefect import get_run_logger

        get_run_logger().info(line)
    except Exception:  # outside a run: the terminal is enough
        pass
