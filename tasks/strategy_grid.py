"""The grid strategy: every combination of the space's value lists, dropout-major like the
exercise's nested loops."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from tasks.config import TrialConfig
from tasks.search_space import SearchSpace, expand_grid
from tasks.training import TrialResult


@dataclass(frozen=True)
class GridSearch:
    space: SearchSpace
    name: str = "grid"
    title: str = "Grid"

    def with_space(self, space: SearchSpace) -> GridSearch:
        return replace(self, space=space)

    def configs(self) -> list[TrialConfig]:
        return expand_grid(self.space)

    def announce(self, configs: Sequence[TrialConfig]) -> str:
        return f"Grid: {len(configs)} cells ({self.space.describe()})"

    def report(self, results: list[TrialResult], configs: Sequence[TrialConfig],
               reports_dir: str | None, wall_seconds: float) -> str:
        from tasks.report_grid import write_grid_report_task

        return write_grid_report_task(results, self.space, reports_dir, wall_seconds)
