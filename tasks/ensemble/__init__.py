"""The search as one model: an ensemble of networks a search already trained.

Caruana et al., "Ensemble Selection from Libraries of Models" (ICML 2004), as AutoGluon's
``WeightedEnsemble`` uses it: K greedy picks with replacement among a search's trials, each
pick the trial whose addition gives the best validation accuracy to the average of the class
probabilities picked so far (ties: the lower validation log loss). A trial picked twice weighs
twice. It never trains:

* :mod:`tasks.ensemble.members`: the candidates (a search's completed trials with their stored
  weights; those whose weights are gone are skipped and counted) and their class probabilities
  on a split, computed once per trial from its weights and cached by trial key beside them;
* :mod:`tasks.ensemble.selection`: the greedy selection, the plain average of the top K by
  validation accuracy, and the curves of both over K (pure NumPy);
* :mod:`tasks.export.ensemble`: the selected members as one ``model.keras``
  (the members' softmax outputs weighted and added, built-in layers only) and its folder;
* :mod:`tasks.reports.ensemble`: the report's section, its figure, and the report of
  ``python flows/ensemble.py --from-report DIR``.

Layering: it stands on the data, the engine's weights files and the trial results; nothing here
is part of a trial's key, and no engine file imports it.
"""
