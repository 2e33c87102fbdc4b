"""Expected best accuracy per budget of training time: "how good a network do I get for T
minutes of training on this machine?".

A pool of random trials, each with its measured training time, is spent in a random order:
for a budget B (minutes), the trials run one after another while their cumulative training
time fits in B; the first trial that the budget cannot finish ends the search (it is not
counted, and no later, cheaper trial is tried instead). The best trial among the finished
ones is the search's answer. The estimator averages that answer over many random orders of
the pool (or over an explicit array of orders, e.g. all of them, to get exact expectations).

Two measures, as in the best-of-N study (:mod:`tasks.search.best_of_n`): the test accuracy of
the best-by-validation trial (honest selection) and the maximum test accuracy (the exercise's
number, selected on the test set). Pure numpy / pandas: no Prefect, no reports.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Random orders of the pool averaged over by default.
DEFAULT_ORDERS = 2000
#: Log-spaced budgets in the default grid (round minute values are added to them).
DEFAULT_BUDGET_POINTS = 25
#: The table's columns, in order.
BUDGET_COLUMNS = (
    "budget_minutes",
    "trials_mean",
    "orders_with_trial",
    "best_val_test_mean",
    "best_val_test_std",
    "best_val_test_p10",
    "best_val_test_p90",
    "max_test_mean",
    "max_test_std",
    "max_test_p10",
    "max_test_p90",
)


def completed_pool(frame: pd.DataFrame) -> pd.DataFrame:
    """The trials the estimator can use: completed, one row per ``trial_key``, with a
    validation and a test accuracy and a positive, finite ``train_seconds``."""
    done = frame[frame["status"] == "completed"].drop_duplicates("trial_key")
    seconds = pd.to_numeric(done["train_seconds"], errors="coerce")
    usable = (done["val_accuracy"].notna() & done["test_accuracy"].notna()
              & np.isfinite(seconds) & (seconds > 0))
    return done[usable].reset_index(drop=True)


def default_budgets(cost_seconds: np.ndarray | pd.Series,
                    points: int = DEFAULT_BUDGET_POINTS) -> np.ndarray:
    """Budgets in minutes, ascending: ``points`` log-spaced values from the cheapest trial to
    the total cost of the pool, plus the round minute values (1, 2, 5 x 10^k) in between."""
    minutes = _costs(cost_seconds) / 60.0
    low, high = float(minutes.min()), float(minutes.sum())
    grid = np.geomspace(low, high, points) if high > low else np.array([low])
    decades = np.arange(np.floor(np.log10(low)), np.ceil(np.log10(high)) + 1)
    rounds = (np.array([1.0, 2.0, 5.0])[None, :] * 10.0 ** decades[:, None]).ravel()
    rounds = rounds[(rounds > low) & (rounds < high)]
    # the geomspace end points are exactly the cheapest trial and the total
    grid[0], grid[-1] = low, high
    return np.unique(np.concatenate([grid, rounds]))


def expected_best_by_budget(
    val: np.ndarray | pd.Series,
    test: np.ndarray | pd.Series,
    cost: np.ndarray | pd.Series,
    budgets: np.ndarray | pd.Series | list[float] | None = None,
    orders: int | np.ndarray = DEFAULT_ORDERS,
    seed: int = 0,
) -> pd.DataFrame:
    """Expected best accuracy found within each training budget, over random orders of a pool.

    ``val``, ``test``: each trial's validation and test accuracy; ``cost``: its measured
    training time in **seconds**; ``budgets``: in **minutes** (default :func:`default_budgets`).
    ``orders``: how many random orders of the pool to average over (drawn with
    ``numpy.random.default_rng(seed)``), or an explicit ``(R, M)`` array whose rows are
    permutations of ``range(M)`` (all ``M!`` of them give exact expectations).

    For each order and budget B, the trials are spent in order while their cumulative cost
    fits in B (the first one that does not fit ends the search); the answer is the test
    accuracy of the finished trial with the best validation accuracy (ties broken as
    :func:`tasks.search.best_of_n.expected_best_of_n` does: by position in the pool, the later
    one wins) and the maximum test accuracy of the finished trials.

    One row per budget (:data:`BUDGET_COLUMNS`): ``trials_mean`` (trials finished, averaged
    over every order, 0 counted), ``orders_with_trial`` (share of orders that finished at
    least one trial) and, for each measure, the mean, standard deviation (ddof 0) and 10th /
    90th percentiles over the orders that finished at least one trial (NaN if none did).
    """
    val_arr = np.asarray(val, dtype=np.float64)
    test_arr = np.asarray(test, dtype=np.float64)
    minutes = _costs(cost) / 60.0
    m = len(minutes)
    if not (len(val_arr) == len(test_arr) == m):
        raise ValueError(f"val, test and cost differ in length: {len(val_arr)}, "
                         f"{len(test_arr)}, {m}")
    if not (np.isfinite(val_arr).all() and np.isfinite(test_arr).all()):
        raise ValueError("val and test accuracies must be finite (use completed_pool)")
    grid = (default_budgets(minutes * 60.0) if budgets is None
            else np.asarray(budgets, dtype=np.float64).ravel())
    perms = _orders(orders, m, seed)

    # a unique rank per trial: ascending by validation accuracy, ties by position (stable)
    by_val = np.argsort(val_arr, kind="stable")
    val_rank = np.empty(m, dtype=np.int64)
    val_rank[by_val] = np.arange(m)
    best_rank = np.maximum.accumulate(val_rank[perms], axis=1)  # (R, M): best of the first k
    best_val_test = test_arr[by_val[best_rank]]
    max_test = np.maximum.accumulate(test_arr[perms], axis=1)
    spent = np.cumsum(minutes[perms], axis=1)
    tolerance = 1e-9 * float(minutes.sum())  # a budget equal to the total finishes every trial

    rows = []
    all_orders = np.arange(len(perms))
    for budget in grid:
        finished = (spent <= budget + tolerance).sum(axis=1)  # prefix lengths: spent ascends
        some = finished > 0
        row: dict[str, float] = dict(budget_minutes=float(budget),
                                     trials_mean=float(finished.mean()),
                                     orders_with_trial=float(some.mean()))
        for name, best in (("best_val_test", best_val_test), ("max_test", max_test)):
            values = best[all_orders[some], finished[some] - 1]
            row.update(_stats(name, values))
        rows.append(row)
    return pd.DataFrame(rows, columns=list(BUDGET_COLUMNS))


def _stats(name: str, values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {f"{name}_{stat}": float("nan") for stat in ("mean", "std", "p10", "p90")}
    p10, p90 = np.percentile(values, [10, 90])
    return {f"{name}_mean": float(values.mean()), f"{name}_std": float(values.std()),
            f"{name}_p10": float(p10), f"{name}_p90": float(p90)}


def _costs(cost: np.ndarray | pd.Series) -> np.ndarray:
    values = np.asarray(cost, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("an empty pool: no trial with a training time")
    if not (np.isfinite(values).all() and (values > 0).all()):
        raise ValueError("every training time must be finite and > 0 (use completed_pool)")
    return values


def _orders(orders: int | np.ndarray, m: int, seed: int) -> np.ndarray:
    """``(R, M)`` indices: R random permutations, or the given ones checked."""
    if isinstance(orders, (int, np.integer)):
        if orders < 1:
            raise ValueError(f"orders={orders}: must be >= 1")
        rng = np.random.default_rng(seed)
        return rng.permuted(np.tile(np.arange(m), (int(orders), 1)), axis=1)
    perms = np.asarray(orders)
    if (perms.ndim != 2 or perms.shape[1] != m or len(perms) == 0
            or not np.issubdtype(perms.dtype, np.integer)
            or not (np.sort(perms, axis=1) == np.arange(m)).all()):
        raise ValueError(f"orders: expected an (R, {m}) integer array of permutations of "
                         f"range({m})")
    return perms


#: The columns of a search's real trajectory on the cost axis (:func:`trajectory`).
TRAJECTORY_COLUMNS = ("trial", "minutes", "status", "val_accuracy", "best_val",
                      "best_val_test")


def trajectory(frame: pd.DataFrame) -> pd.DataFrame:
    """A search's real best-so-far on the cost axis: one row per trial, in the order given
    (the order the search ran them), with the cumulative training ``minutes`` spent after it
    (completed and pruned trials count their measured time; failed ones nothing),
    ``best_val``: the best validation accuracy of the completed trials so far, and
    ``best_val_test``: that trial's test accuracy (the per-budget curve's first measure)."""
    rows, spent, best_val, best_test = [], 0.0, float("nan"), float("nan")
    for number, row in enumerate(frame.itertuples(index=False), start=1):
        seconds = pd.to_numeric(row.train_seconds, errors="coerce")
        if row.status != "failed" and np.isfinite(seconds) and seconds > 0:
            spent += float(seconds) / 60.0
        val = row.val_accuracy
        if row.status == "completed" and val is not None and np.isfinite(val) and not (
                np.isfinite(best_val) and val <= best_val):
            best_val, best_test = float(val), float(row.test_accuracy)
        rows.append({"trial": number, "minutes": spent, "status": row.status,
                     "val_accuracy": val, "best_val": best_val, "best_val_test": best_test})
    return pd.DataFrame(rows, columns=list(TRAJECTORY_COLUMNS))


def best_at(path: pd.DataFrame, minutes: float, column: str = "best_val") -> float:
    """``column`` of a :func:`trajectory` once ``minutes`` of training were spent (the last
    trial finished within them; NaN if none)."""
    within = path[path["minutes"] <= minutes + 1e-9]
    return float(within[column].iloc[-1]) if len(within) else float("nan")
