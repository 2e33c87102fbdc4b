"""``MODEL.md``: the exported model's card, in the sections of Mitchell et al., "Model Cards for
Model Reporting" (FAT* 2019): details, intended use, factors, metrics, evaluation and training
data, quantitative analyses (per class, the confusion matrix), ethical considerations,
caveats and recommendations. Written from the same record as ``model.json``."""

from __future__ import annotations

from typing import Any

import numpy as np

#: Up to this many classes the card shows the confusion matrix; above, model.json holds it.
CONFUSION_SHOWN = 20


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _accuracy(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) \
        else f"{value:.4f}"


def per_class_table(record: dict[str, Any]) -> str:
    rows = [[index, name.replace("|", "\\|"), entry["test_samples"],
             _accuracy(entry["test_accuracy"])]
            for index, (name, entry) in enumerate(record["scores"]["per_class"].items())]
    return _table(["class", "name", "test samples", "test accuracy"], rows)


def confusion_table(record: dict[str, Any]) -> str:
    matrix = record["scores"]["confusion_matrix"]
    if len(matrix) > CONFUSION_SHOWN:
        return (f"{len(matrix)} classes: the matrix is in `model.json` "
                "(`scores.confusion_matrix`, rows: true class, columns: predicted).")
    header = ["true \\ predicted", *[str(i) for i in range(len(matrix))]]
    return _table(header, [[i, *row] for i, row in enumerate(matrix)])


def _samples(value: Any) -> str:
    return "?" if value is None else str(value)


def refit_section(record: dict[str, Any]) -> str:
    """The card's "Refit" section: the search model and the refit model side by side."""
    refit = record.get("refit")
    if not refit:
        return ""
    search, model = refit["search_model"], refit["refit_model"]
    rows = [
        ["search model (the chosen trial)", f"`{search['trial_key']}`",
         f"train ({_samples(search['train_size'])})", search["epochs"],
         _accuracy(search["val_accuracy"]), _accuracy(search["test_accuracy"])],
        ["**refit model (this model)**", f"`{model['trial_key']}`",
         f"train + validation ({_samples(model['train_size'])})", model["epochs"],
         f"{_accuracy(model['val_accuracy'])} (trained on)",
         f"**{_accuracy(model['test_accuracy'])}**"],
    ]
    table = _table(["model", "trial key", "trained on (samples)", "epochs",
                    "validation accuracy", "test accuracy"], rows)
    return f"""
## Refit

The config the search chose was trained once more on the training and validation splits
together, for {refit['epochs']} epoch(s) ({refit['epochs_rule']}), and this model is that refit
(TensorFlow's tutorials' protocol, AutoGluon's `refit_full`). Both are cached trials.

{table}

The refit model trained on the validation split, so its validation accuracy is no unbiased
estimate; compare the two by their test accuracy, which took part in neither the choice nor
the training. One run each: the difference includes the training's own randomness.
"""


def onnx_section(record: dict[str, Any]) -> str:
    """The card's "ONNX" section: ``model.onnx``, its check against Keras, the latencies."""
    onnx = record.get("onnx")
    if not onnx:
        return ""
    if not onnx.get("written"):
        parity = onnx.get("parity")
        checked = (f" ({parity['differing_predictions']} of {parity['samples']} predictions "
                   "differ, largest probability difference "
                   f"{parity['max_probability_difference']:.3g})" if parity else "")
        return f"\n## ONNX\n\nNo `model.onnx`: {onnx.get('reason', 'not written')}{checked}.\n"
    parity, latency = onnx["parity"], onnx["latency"]
    versions = ", ".join(f"{name} {version}" for name, version in onnx["versions"].items())
    rows = [[label.replace("batch_", "batch of "), f"{figures['keras_ms']:.4f}",
             f"{figures['onnxruntime_ms']:.4f}"]
            for label, figures in latency.items() if isinstance(figures, dict)]
    return f"""
## ONNX

`model.onnx` is the same model for ONNX Runtime (opset {onnx['opset']}; {versions}): input
`{onnx['input']['name']}` ({onnx['input']['type']}, the same raw input as `model.keras`),
output `probabilities`. Checked on the {parity['samples']} test samples as raw input: the most
probable class differs from Keras' for {parity['differing_predictions']} of them, and the
largest difference of a class probability is {parity['max_probability_difference']:.2g}
(accepted: at most {parity['tolerance']:g}).

Milliseconds per sample ({latency['machine']}; {latency['how']}):

{_table(["inputs per call", "Keras (TensorFlow)", "ONNX Runtime"], rows)}
"""


