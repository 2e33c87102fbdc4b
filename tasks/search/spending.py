"""``--budget``: a search that stops before it overspends a budget of training minutes.

**What a budget counts: training minutes**, the sum of the trials' measured training times
(``train_seconds``), over every worker, a trial from the cache at the time it took when it was
trained. Not the wall clock, because:

- it is the axis of the report's "best accuracy per minute of training" curve
  (:mod:`tasks.search.budget`), so the curve of an earlier search says what a budget buys;
- it does not change with the number of workers, start-up or report time (the wall clock of a
  2-worker run is about half of it, plus a fixed overhead);
- a rerun of the same budgeted command makes the same choices from the cache and trains
  nothing, instead of buying more trials with the time the cache saved.

**The rule: no trial starts that the budget cannot finish.** Before a config is trained its
cost is predicted (:class:`CostModel`); it starts only if the minutes spent, plus the
predicted cost of the trials in flight, plus its own, fit in the budget. A config the cache
holds is not trained: it is taken while any of the budget is left and charged its measured
time, so that a rerun of a budgeted command takes the trials the first run trained, all from
the cache (the first run started each of them with budget to spare, by its prediction).
When a config does not fit and trials are in flight, the search waits for them (they may
cost less than predicted) and asks again; when nothing is in flight and it still does not
fit, the search ends there: that config is not trained, and no later, cheaper one is tried
instead (the same rule as the per-budget curve). Trials in flight always finish. The
over-run is therefore only the predictions' error (or, when the cache held the last trial
taken, at most its measured time), the under-run at most the cost of the config that did
not fit.

**Predictions follow this run's pace.** The cache's times were measured on the machine and
under the load of the runs that trained them; this run may be faster or slower (another
machine, other work beside it). So a config to be trained is predicted, first, by the mean
of the trials of its shape this run trained; else by the cache's cost model times the run's
pace, once :data:`PACE_AFTER` trials have trained in this run: their measured seconds over
what the cache's model predicted for them (:meth:`Spending.pace`, within
:data:`PACE_LIMITS`). A config the cache holds costs its measured time, unscaled.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field

from tasks.config import TrialConfig, trial_key
from tasks.durations import minutes_text, parse_budget
from tasks.search.admission import Verdict
from tasks.trial.result import TrialResult

#: Seconds of training per unit of :meth:`TrialConfig.training_cost` before anything was
#: measured (a new cache): about the median over the default study's 400 trials on the
#: project's 2-core AMD EPYC (4.25e-5, 2026-12-02, a busy machine). Replaced by the cache's
#: own ratio as soon as it holds a trial.
DEFAULT_SECONDS_PER_COST = 4.0e-5

#: Trials this run must have trained before its pace scales the predictions, and the range
#: the pace is kept in (module doc).
PACE_AFTER = 2
PACE_LIMITS = (0.25, 4.0)


def shape(config: TrialConfig) -> tuple[int, int, int, int]:
    """What a trial's training time mostly depends on: units, hidden layers, batch size,
    epochs."""
    return (config.units, config.layers, config.batch_size, config.epochs)


def measured_seconds(result: TrialResult) -> float | None:
    """What the trial cost to train (a pruned one: its epochs so far), if it was measured."""
    seconds = result.train_seconds
    if result.status == "failed" or seconds is None or not seconds > 0:
        return None
    return float(seconds)


def full_seconds(result: TrialResult) -> float | None:
    """What the trial would cost with all its epochs: a pruned trial's time scaled up."""
    seconds = measured_seconds(result)
    if seconds is None:
        return None
    if result.status == "pruned" and result.history:
        return seconds * result.config.epochs / len(result.history)
    return seconds


