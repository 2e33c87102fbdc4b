"""The reports' "Accuracy against size" section: the Pareto front of the completed trials
(validation accuracy against trainable parameters) as Parquet, a Markdown table and a figure,
and the answer to "what is the smallest network within half a point of the best?" (see
:mod:`tasks.search.pareto`). Shared by the grid, random, study and tune reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tasks.files import atomic_write_parquet, atomic_write_text
from tasks.reports.figures import pareto as pareto_plots
from tasks.reports.folder import hyperparameter_columns, markdown_table
from tasks.search.pareto import (
    DEFAULT_TOLERANCE,
    cost_names,
    format_cost,
    most_accurate,
    pareto_front,
    smallest_within,
    trial_label,
    usable_trials,
)
from tasks.search.space import SEARCH_FIELDS


def front_table(front: pd.DataFrame, frame: pd.DataFrame, tolerance: float = DEFAULT_TOLERANCE,
                accuracy: str = "val_accuracy", cost: str = "param_count") -> pd.DataFrame:
    """The front as a table, cheapest first: ``label`` (:func:`trial_label`), the
    hyperparameters, ``cost``, ``accuracy``, ``test_accuracy``, ``below_best`` (the best
    accuracy minus this one), ``train_seconds``, ``note`` ("best", "smallest within
    ``tolerance`` of the best", or both) and ``trial_key``; columns the frame lacks are left
    out."""
    chosen = smallest_within(frame, tolerance, accuracy, cost)
    best = most_accurate(frame, accuracy, cost)
    # the hyperparameters the trials' table shows, then cost and accuracy
    columns = [c for c in (*hyperparameter_columns(front), "epochs", cost, accuracy,
                           "test_accuracy") if c in front.columns]
    table = front[columns].copy()
    if cost == "param_count" and len(table):
        table[cost] = table[cost].round().astype(np.int64)  # a count (a float in the front)
    table.insert(0, "label", [trial_label(row) for _, row in front.iterrows()])
    top = front[accuracy].max() if len(front) else np.nan
    table["below_best"] = (top - front[accuracy]).astype(np.float64)
    if "train_seconds" in front.columns:
        table["train_seconds"] = pd.to_numeric(front["train_seconds"], errors="coerce")
    superlative = cost_names(cost).smallest.split()[0].lower()  # smallest, fastest, ...
    within = f"{superlative} within {tolerance:g} of the best"

    def note(point: tuple[float, float]) -> str:
        # on the front, (cost, accuracy) names one trial; both marked trials are on it
        return "; ".join(text for text, row in (("best", best), (within, chosen))
                         if row is not None and _point(row, accuracy, cost) == point)

    table["note"] = [note(point) for point in zip(front[cost], front[accuracy], strict=True)]
    if "trial_key" in front.columns:
        table["trial_key"] = front["trial_key"]
    return table.reset_index(drop=True)


def _point(row: pd.Series, accuracy: str, cost: str) -> tuple[float, float]:
    return float(row[cost]), float(row[accuracy])


def _describe(row: pd.Series, accuracy: str, cost: str, test: bool) -> str:
    unit = cost_names(cost).unit
    text = f"{format_cost(row[cost], cost)} {unit}, val {row[accuracy]:.4f}"
    if test and "test_accuracy" in row.index:
        value = row["test_accuracy"]
        text += ", test " + ("n/a" if pd.isna(value) else f"{float(value):.4f}")
    return text


def write_pareto(frame: pd.DataFrame, out: Path, tolerance: float = DEFAULT_TOLERANCE,
                 accuracy: str = "val_accuracy", cost: str = "param_count") -> str:
    """``pareto.parquet`` (:func:`front_table`, raw values), ``pareto.txt`` (the same as a
    Markdown table, the label standing for the hyperparameters) and ``pareto.png``
    (:func:`tasks.reports.figures.pareto.plot_pareto`) in the report folder ``out``, from the
    completed trials of ``frame`` (a trials frame: see
    :func:`tasks.reports.folder.trials_frame`); returns the report's Markdown section, or ""
    (and writes nothing) when fewer than 2 trials are usable.

    Another ``cost`` column (e.g. ``latency_ms``) writes ``pareto_<cost>.*`` instead, with
    that cost's words (:func:`tasks.search.pareto.cost_names`): "## Accuracy against latency",
    "Fastest network within ...".
    """
    out = Path(out)
    if len(usable_trials(frame, accuracy, cost)) < 2:
        return ""
    front = pareto_front(frame, accuracy, cost)
    chosen = smallest_within(frame, tolerance, accuracy, cost)
    best = most_accurate(frame, accuracy, cost)
    name = "pareto" if cost == "param_count" else f"pareto_{cost}"
    names = cost_names(cost)
    heading = f"Accuracy against {names.topic}"

    table = front_table(front, frame, tolerance, accuracy, cost)
    atomic_write_parquet(table, out / f"{name}.parquet")
    # the report's table: the label stands for the hyperparameters (exact in the Parquet)
    shown = table.drop(columns=[c for c in (*SEARCH_FIELDS, "epochs", "trial_key") if c in table])
    if cost == "param_count":
        shown[cost] = shown[cost].map(lambda v: format_cost(v, cost))
    if "train_seconds" in shown.columns:
        shown["train_seconds"] = shown["train_seconds"].map(
            lambda v: "" if pd.isna(v) else f"{v:.1f}")
    text = markdown_table(shown)
    atomic_write_text(out / f"{name}.txt", text + "\n")
    pareto_plots.plot_pareto(frame, front, out / f"{name}.png", accuracy=accuracy, cost=cost,
                             highlight=chosen, tolerance=tolerance)

    measure = "validation accuracy" if accuracy == "val_accuracy" else accuracy
    same = _point(chosen, accuracy, cost) == _point(best, accuracy, cost)
    than = "(the best itself)" if same else (
        f"(the best: {trial_label(best)}, {_describe(best, accuracy, cost, test=False)})")
    axis = names.axis[0].lower() + names.axis[1:]
    return f"""
## {heading}

{names.smallest} within {tolerance:g} of the best {measure}: {trial_label(chosen)}: \
{_describe(chosen, accuracy, cost, test=True)} {than}.

{measure.capitalize()} against {axis} (log scale) of the \
{len(usable_trials(frame, accuracy, cost))} completed trials. The {len(front)} marked trials \
are the Pareto front: for each, every other trial is {names.larger} or less accurate (of \
identical ones, the first by trial key is kept); the dashed line is the best minus \
{tolerance:g}. The table lists the front, cheapest first (`below_best`: the best {measure} \
minus the trial's).

![{heading}]({name}.png)

{text}
"""


def latency_note(frame: pd.DataFrame) -> str:
    """Where the latencies of ``frame``'s trials come from: the measurement and the machines
    (read from the records beside the weights)."""
    from tasks.trial.latency import BATCH, REPEATS, read_record

    machines: dict[str, int] = {}
    threads: set[int] = set()
    for path in frame.loc[frame["latency_ms"].notna(), "weights_path"].dropna():
        record = read_record(path)
        if record is not None:
            machines[record.get("machine", "?")] = machines.get(record.get("machine", "?"), 0) + 1
            threads.add(int(record.get("threads", 0)))
    where = "; ".join(f"{name} ({count} trials)" for name, count in machines.items()) or "unknown"
    shown = ", ".join("TensorFlow's default" if t == 0 else str(t) for t in sorted(threads))
    return (f"Latency is inference time per image: the fastest of {REPEATS} forward passes of "
            f"{BATCH} images with TensorFlow, divided by {BATCH}, measured on the machine that "
            f"trained the trial (trials trained before latencies were recorded: on the machine "
            f"that first reported them). It depends on the machine and its load as much as on "
            f"the network: compare it within one machine only. A network's latency here is the "
            f"median of the measurements of the trials of its shape (units and activation: "
            f"one computation). Measured on: {where}; "
            f"TensorFlow intra-op threads: {shown or 'unknown'}.")


#: What decides a forward pass's time: trials that share these run the same computation.
SHAPE = ("units", "activation")


def shape_latency(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with each trial's ``latency_ms`` replaced by the median of the measurements of
    its shape (:data:`SHAPE`): a forward pass's time does not depend on the weights' values, so
    trials of one shape differ only by the machine's load when each was measured, and the
    median of their measurements is the better figure for each of them."""
    frame = frame.copy()
    keys = [c for c in SHAPE if c in frame.columns]
    if keys and frame["latency_ms"].notna().any():
        frame["latency_ms"] = frame.groupby(keys)["latency_ms"].transform("median")
    return frame


def write_tradeoffs(frame: pd.DataFrame, out: Path,
                    tolerance: float = DEFAULT_TOLERANCE) -> str:
    """The reports' trade-off sections: accuracy against size (:func:`write_pareto`), and
    accuracy against latency where at least 2 completed trials have one (``pareto_latency_ms.*``
    and :func:`latency_note`), each network shape at its :func:`shape_latency`."""
    text = write_pareto(frame, out, tolerance)
    if "latency_ms" in frame.columns:
        latency = write_pareto(shape_latency(frame), out, tolerance, cost="latency_ms")
        if latency:
            heading, _, rest = latency.lstrip("\n").partition("\n")
            text += f"\n{heading}\n\n{latency_note(frame)}\n{rest}"
    return text