def analyses(record: dict[str, Any], reference: str) -> str:
    """The card's "Quantitative analyses" (per class, the confusion matrix, the check of the
    saved model against ``reference``) and its "ONNX" section."""
    check = record.get("check", {})
    return f"""## Quantitative analyses

Per class (test split):

{per_class_table(record)}

Confusion matrix (test split; rows: true class, columns: predicted class):

{confusion_table(record)}

The exported model, run on the test split as raw input, predicted
{check.get('differing_predictions', '?')} of {check.get('samples', '?')} samples differently
from {reference} (test accuracy {_accuracy(check.get('test_accuracy'))}).
{onnx_section(record)}"""


def intended_use(record: dict[str, Any]) -> str:
    """The card's "Intended use" and "Factors" sections (any model's)."""
    data, spec, classes = record["data"], record["input"], record["classes"]
    return f"""## Intended use

Classifying samples like the training data ({data['name']}): {spec['what']}, one of the
classes {", ".join(f"`{c}`" for c in classes[:12])}{" ..." if len(classes) > 12 else ""}.
It is the product of a hyperparameter search for a teaching exercise and a baseline to
compare against, not a model tested for decisions about people or for data unlike its
training data. Out of scope: any input outside the training data's kind (another image size,
other feature columns, other classes): the model still returns probabilities for its own
classes.

## Factors

The only factors evaluated are the classes (per-class accuracy below). Nothing is known about
how the data was collected beyond its source; subgroups within a class were not evaluated.
"""


def model_card(record: dict[str, Any]) -> str:
    """The card's Markdown from a ``model.json`` record."""
    trial, data, scores = record["trial"], record["data"], record["scores"]
    chosen, spec, versions = record["chosen"], record["input"], record["versions"]
    config = trial["config"]
    classes = record["classes"]
    hidden = f"Dense({config['units']}, {config['activation']}) -> Dropout({config['dropout']:g})"
    if config["layers"] != 1:
        hidden = f"{config['layers']} x [{hidden}]"
    network = f"{hidden} -> Dense({len(classes)}) -> softmax"
    before = record.get("before_model")
    before_text = (f"\nBefore the model, each image file is converted as the data step did: "
                   f"`{before['steps']}`.\n" if before else "")
    features = ""
    if spec.get("feature_names"):
        features = ("\nFeature columns, in this order: "
                    + ", ".join(f"`{name}`" for name in spec["feature_names"]) + ".\n")
    flattening = "the flattening and " if len(spec["shape"]) > 1 else ""
    rule = record["normalization"].get("rule") or "the data step's rule"
    sizes = data.get("sizes", {})
    fashion = data.get("name") == "Fashion-MNIST"
    retrained = ("\n- Its weights were missing when the report was written; the trial was "
                 "trained again (same config, data and seed).\n" if trial.get("retrained")
                 else "")
    validation, test = _accuracy(scores["val_accuracy"]), _accuracy(scores["test_accuracy"])
    overrates = (f"so its validation accuracy ({validation}) is, by being chosen, above "
                 f"what it will score on new data. Quote the test accuracy ({test}), which "
                 "took no part in the choice")
    refit = record.get("refit")
    if refit:
        searched = refit["search_model"]
        selected = (f"The config was chosen on the validation split ({chosen['how']}; the "
                    f"search model's validation accuracy {_accuracy(searched['val_accuracy'])} "
                    "is, by being chosen, above what it will score on new data), and this "
                    f"refit model then trained on the validation split: its validation "
                    f"accuracy ({validation}) measures rows it learned. Quote the test "
                    f"accuracy ({test}), which took part in neither")
    elif chosen["trials"] > 1:
        selected = (f"It is the best of {chosen['trials']} trials by validation accuracy, "
                    + overrates)
    elif config.get("checkpoint"):
        selected = ("Its weights are those of its best epoch by validation accuracy, "
                    + overrates)
    else:
        selected = ("It was the only trial, scored on its last epoch: nothing was chosen on "
                    f"the validation split, and its test accuracy ({test}) is the estimate to "
                    "quote")
    split_note = (
        "Fashion-MNIST's validation part (the last 2,000 of its test images) reads above its "
        "test part (the first 8,000) whatever the network: 0.3 to 0.8 points in the project's "
        "full-size runs, the baseline's included, about 1 point with a search's selection on "
        "top; its validation accuracy is no estimate of its test accuracy"
        if fashion else
        "validation and test are different parts of the data and read differently even "
        "without selection (on Fashion-MNIST the validation part reads about 1 point above the "
        "test part)")
    trained_on = " (trained on: no unbiased score)" if refit else ""
    if refit:
        training_text = (
            f"The training and validation splits of the same data together "
            f"({sizes.get('train', '?')} samples: a refit, above); the validation split "
            f"({sizes.get('validation', '?')} samples) chose the trial and its epoch count "
            "before the refit trained on it.")
    else:
        training_text = (
            f"The training split of the same data ({sizes.get('train', '?')} samples); the "
            f"validation split ({sizes.get('validation', '?')} samples) chose the epoch and "
            "the trial.")
    return f"""# Model card: {record['name']}

## Model details

- A fully connected network: {network}, trained by the mnist-search pipeline
  ({trial['backend']} backend), Adam (learning rate {config['learning_rate']:g}), batch
  {config['batch_size']}, {config['epochs']} epochs (weights of epoch {trial['best_epoch']}),
  seed {config['seed']}.
- `model.keras` takes {spec['what']} (input shape {tuple(spec['shape'])}, dtype
  `{spec['dtype']}`) and gives the probabilities of {len(classes)} classes; the
  normalization ({record['normalization']['formula']}: {rule}), {flattening}the softmax are
  inside. Built-in Keras layers only: `keras.saving.load_model("model.keras")` loads it
  without this project.
- Trial key `{trial['trial_key']}`; model key `{record['model_key']}`; TensorFlow
  {versions['tensorflow']}, Keras {versions['keras']}, mnist-search {versions['mnist-search']}.
{before_text}{features}
{intended_use(record)}
## Metrics

Accuracy (the share of samples whose most probable class is the true one), overall and per
class, and the confusion matrix, on the test split. How the model was chosen: {chosen['how']}
(`{chosen['by']}`, the **{chosen['split']}** split); the test split took no part in it.

| split | samples | accuracy |
|---|---|---|
| train | {sizes.get('train', '')} | {_accuracy(scores.get('train_accuracy'))} |
| validation | {sizes.get('validation', '')} | {_accuracy(scores['val_accuracy'])}{trained_on} |
| test | {sizes.get('test', '')} | **{_accuracy(scores['test_accuracy'])}** |
{refit_section(record)}
## Evaluation data

The test split of {data['name']} (`{data['source']}`): {data['split_text']}. Data
fingerprint `{data['fingerprint']}`.

## Training data

{training_text}

{analyses(record, "the project's own network on the processed split")}
## Ethical considerations

No personal data is known to be involved; the data's own documentation governs its use.

## Caveats and recommendations

- **A selection on the validation split overrates.** {selected}. Besides, {split_note}.
- The test accuracy is one split's: with {sizes.get('test', '?')} samples, one sample is
  {100 / max(int(sizes.get('test', 1) or 1), 1):.3g} points.
- Inputs must be prepared as the training data was: {spec['what']}{", columns in the order "
  "above" if spec.get('feature_names') else ""}{"; image files converted as above" if before
  else ""}. The model does not check ranges or units.{retrained}
"""


