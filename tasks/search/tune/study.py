"""Opening a tune's study: created or loaded by name, and refused when it was run on another
space, epochs, data, backend or objectives, whose values would not compare with this run's
(``docs/tune.md``, "A study and its identity"). Callers hold the storage lock.
"""

from __future__ import annotations

from collections.abc import Sequence

from tasks.data.splits import DataHandle
from tasks.errors import UserError
from tasks.search.tune.objectives import directions
from tasks.search.tune_space import TuneSpace
from tasks.trial import pruning

#: The study's system attribute [trials when a tune last started, tunes started there].
STARTS_ATTR = "tune_starts"


def study_identity(space: TuneSpace, data: DataHandle, backend: str) -> dict:
    """What must not change within one study: values are comparable only on the same space,
    epochs, data and backend."""
    return {"space": space.identity(), "data": data.fingerprint,
            "backend": backend}


def open_study(storage, url: str, study_name: str, objectives: Sequence[str], pruner: str,
               space: TuneSpace, data: DataHandle, backend: str):
    """The study ``study_name`` in ``storage`` (``url``: its URL, for messages), created if new,
    its identity and objectives checked (a UserError naming what differs) and recorded."""
    import optuna

    goals = list(objectives)
    chosen = ({"directions": directions(goals)} if len(goals) > 1
              else {"direction": "maximize"})
    study = optuna.create_study(
        study_name=study_name, storage=storage,
        pruner=pruning.make_pruner(pruner, space.epochs), load_if_exists=True, **chosen)
    check_study_objectives(study, url, goals)
    identity = study_identity(space, data, backend)
    known = {k: study.user_attrs.get(k) for k in identity}
    if any(v is not None for v in known.values()) and known != identity:
        changed = ", ".join(k for k in identity if known[k] != identity[k])
        raise UserError(
            f"study '{study_name}' in {url} was run with another {changed}: "
            "its values would not compare; give a new --study-name (or the same "
            "space, epochs, data and backend)")
    for key, value in identity.items():
        if known[key] != value:
            study.set_user_attr(key, value)
    if study.user_attrs.get("kind") != "tune":
        study.set_user_attr("kind", "tune")
    if study.metric_names != goals:
        study.set_metric_names(goals)
    return study


def check_study_objectives(study, url: str, objectives: list[str]) -> None:
    """Refuse a study created with other objectives (``create_study`` loads an existing
    study whatever directions it is given): its values would not compare."""
    held = [d.name.lower() for d in study.directions]
    names = study.metric_names
    if held == directions(objectives) and names in (None, objectives):
        return
    was = ",".join(names) if names else f"{len(held)} objective(s) ({', '.join(held)})"
    raise UserError(
        f"study '{study.study_name}' in {url} was run with objectives {was}, this run "
        f"asks for {','.join(objectives)}: its values would not compare; give a new "
        "--study-name (or the same --objectives)")


def count_start(storage, study_id: int, trials_now: int) -> int:
    """Record that a tune starts on the study holding ``trials_now`` trials; returns how many
    tunes started at that same point before it (their samplers are seeded apart)."""
    point, started = storage.get_study_system_attrs(study_id).get(STARTS_ATTR, [-1, 0])
    started = started if point == trials_now else 0
    storage.set_study_system_attr(study_id, STARTS_ATTR, [trials_now, started + 1])
    return started