class CostModel:
    """Predicts a config's training seconds on this data and backend (module doc).

    In order: the config's own measured time when the cache holds it; else the mean measured
    time of the trials of the same shape (:func:`shape`); else a size model, seconds =
    rate x ``training_cost(train_size)``, with the rate the median over every measured trial
    (:data:`DEFAULT_SECONDS_PER_COST` while there is none). It holds the cache as the run
    found it: the run's own trials are :class:`Spending`'s (its pace)."""

    def __init__(self, results: Iterable[TrialResult], train_size: int):
        self.train_size = train_size
        self.known: dict[str, float] = {}
        self.by_shape: dict[tuple[int, int, int, int], list[float]] = {}
        self.rates: list[float] = []
        for result in results:
            self.observe(result)

    def observe(self, result: TrialResult) -> None:
        seconds = full_seconds(result)
        if seconds is None:
            return
        if result.status == "completed":
            self.known[result.trial_key] = seconds
        self.by_shape.setdefault(shape(result.config), []).append(seconds)
        self.rates.append(seconds / result.config.training_cost(self.train_size))

    def rate(self) -> float:
        return statistics.median(self.rates) if self.rates else DEFAULT_SECONDS_PER_COST

    def predict(self, config: TrialConfig, key: str | None = None) -> float:
        """Predicted training seconds of ``config`` (``key``: its trial key, if known)."""
        if key is not None and key in self.known:
            return self.known[key]
        same = self.by_shape.get(shape(config))
        if same:
            return statistics.fmean(same)
        return self.rate() * config.training_cost(self.train_size)

    def source(self, config: TrialConfig, key: str | None = None) -> str:
        """How :meth:`predict` got its number (for the report)."""
        if key is not None and key in self.known:
            return "its own measured time"
        if self.by_shape.get(shape(config)):
            return f"mean of {len(self.by_shape[shape(config)])} trials of its shape"
        return "size model"


