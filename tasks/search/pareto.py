"""Accuracy against cost: the Pareto front of a search's trials, and "the smallest network within
half a point of the best".

A search picks the most accurate network; a practitioner often wants the cheapest one that is
nearly as good. The cost is a column of the trials table: ``param_count`` (trainable
parameters, recorded for every completed trial) by default; any other numeric column where
lower is better (e.g. a future ``latency_ms``) works through the ``cost`` argument. The
accuracy is ``val_accuracy`` by default (selection on validation, never on test).

Only *completed* trials with a finite accuracy and a finite cost take part: failed and pruned
trials (a pruned trial's accuracy is that of an unfinished network) and rows with NaN are
ignored, and a trial that appears twice (the same ``trial_key``) counts once.

Pure numpy / pandas: no plotting, no Prefect. Both functions are O(n log n) (one sort).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

#: "Within half a point of the best": the default tolerance on the accuracy.
DEFAULT_TOLERANCE = 0.005
#: Slack on the tolerance so that an accuracy exactly ``tolerance`` below the best (e.g. 0.975
#: against 0.980, counts of 2000 images) is within it despite floating-point rounding.
_EPS = 1e-12


def usable_trials(frame: pd.DataFrame, accuracy: str = "val_accuracy",
                  cost: str = "param_count") -> pd.DataFrame:
    """The trials the front is built from: completed (when the frame has a ``status``
    column), with a finite ``accuracy`` and a finite ``cost``, one row per ``trial_key`` (the
    first), in the frame's order, index reset. ``accuracy`` and ``cost`` are numeric in the
    result."""
    for column in (accuracy, cost):
        if column not in frame.columns:
            raise ValueError(f"pareto: no column {column!r}; have {list(frame.columns)}")
    done = frame
    if "status" in frame.columns:
        done = done[done["status"] == "completed"]
    if "trial_key" in done.columns:
        done = done.drop_duplicates("trial_key")
    done = done.copy()
    done[accuracy] = pd.to_numeric(done[accuracy], errors="coerce").astype(np.float64)
    done[cost] = pd.to_numeric(done[cost], errors="coerce").astype(np.float64)
    finite = np.isfinite(done[accuracy].to_numpy()) & np.isfinite(done[cost].to_numpy())
    return done[finite].reset_index(drop=True)


def _order(done: pd.DataFrame, keys: list[tuple[str, bool]]) -> np.ndarray:
    """Positions of ``done``'s rows sorted by ``keys`` ((column, ascending) pairs, the first
    the primary key), then by ``trial_key`` when there is one, then by position."""
    columns = [column for column, _ in keys]
    ascending = [asc for _, asc in keys]
    if "trial_key" in done.columns:
        columns.append("trial_key")
        ascending.append(True)
    ordered = done[columns].copy()
    ordered["_position"] = np.arange(len(done))
    ordered = ordered.sort_values([*columns, "_position"], ascending=[*ascending, True],
                                  kind="mergesort")
    return ordered["_position"].to_numpy()


def pareto_front(frame: pd.DataFrame, accuracy: str = "val_accuracy",
                 cost: str = "param_count") -> pd.DataFrame:
    """The completed trials that no other completed trial dominates, cheapest first.

    A trial is *dominated* when another one costs no more (``cost`` <=) and is at least as
    accurate (``accuracy`` >=), and is strictly better in at least one of the two. So the
    front rises: each trial on it is strictly more accurate and strictly more costly than the
    one before.

    Ties: of trials with the *same* cost and the *same* accuracy (none dominates the other),
    only one is kept: the first by ``trial_key`` (by position in ``frame`` when there is no
    ``trial_key`` column). A trial with equal cost and lower accuracy, or with equal accuracy
    and higher cost, is dominated.

    Returns the front's rows (all of ``frame``'s columns; ``accuracy`` and ``cost`` as floats),
    sorted by cost ascending, index reset; empty when no trial is usable (see
    :func:`usable_trials`). O(n log n): one sort by (cost ascending, accuracy descending,
    trial_key), then a running maximum of the accuracy.
    """
    done = usable_trials(frame, accuracy, cost)
    if done.empty:
        return done
    order = _order(done, [(cost, True), (accuracy, False)])
    acc = done[accuracy].to_numpy()[order]
    # kept: strictly more accurate than every trial before it in the order (all of which cost
    # no more); the first of a group of equal cost is the group's most accurate (and first by
    # trial_key), the others are dominated by it or tie with it
    before = np.concatenate([[-np.inf], np.maximum.accumulate(acc)[:-1]])
    return done.iloc[order[acc > before]].reset_index(drop=True)


def smallest_within(frame: pd.DataFrame, tolerance: float = DEFAULT_TOLERANCE,
                    accuracy: str = "val_accuracy", cost: str = "param_count"
                    ) -> pd.Series | None:
    """The cheapest completed trial whose ``accuracy`` is at least the best one's minus
    ``tolerance`` (inclusive, up to 1e-12 of rounding); None when no trial is usable.

    Ties on cost: the more accurate one, then the first by ``trial_key``. The trial is always
    on :func:`pareto_front` (the same tie rule). With ``tolerance=0`` it is the cheapest of
    the most accurate trials.
    """
    if tolerance < 0 or not math.isfinite(tolerance):
        raise ValueError(f"smallest_within: tolerance={tolerance}: must be a finite number >= 0")
    done = usable_trials(frame, accuracy, cost)
    if done.empty:
        return None
    acc = done[accuracy].to_numpy()
    within = done[acc >= acc.max() - tolerance - _EPS]
    return within.iloc[_order(within, [(cost, True), (accuracy, False)])[0]]


def most_accurate(frame: pd.DataFrame, accuracy: str = "val_accuracy",
                  cost: str = "param_count") -> pd.Series | None:
    """The most accurate usable trial (ties: the cheaper one, then the first by
    ``trial_key``): the last point of the front. None when no trial is usable."""
    return smallest_within(frame, 0.0, accuracy, cost)


def _short_number(value: float) -> str:
    """1e-3 for 0.001, 3.5e-4 for 0.000347, 1e-1 for 0.1: two significant digits."""
    mantissa, exponent = f"{value:.1e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def trial_label(row: pd.Series | dict[str, Any]) -> str:
    """A short label of a trial's network and training: ``128u d0.2 relu lr1e-3 b32`` (``2x128u``
    for two hidden layers). Fields the row lacks (or holds as missing) are left out."""

    def value(name: str) -> Any:
        got = row.get(name) if hasattr(row, "get") else None
        return None if got is None or (isinstance(got, float) and math.isnan(got)) else got

    parts = []
    if (units := value("units")) is not None:
        layers = value("layers")
        depth = f"{int(layers)}x" if layers is not None and int(layers) != 1 else ""
        parts.append(f"{depth}{int(units)}u")
    if (dropout := value("dropout")) is not None:
        parts.append(f"d{float(dropout):.2g}")
    if (activation := value("activation")) is not None:
        parts.append(str(activation))
    if (rate := value("learning_rate")) is not None:
        parts.append(f"lr{_short_number(float(rate))}")
    if (batch := value("batch_size")) is not None:
        parts.append(f"b{int(batch)}")
    return " ".join(parts) if parts else str(value("trial_key") or "?")


class CostName(NamedTuple):
    """How a cost column reads in a report."""

    axis: str  #: the axis title: "Trainable parameters"
    unit: str  #: after a value: "101,770 parameters"
    topic: str  #: the heading "Accuracy against size"
    smallest: str  #: the answer: "Smallest network within 0.005 of the best ..."
    smaller: str  #: the front in a legend: "no smaller trial is as accurate"
    larger: str  #: the front's rule: "every other trial is larger or less accurate"


#: The cost columns with a name; any other numeric column reads as its own name.
COST_NAMES: dict[str, CostName] = {
    "param_count": CostName("Trainable parameters", "parameters", "size", "Smallest network",
                            "smaller", "larger"),
    "latency_ms": CostName("Latency (ms)", "ms", "latency", "Fastest network", "faster",
                           "slower"),
}


def cost_names(cost: str) -> CostName:
    """How the cost column ``cost`` reads (:data:`COST_NAMES`; others: by their name, "Cheapest
    network", "cheaper", "costlier")."""
    return COST_NAMES.get(cost, CostName(cost, cost, cost, "Cheapest network", "cheaper",
                                         "costlier"))


def format_cost(value: float, cost: str = "param_count") -> str:
    """A cost as text: parameter counts as integers with thousands separators (``101,770``),
    other costs with 3 significant digits."""
    if value is None or not math.isfinite(float(value)):
        return "n/a"
    if cost == "param_count":
        return f"{round(float(value)):,}"
    return f"{float(value):.3g}"
