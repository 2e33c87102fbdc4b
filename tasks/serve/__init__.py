"""Serve a run's model: a page to try it and a JSON API, for one model folder.

``python flows/serve.py --model PATH|latest`` reads the hand-over folder every run leaves
(``model/``: ``model.keras``, ``model.json``; :mod:`tasks.predict.model` finds and loads it)
and answers on 127.0.0.1 (:mod:`tasks.serve.server`): a page to draw or upload an input and
see the class probabilities, with the model's card (:mod:`tasks.serve.page`), and an API in
TensorFlow Serving's REST shape (:mod:`tasks.serve.app`). The instances are read and checked
as predict reads and checks its input (:mod:`tasks.serve.instances`); the page's drawings
are made into digits as MNIST's were (:mod:`tasks.serve.drawing`).

Layering: this package stands on the predict package and the data readers; it imports neither
Prefect nor the search, the trials or the reports, and writes nothing.
"""
