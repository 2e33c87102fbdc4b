"""The import path that cached trial results name.

Prefect's JSON serializer stores a result's class by its import path, and the results cached
before the package layout of :mod:`tasks` name ``tasks.training.TrialResult``: this module
keeps that path importable so that they load (and are cache hits) forever. New code imports
:mod:`tasks.trial.result`.
"""

from tasks.trial.result import TrialResult

__all__ = ["TrialResult"]
