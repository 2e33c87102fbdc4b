"""The end of a run: the chosen network as a folder the user takes away (``model/``).

One exporter, :func:`tasks.export.exporter.export_model`, turns (config, weights, data
description) into the folder, and every flow's report step calls it:

* ``model.keras``: a Keras model that takes the data as the user holds it (an image of the
  data's shape and dtype, or a table's feature row) and gives class probabilities; the
  normalization, the flattening and the softmax are inside, all built-in layers
  (:mod:`tasks.export.network`), so it loads with ``keras.saving.load_model`` where this
  project is not installed;
* ``model.json``: class names, input, normalization, data, trial, scores, how it was chosen,
  versions and a ``model_key`` (:mod:`tasks.export.inputs`, :mod:`tasks.export.exporter`);
* ``MODEL.md``: a model card (:mod:`tasks.export.card`).

Layering: the exporter stands on the data, the engine and the trial (it retrains a trial whose
weights are gone); it imports neither the reports nor the search.
"""