@dataclass
class Spending:
    """A budget of ``minutes`` of training being spent by one run (module doc): the loop's
    admission hook (:class:`tasks.search.admission.Admission`).

    The loop asks :meth:`admit` before it starts a config, :meth:`started` when it does and
    :meth:`charge` when the trial is told; :meth:`summary` is the report's account."""

    minutes: float
    model: CostModel
    data_fingerprint: str
    backend: str
    spent_seconds: float = 0.0
    bought: int = 0  # trials charged (trained now or from the cache)
    from_cache: int = 0
    in_flight: dict[str, float] = field(default_factory=dict)  # key -> predicted seconds
    predicted: dict[str, float] = field(default_factory=dict)  # key -> prediction at start
    refused: tuple[str, float, str] | None = None  # (label, predicted s, source) that ended it
    paced: list[tuple[float, float]] = field(default_factory=list)  # (measured, predicted) s
    unscaled: dict[str, float] = field(default_factory=dict)  # key -> the model's prediction
    run_shapes: dict[tuple[int, int, int, int], list[float]] = field(default_factory=dict)

    @property
    def budget_seconds(self) -> float:
        return self.minutes * 60.0

    def key(self, config: TrialConfig) -> str:
        return trial_key(config, self.data_fingerprint, self.backend)

    def committed(self) -> float:
        """Seconds spent plus the predicted cost of the trials in flight."""
        return self.spent_seconds + sum(self.in_flight.values())

    def pace(self) -> float:
        """This run's trained trials' measured seconds over their predictions (1 before
        :data:`PACE_AFTER` of them; kept within :data:`PACE_LIMITS`)."""
        if len(self.paced) < PACE_AFTER:
            return 1.0
        ratio = sum(m for m, _ in self.paced) / max(sum(p for _, p in self.paced), 1e-9)
        return min(max(ratio, PACE_LIMITS[0]), PACE_LIMITS[1])

    def predict(self, config: TrialConfig, key: str | None = None) -> float:
        """Predicted seconds of ``config`` in this run (module doc): a cached config's
        measured time; else the mean of its shape's trials trained in this run; else the
        cache's cost model at this run's pace."""
        key = key or self.key(config)
        if key in self.model.known:
            return self.model.predict(config, key)
        here = self.run_shapes.get(shape(config))
        if here:
            return statistics.fmean(here)
        return self.model.predict(config, key) * self.pace()

    def source(self, config: TrialConfig, key: str | None = None) -> str:
        """How :meth:`predict` got its number (for the report)."""
        key = key or self.key(config)
        here = self.run_shapes.get(shape(config))
        if key not in self.model.known and here:
            return f"mean of {len(here)} trials of its shape trained in this run"
        text = self.model.source(config, key)
        if key not in self.model.known and self.pace() != 1.0:
            text += f", at this run's pace x{self.pace():.2f}"
        return text

    def admit(self, config: TrialConfig) -> Verdict:
        key = self.key(config)
        cost = self.predict(config, key)
        if key in self.model.known:
            # in the cache: nothing is trained, so it is taken while any budget is left, and
            # charged its measured time (a rerun replays an earlier run's choices)
            if self.committed() < self.budget_seconds:
                return Verdict.START
        elif self.committed() + cost <= self.budget_seconds:
            return Verdict.START
        if self.in_flight:
            return Verdict.WAIT
        self.refused = (config.label(), cost, self.source(config, key))
        return Verdict.STOP

    def started(self, config: TrialConfig) -> None:
        key = self.key(config)
        self.in_flight[key] = self.predicted[key] = self.predict(config, key)
        if key not in self.model.known:
            self.unscaled[key] = self.model.predict(config, key)

    def charge(self, result: TrialResult) -> None:
        """A trial this budget admitted was told: its measured time is spent (one it did
        not admit, a known config, costs nothing)."""
        if self.in_flight.pop(result.trial_key, None) is None:
            return
        seconds = measured_seconds(result) or 0.0
        unscaled = self.unscaled.pop(result.trial_key, None)
        if not result.cached:
            full = full_seconds(result)
            if full is not None:
                self.run_shapes.setdefault(shape(result.config), []).append(full)
            if unscaled and result.status == "completed":
                self.paced.append((seconds, unscaled))
        self.spent_seconds += seconds
        self.bought += 1
        self.from_cache += bool(result.cached)

    def describe(self, runner: str) -> str:
        """The terminal's line before the first trial (``runner``: ``processes x 2``)."""
        return (f"Budget: {minutes_text(self.minutes)} of training, {runner}; no trial starts "
                "that the rest cannot finish")

    def status(self) -> str:
        """The terminal's note on a trial line: ``3.21 of 10 min of training spent``."""
        return (f"{minutes_text(self.spent_seconds / 60)} of {minutes_text(self.minutes)} of "
                "training spent")

    def share(self) -> float:
        """The share of the budget spent (the progress artifact's)."""
        return self.spent_seconds / self.budget_seconds

    def closing_line(self) -> str:
        """The terminal's line after the last trial: :meth:`summary`'s."""
        return self.summary().line()

    def summary(self) -> BudgetSummary:
        return BudgetSummary(
            budget_minutes=self.minutes, spent_minutes=self.spent_seconds / 60.0,
            trials=self.bought, from_cache=self.from_cache,
            stopped_by=(None if self.refused is None else
                        f"{self.refused[0]} (predicted {self.refused[1]:.1f} s from "
                        f"{self.refused[2]}) did not fit in the "
                        f"{(self.budget_seconds - self.spent_seconds):.1f} s left"))


@dataclass(frozen=True)
class BudgetSummary:
    """What a budgeted run reports: the budget, what it used, what it bought."""

    budget_minutes: float
    spent_minutes: float
    trials: int
    from_cache: int
    stopped_by: str | None  # None: the search ran out of configs before the budget

    @property
    def overrun(self) -> float:
        """Spent minus budget, as a fraction of the budget (negative: under-run)."""
        return self.spent_minutes / self.budget_minutes - 1.0

    def line(self) -> str:
        end = (f"; stopped: {self.stopped_by}" if self.stopped_by
               else "; the search ran out of configs first")
        return (f"Budget {minutes_text(self.budget_minutes)} of training: "
                f"{minutes_text(self.spent_minutes)} used ({100 * self.overrun:+.1f} %), "
                f"{self.trials} trials bought "
                f"({self.from_cache} of them from the cache, at their measured time){end}")


def make_spending(budget: str | float | None, data, backend: str) -> Spending | None:
    """The run's :class:`Spending` of ``budget`` (None: no budget), its cost model read from
    every trial the cache holds on this data and backend. Call it where the trials' result
    storage is (the flow)."""
    if budget is None:
        return None
    from tasks.trial.store import cached_results

    model = CostModel(cached_results(data.fingerprint, backend), data.train_size)
    return Spending(parse_budget(budget), model, data.fingerprint, backend)
