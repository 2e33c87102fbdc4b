"""Finished trials added to an Optuna study in one transaction.

Optuna's ``study.add_trials`` adds trials one by one on a database storage, each in a
transaction of its own with a query per parameter, attribute and epoch value: exporting a
984-trial study (the exercise's repeats protocol) took about 100 s on 2 cores, and a warm
start of a few hundred trials most of a minute. :func:`add_trials` writes the same rows
(trials, values, parameters, attributes, intermediate values) in one transaction, with the
checks Optuna makes (each trial valid; one distribution per parameter name within the study).
Other storages get Optuna's own ``add_trials``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence


def _database(study):
    """The study's RDBStorage (under Optuna's caching wrapper), or None for another storage."""
    from optuna.storages import RDBStorage

    storage = study._storage
    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, RDBStorage) else None


def add_trials(study, trials: Sequence) -> None:
    """Add finished ``trials`` (``optuna.trial.FrozenTrial``) to ``study``, numbered after its
    trials, as ``study.add_trials`` does, in one transaction on a database storage."""
    from optuna.distributions import (
        check_distribution_compatibility,
        distribution_to_json,
        json_to_distribution,
    )
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    database = _database(study)
    if database is None or not trials:
        study.add_trials(trials)
        return
    for trial in trials:
        trial._validate()
    study_id = study._study_id
    with _create_scoped_session(database.scoped_session) as session:
        models.StudyModel.find_or_raise_by_id(study_id, session, for_update=True)
        held = (session.query(models.TrialParamModel.param_name,
                              models.TrialParamModel.distribution_json)
                .join(models.TrialModel).filter(models.TrialModel.study_id == study_id)
                .distinct().all())
        known: dict = {}
        for name, text in held:
            known.setdefault(name, json_to_distribution(text))
        start = session.query(models.TrialModel).filter(
            models.TrialModel.study_id == study_id).count()
        rows = []
        for number, trial in enumerate(trials, start=start):
            row = models.TrialModel(study_id=study_id, number=number, state=trial.state)
            row.datetime_start = trial.datetime_start
            row.datetime_complete = trial.datetime_complete
            for objective, value in enumerate(trial.values or ()):
                stored, kind = models.TrialValueModel.value_to_stored_repr(value)
                row.values.append(models.TrialValueModel(
                    objective=objective, value=stored, value_type=kind))
            for name, value in trial.params.items():
                distribution = trial.distributions[name]
                if name in known:
                    check_distribution_compatibility(known[name], distribution)
                known.setdefault(name, distribution)
                row.params.append(models.TrialParamModel(
                    param_name=name, param_value=distribution.to_internal_repr(value),
                    distribution_json=distribution_to_json(distribution)))
            for key, value in trial.user_attrs.items():
                row.user_attributes.append(models.TrialUserAttributeModel(
                    key=key, value_json=json.dumps(value)))
            for key, value in trial.system_attrs.items():
                row.system_attributes.append(models.TrialSystemAttributeModel(
                    key=key, value_json=json.dumps(value)))
            for step, value in trial.intermediate_values.items():
                stored, kind = (models.TrialIntermediateValueModel
                                .intermediate_value_to_stored_repr(value))
                row.intermediate_values.append(models.TrialIntermediateValueModel(
                    step=step, intermediate_value=stored, intermediate_value_type=kind))
            rows.append(row)
        session.add_all(rows)
