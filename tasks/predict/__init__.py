"""Take the winner home: predictions of a run's exported model (``model/``) on new data.

``python flows/predict.py --model PATH|latest --data INPUT`` is a thin reader of the hand-over
folder (:mod:`tasks.export`): it finds the model (:mod:`tasks.predict.model`), reads the
input with the data readers in their "data to predict on" mode and checks that it fits the
model (:mod:`tasks.predict.inputs`), runs ``model.keras`` on the raw input (the model carries
its preprocessing), and writes a report (:mod:`tasks.reports.predict`). As a deployment it
scores each new file of an inbox folder once (:mod:`tasks.predict.inbox`).

Layering: this package stands on the data readers, the exporter's constants and the trial
locks; it imports neither the reports nor the search.
"""
