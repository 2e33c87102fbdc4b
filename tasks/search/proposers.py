"""List searches as proposers: the grid, the random search and the best-of-N study's draws.

Each knows its configs up front. Asked, it hands out each distinct config once, the costliest
first (so that no worker idles at the end while one trains a big network); told, it keeps the
result; :meth:`ListProposer.results` gives them back in the search's own order, repeats
included.
"""

from __future__ import annotations

from collections.abc import Sequence

from tasks.config import TrialConfig, trial_key
from tasks.data.splits import DataHandle
from tasks.search.best_of_n import StudyPlan, study_configs
from tasks.search.loop import Ask, Plan
from tasks.search.space import SearchSpace, expand_grid, sample_configs
from tasks.trial.result import TrialResult


def unique_configs(configs: Sequence[TrialConfig]) -> list[TrialConfig]:
    """Configs in first-seen order without repeats (a repeated config trains once)."""
    seen: dict[str, TrialConfig] = {}
    for config in configs:
        seen.setdefault(config.canonical_json(), config)
    return list(seen.values())


class ListProposer:
    """A fixed list of configs (repeats allowed: they train once), for :func:`run_trials`.
    Asked in order of cost, the costliest first, or, with ``in_order``, in the order given
    (a budgeted search: the budget must buy what a random search would draw, not the largest
    networks)."""

    def __init__(self, configs: Sequence[TrialConfig], data: DataHandle, name: str,
                 title: str, description: str = "", in_order: bool = False):
        self.configs = list(configs)
        self.name, self.title, self.description = name, title, description
        distinct = unique_configs(self.configs)
        self._distinct = tuple(distinct)
        self._queue = (list(distinct) if in_order else
                       sorted(distinct, key=lambda c: -c.training_cost(data.train_size)))
        self._told: dict[str, TrialResult] = {}

    def plan(self) -> Plan:
        epochs = max((c.epochs for c in self._distinct), default=0)
        return Plan(trials=len(self._distinct), epochs=epochs, configs=self._distinct)

    def describe(self) -> str:
        return self.description

    def ask(self) -> Ask | None:
        return Ask(self._queue.pop(0)) if self._queue else None

    def tell(self, asked: Ask, result: TrialResult) -> None:
        self._told[asked.config.canonical_json()] = result

    def withdraw(self, asked: Ask) -> None:
        """Not trained (the budget ended the search): it is left out of the results."""

    def results(self) -> list[TrialResult]:
        """In the order of the configs given, a repeat sharing its config's result."""
        return [self._told[c.canonical_json()] for c in self.configs
                if c.canonical_json() in self._told]


def grid_proposer(space: SearchSpace, data: DataHandle) -> ListProposer:
    """Every cell of the grid ``space``, dropout-major like the exercise's nested loops."""
    configs = expand_grid(space)
    return ListProposer(configs, data, "grid", "Grid",
                        f"Grid: {len(configs)} cells ({space.describe()})")


def _random_line(configs: Sequence[TrialConfig]) -> str:
    distinct = len(unique_configs(configs))
    return (f"Random search: {len(configs)} trainings asked for, {distinct} distinct "
            "configurations")


def random_proposer(space: SearchSpace, trials: int, draw_seed: int,
                    data: DataHandle, budgeted: bool = False) -> ListProposer:
    """``trials`` distinct configs drawn uniformly without replacement (a larger ``trials``
    with the same seed extends a smaller one). ``budgeted``: asked in the order drawn, until
    the budget ends the search (:mod:`tasks.search.spending`)."""
    configs = sample_configs(space, trials, draw_seed)
    line = (f"Random search on a budget: up to {len(configs)} distinct configurations, in "
            "the order drawn" if budgeted else _random_line(configs))
    return ListProposer(configs, data, "random", "Random search", line, in_order=budgeted)


class StudyDraws:
    """The best-of-N study's draws: ``{(N, repeat): configs}`` (one pool, or the exercise's
    independent repeats), and each draw's trial keys."""

    def __init__(self, space: SearchSpace, plan: StudyPlan, draw_seed: int):
        self.draws = study_configs(plan, space, draw_seed)

    def configs(self) -> list[TrialConfig]:
        return [config for draw in self.draws.values() for config in draw]

    def keys(self, data: DataHandle, backend: str) -> list[tuple[int, int, list[str]]]:
        """Each draw as ``(N, repeat, trial keys)``: what the report's best-of-N table reads."""
        return [(n, r, [trial_key(c, data.fingerprint, backend) for c in draw])
                for (n, r), draw in self.draws.items()]

    def proposer(self, data: DataHandle) -> ListProposer:
        configs = self.configs()
        return ListProposer(configs, data, "random", "Random search", _random_line(configs))