def _ms(latency: dict[str, Any] | None, label: str) -> str:
    value = (latency or {}).get(label)
    return "n/a" if value is None else f"{value:.4f}"


def _count(value: Any) -> str:
    return "?" if value is None else f"{int(value):,}"


def ensemble_card(record: dict[str, Any]) -> str:
    """The card of an ensemble's ``model.json`` (:mod:`tasks.export.ensemble`): its members
    and the comparison with the best single model, then the sections of any card."""
    ensemble, comparison = record["ensemble"], record["comparison"]
    data, scores, spec = record["data"], record["scores"], record["input"]
    chosen, versions = record["chosen"], record["versions"]
    sizes = data.get("sizes", {})
    members = ensemble["members"]
    member_rows = [[m["name"], f"`{m['trial_key']}`", m["picks"], f"{m['weight']:.3g}",
                    m["label"], _count(m["param_count"]), _accuracy(m["val_accuracy"]),
                    _accuracy(m["test_accuracy"])] for m in members]
    single, mine, top = comparison["best_single"], comparison["ensemble"], \
        comparison["top_k_average"]
    compare_rows = [
        ["**this ensemble**", f"{len(members)} trials, {ensemble['k']} picks",
         _accuracy(mine["val_accuracy"]), f"**{_accuracy(mine['test_accuracy'])}**",
         _count(mine["param_count"]), _ms(mine["latency_ms"], "batch_256"),
         _ms(mine["latency_ms"], "batch_1")],
        ["the best single trial by validation", f"`{single['trial_key']}` ({single['label']})",
         _accuracy(single["val_accuracy"]), _accuracy(single["test_accuracy"]),
         _count(single["param_count"]), _ms(single["latency_ms"], "batch_256"),
         _ms(single["latency_ms"], "batch_1")],
        [f"the plain average of the top {top['k']} by validation", f"{top['k']} trials",
         _accuracy(top["val_accuracy"]), _accuracy(top["test_accuracy"]), "", "", ""],
    ]
    picks = [row for row in ensemble["curve"] if row["k"] in (1, 2, 5, 10, 25, 50, 100)
             or row["k"] == ensemble["k"]]
    curve_rows = [[row["k"], row["members"], _accuracy(row["val_accuracy"]),
                   _accuracy(row["test_accuracy"]), _accuracy(row["top_k_val_accuracy"]),
                   _accuracy(row["top_k_test_accuracy"])] for row in picks]
    skipped = (f" {ensemble['skipped']} completed trial(s) were skipped: their weights were "
               "gone (or their probabilities not finite), and an ensemble never trains."
               if ensemble["skipped"] else "")
    before = record.get("before_model")
    before_text = (f"\nBefore the model, each image file is converted as the data step did: "
                   f"`{before['steps']}`.\n" if before else "")
    rule = record["normalization"].get("rule") or "the data step's rule"
    latency = comparison["latency"]
    return f"""# Model card: {record['name']}

## Model details

- An **ensemble** of {len(members)} fully connected network(s) that the mnist-search
  pipeline trained in a search, chosen by greedy ensemble selection (Caruana et al.,
  "Ensemble Selection from Libraries of Models", ICML 2004): {chosen['how']}. Nothing was
  trained for it: each member is a trial with the weights the search stored.
- `model.keras` takes {spec['what']} (input shape {tuple(spec['shape'])}, dtype
  `{spec['dtype']}`), normalizes it once ({record['normalization']['formula']}: {rule}),
  runs every member (a nested model named as below) and adds their class probabilities
  scaled by their weights (`Rescaling` then `Add`): the weighted average of
  {len(record['classes'])} class probabilities. Built-in Keras layers only:
  `keras.saving.load_model("model.keras")` loads it without this project.
- Model key `{record['model_key']}`; TensorFlow {versions['tensorflow']}, Keras
  {versions['keras']}, mnist-search {versions['mnist-search']}.
{before_text}
### Members

Weight = picks / {ensemble['k']}. Validation and test accuracy: each trial's own.

{_table(["member", "trial key", "picks", "weight", "network", "parameters",
         "validation accuracy", "test accuracy"], member_rows)}

The pool: {ensemble['pool']}.{skipped}

{intended_use(record)}
## Metrics

Accuracy (the share of samples whose most probable class is the true one), overall and per
class, and the confusion matrix, on the test split; the validation split chose the members,
the test split took no part in it.

### The ensemble against the best single model

Latency: {latency['how']} ({latency['machine']}).

{_table(["model", "what", "validation accuracy", "test accuracy", "parameters",
         "ms per input (batch 256)", "ms per input (batch 1)"], compare_rows)}

### By the number of picks

The first k picks of the greedy selection (greedy: they are the k-pick ensemble), and the
plain average of the top k trials by validation accuracy:

{_table(["k", "members", "validation", "test", "top-k average: validation",
         "top-k average: test"], curve_rows)}

All {len(ensemble['curve'])} rows are in `model.json` (`ensemble.curve`).

## Evaluation data

The test split of {data['name']} (`{data['source']}`): {data['split_text']}. Data
fingerprint `{data['fingerprint']}`.

## Training data

The training split of the same data ({sizes.get('train', '?')} samples) trained every member;
the validation split ({sizes.get('validation', '?')} samples) chose their epochs, the search's
trials and the ensemble's picks.

{analyses(record, "the members' weighted average computed from their weights on the "
                   "processed split")}
## Ethical considerations

No personal data is known to be involved; the data's own documentation governs its use.

## Caveats and recommendations

- **A selection on the validation split overrates.** The picks were made to raise the
  validation accuracy ({_accuracy(scores['val_accuracy'])}): it is above what the ensemble
  will score on new data. Quote the test accuracy ({_accuracy(scores['test_accuracy'])}),
  which took no part in the choice; compare it with the best single model's test accuracy
  above.
- The test accuracy is one split's: with {sizes.get('test', '?')} samples, one sample is
  {100 / max(int(sizes.get('test', 1) or 1), 1):.3g} points.
- It costs every member's forward pass: its parameters and latency above against the single
  model's.
- Inputs must be prepared as the training data was: {spec['what']}{"; image files converted "
  "as above" if before else ""}. The model does not check ranges or units.
"""
