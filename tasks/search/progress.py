"""What the person at the terminal sees of a search: one line per trial told, and the run's
progress artifact in the Prefect UI (:func:`tasks.search.loop.run_trials` reports to them).
"""

from __future__ import annotations

from tasks.console import say
from tasks.search.admission import Admission
from tasks.trial.result import TrialResult


def progress_line(result: TrialResult, done: int, total: int | None, note: str = "") -> str:
    """One terminal line per finished trial (``total`` None: not known in advance, as with a
    budget; ``note`` is added in brackets)."""
    width = len(str(total))
    head = (f"[{done:>{width}}/{total}]" if total is not None else f"[{done}]") + \
        f" {result.config.label()}"
    tail = f" [{note}]" if note else ""
    return _progress_body(result, head) + tail


def _progress_body(result: TrialResult, head: str) -> str:
    if result.status == "failed":
        return f"{head} -> FAILED: {result.error}"
    if result.status == "pruned":
        source = "cached" if result.cached else f"trained {result.train_seconds:.1f}s"
        return (f"{head} -> pruned after epoch {len(result.history)}, val "
                f"{result.val_accuracy:.4f} ({source})")
    source = "cached" if result.cached else f"trained in {result.train_seconds:.1f}s"
    return (
        f"{head} -> val {result.val_accuracy:.4f} test {result.test_accuracy:.4f} ({source})"
    )


class Progress:
    """One terminal line per trial told, and the run's progress artifact: in percent of the
    trials when their number is known, else of the admission hook's limit (a budget).
    ``key``: the artifact's key."""

    def __init__(self, key: str, total: int | None, admission: Admission | None):
        from prefect.artifacts import create_progress_artifact

        self.total, self.admission = total, admission
        self.artifact = create_progress_artifact(
            0.0, key=key,
            description=(f"{total} trials finished, in percent" if total is not None else
                         "training budget spent, in percent"))

    def told(self, result: TrialResult, done: int) -> None:
        from prefect.artifacts import update_progress_artifact

        note = self.admission.status() if self.admission is not None else ""
        say(progress_line(result, done, self.total, note))
        share = (done / max(self.total, 1) if self.total is not None
                 else self.admission.share())
        update_progress_artifact(self.artifact, min(100.0, 100.0 * share))
