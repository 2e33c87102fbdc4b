"""What a trial gives back: a small, typed result (never a Keras model), and a run's counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tasks.config import TrialConfig, trial_key
from tasks.data.splits import DataHandle

TrialStatus = Literal["completed", "failed", "pruned"]


class TrialResult(BaseModel):
    """The small result of one trial: metrics, history, timings and the weights' path."""

    model_config = ConfigDict(extra="ignore")

    trial_key: str
    config: TrialConfig
    data_fingerprint: str
    backend: str = "compiled"
    #: pruned: stopped early by a pruner; its history holds the epochs done, its metrics are
    #: the last epoch's validation ones. Never cached as the trial's result (see train_trial).
    status: TrialStatus = "completed"
    error: str | None = None
    train_loss: float | None = None
    train_accuracy: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    test_loss: float | None = None
    test_accuracy: float | None = None
    best_epoch: int | None = None
    train_seconds: float | None = None
    param_count: int | None = None
    #: inference milliseconds per image at a fixed batch, on the machine that measured it
    #: (tasks.trial.latency); None until measured (trials trained before it existed)
    latency_ms: float | None = None
    weights_path: str | None = None
    history: list[dict[str, float]] = Field(default_factory=list)
    attempts: int = 1  # the attempt that trained it (2 or more: after retries)
    cached: bool = False  # set when collected: True if this run did not train it

    @property
    def test_error_rate(self) -> float | None:
        """Test error rate in percent."""
        return None if self.test_accuracy is None else 100.0 * (1.0 - self.test_accuracy)

    @classmethod
    def columns(cls) -> list[str]:
        """The results table's columns, in order: every field of the trial key included."""
        return list(cls(trial_key="", config=TrialConfig(), data_fingerprint="").row())

    def row(self) -> dict[str, Any]:
        """One flat row for the results table (Parquet)."""
        return {
            "trial_key": self.trial_key,
            **self.config.model_dump(),
            "train_loss": self.train_loss,
            "train_accuracy": self.train_accuracy,
            "val_loss": self.val_loss,
            "val_accuracy": self.val_accuracy,
            "test_loss": self.test_loss,
            "test_accuracy": self.test_accuracy,
            "test_error_rate": self.test_error_rate,
            "best_epoch": self.best_epoch,
            "train_seconds": self.train_seconds,
            "param_count": self.param_count,
            "latency_ms": self.latency_ms,
            "backend": self.backend,
            "data_fingerprint": self.data_fingerprint,
            "attempts": self.attempts,
            "cached": self.cached,
            "status": self.status,
            "error": self.error,
            "weights_path": self.weights_path,
        }



def failed_result(
    config: TrialConfig, data: DataHandle, backend: str, error: BaseException | str
) -> TrialResult:
    """The result of a trial that failed (after its retries), naming the error in one line."""
    message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return TrialResult(
        trial_key=trial_key(config, data.fingerprint, backend),
        config=config,
        data_fingerprint=data.fingerprint,
        backend=backend,
        status="failed",
        error=message.strip().splitlines()[-1][:500] if message.strip() else "failed",
    )


def weights_exist(result: TrialResult) -> bool:
    """True if the trial's saved weights are where its (possibly cached) result says."""
    return bool(result.weights_path) and Path(result.weights_path).is_file()


@dataclass(frozen=True)
class RunCounts:
    """How many distinct trials a run trained, took from the cache, saw pruned, or lost."""

    trials: int
    trained: int
    cached: int
    pruned: int
    failed: int

    def summary(self) -> str:
        """``3 trained, 22 from cache, 0 failed`` (pruned only when there are some)."""
        pruned = f", {self.pruned} pruned" if self.pruned else ""
        return f"{self.trained} trained, {self.cached} from cache{pruned}, {self.failed} failed"


def count_results(results: Sequence[TrialResult]) -> RunCounts:
    """Count distinct trials (by trial key). A config trained in this run and then asked
    again counts as trained."""
    by_key: dict[str, TrialResult] = {}
    for result in results:
        known = by_key.get(result.trial_key)
        if known is None or (known.cached and not result.cached):
            by_key[result.trial_key] = result
    distinct = by_key.values()
    return RunCounts(
        trials=len(distinct),
        trained=sum(1 for r in distinct if r.status == "completed" and not r.cached),
        cached=sum(1 for r in distinct if r.status == "completed" and r.cached),
        pruned=sum(1 for r in distinct if r.status == "pruned"),
        failed=sum(1 for r in distinct if r.status == "failed"),
    )
