"""What a tune optimizes (``--objectives``): the validation accuracy first, then any cost a
trial result records. A new objective is one more entry in :data:`OBJECTIVES`; more than one
makes a multi-objective study (``docs/tune.md``, "Several objectives").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tasks.errors import UserError
from tasks.search.optuna_storage import OBJECTIVE
from tasks.trial.result import TrialResult


@dataclass(frozen=True)
class Objective:
    """One thing a tune optimizes: its direction, its name in figures, and its value in a
    trial result (None: the result does not hold it)."""

    direction: str
    label: str
    of: Callable[[TrialResult], float | None]


def _param_count(result: TrialResult) -> float | None:
    return None if result.param_count is None else float(result.param_count)


def _latency(result: TrialResult) -> float | None:
    from tasks.trial.latency import latency_of

    return latency_of(result)  # a cached trial's measured from its weights, once


#: The objectives a tune can take, by their ``--objectives`` name; the first is always
#: ``val_accuracy``. A new one (a cost a trial result records) is one more entry.
OBJECTIVES: dict[str, Objective] = {
    OBJECTIVE: Objective("maximize", "val accuracy", lambda r: r.val_accuracy),
    "params": Objective("minimize", "trainable parameters", _param_count),
    "latency": Objective("minimize", "inference ms per image", _latency),
}
#: Objectives that make sense but that no trial records yet: refused, saying why.
NOT_RECORDED: dict[str, str] = {}


def check_objectives(objectives: Sequence[str] | str, pruner: str = "none") -> list[str]:
    """The objectives' names (``["val_accuracy", "params"]``; ``"val_accuracy,params"`` is
    read too), checked: known and recorded, each once, ``val_accuracy`` first, and no
    ``pruner`` with more than one (Optuna cannot prune a multi-objective study). A bad list is
    one UserError line naming what is allowed."""
    given = [objectives] if isinstance(objectives, str) else list(objectives)
    names = [n.strip() for text in given for n in str(text).split(",") if n.strip()]
    shown = ",".join(names) or ",".join(map(str, given))
    allowed = f"allowed: {', '.join(OBJECTIVES)} ({OBJECTIVE} first)"
    if not names:
        raise UserError(f"objectives={shown!r}: none given; {allowed}")
    for name in names:
        if name in NOT_RECORDED:
            raise UserError(f"objectives={shown!r}: {NOT_RECORDED[name]}; {allowed}")
        if name not in OBJECTIVES:
            raise UserError(f"objectives={shown!r}: unknown objective {name!r}; {allowed}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"objectives={shown!r}: {', '.join(repeated)} given more than once; "
                        "each objective once")
    if names[0] != OBJECTIVE:
        raise UserError(f"objectives={shown!r}: the first objective must be {OBJECTIVE} (what "
                        f"the search selects on); {allowed}")
    if len(names) > 1 and pruner != "none":
        raise UserError(f"pruner={pruner!r} with {len(names)} objectives: Optuna cannot prune "
                        "a multi-objective study; use --pruner none")
    return names


def directions(objectives: Sequence[str]) -> list[str]:
    """The study directions of ``objectives`` (checked names), in order."""
    return [OBJECTIVES[name].direction for name in objectives]


def objective_values(objectives: Sequence[str], result: TrialResult) -> list[float] | None:
    """The values of ``objectives`` in ``result``; None if it lacks one (or it is NaN)."""
    values = [OBJECTIVES[name].of(result) for name in objectives]
    if any(v is None or v != v for v in values):
        return None
    return [float(v) for v in values]
