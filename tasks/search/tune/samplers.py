"""Optuna's samplers a tune can use (``--sampler``), seeded apart so that a resumed study and
tunes started together do not draw the same configs (``docs/tune.md``, "Several tunes of one
study").
"""

from __future__ import annotations

from typing import Literal, get_args

from tasks.errors import UserError

SamplerName = Literal["tpe", "random"]
SAMPLERS: tuple[str, ...] = get_args(SamplerName)
#: Random configs before TPE starts modelling (Optuna's default).
TPE_STARTUP_TRIALS = 10


def make_sampler(name: str, seed: int, resumed_at: int = 0, start: int = 0):
    """Optuna's sampler ``name``. A resumed study gets a seed of its own (``resumed_at``: its
    trials so far), so a random sampler does not ask the first run's configs again; so does
    each tune started at the same point (``start``: how many started there before it), so two
    tunes at once do not ask the same configs."""
    import optuna

    seed = seed + 1_000_003 * resumed_at + 7_919 * start
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True,
                                          n_startup_trials=TPE_STARTUP_TRIALS)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise UserError(f"sampler={name!r}: allowed {', '.join(SAMPLERS)}")
