"""Random strategies: a plain random search, and the best-of-N study's draws (one pool, or
the exercise's independent repeats)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from tasks.best_of_n import StudyPlan, draw_trial_keys, study_configs
from tasks.config import TrialConfig
from tasks.search_space import SearchSpace, sample_configs
from tasks.training import TrialResult


def _announce(configs: Sequence[TrialConfig]) -> str:
    distinct = len({c.canonical_json() for c in configs})
    return (f"Random search: {len(configs)} trainings asked for, {distinct} distinct "
            "configurations")


@dataclass(frozen=True)
class RandomSearch:
    """``trials`` distinct configs drawn uniformly without replacement (a larger ``trials``
    with the same seed extends a smaller one)."""

    space: SearchSpace
    trials: int = 20
    draw_seed: int = 0
    name: str = "random"
    title: str = "Random search"

    def with_space(self, space: SearchSpace) -> RandomSearch:
        return replace(self, space=space)

    def configs(self) -> list[TrialConfig]:
        return sample_configs(self.space, self.trials, self.draw_seed)

    def announce(self, configs: Sequence[TrialConfig]) -> str:
        return _announce(configs)

    def report(self, results: list[TrialResult], configs: Sequence[TrialConfig],
               reports_dir: str | None, wall_seconds: float) -> str:
        from tasks.report_random import write_random_report_task

        return write_random_report_task(results, self.space, None, None, reports_dir, len(configs))


@dataclass(frozen=True)
class BestOfNStudy:
    """The best-of-N study's draws: ``plan.protocol`` pool (one pool of random configs) or
    repeats (the exercise's independent draws of N per repeat)."""

    space: SearchSpace
    plan: StudyPlan
    draw_seed: int = 0
    name: str = "random"
    title: str = "Random search"

    def with_space(self, space: SearchSpace) -> BestOfNStudy:
        return replace(self, space=space)

    def draws(self) -> dict[tuple[int, int], list[TrialConfig]]:
        return study_configs(self.plan, self.space, self.draw_seed)

    def configs(self) -> list[TrialConfig]:
        return [config for draw in self.draws().values() for config in draw]

    def announce(self, configs: Sequence[TrialConfig]) -> str:
        return _announce(configs)

    def report(self, results: list[TrialResult], configs: Sequence[TrialConfig],
               reports_dir: str | None, wall_seconds: float) -> str:
        from tasks.report_random import write_random_report_task

        keys = draw_trial_keys(self.draws(), results)
        draws = [(n, r, k) for (n, r), k in keys.items()]
        return write_random_report_task(results, self.space, self.plan, draws, reports_dir,
                                        len(configs))
