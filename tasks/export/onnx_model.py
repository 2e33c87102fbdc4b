"""``model.onnx``: the exported Keras model as ONNX, where the ``export`` extra is installed
(``pip install -e ".[export]"``: tf2onnx and onnxruntime), checked against Keras.

How: the model's forward pass is traced as a TensorFlow function on its own input (the data
as the user holds it), frozen (its weights and the normalization's constants become graph
constants) and converted by tf2onnx from that graph. Keras' own ``model.export(path,
format="onnx")`` goes through tf2onnx too, but it leaves the ``Normalization`` layer's mean
and variance (tensors, not variables) as two extra graph *inputs*, so its file does not run
without feeding them (measured with Keras 3.15.1, tf2onnx 1.17.0, onnxruntime 1.32.0).

The check (:data:`TOLERANCE`): on the whole test split as raw input, onnxruntime's most
probable class must equal Keras' for every sample and no class probability may differ by more
than 1e-5. A model that fails it is not written; ``model.json``'s ``onnx`` says why. The
latency of both runtimes is measured on the same inputs (:func:`latencies`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from tasks.files import atomic_path

ONNX_FILE = "model.onnx"
#: The largest difference of a class probability that the check accepts.
TOLERANCE = 1e-5
#: The packages of the ``export`` extra.
PACKAGES = ("tf2onnx", "onnxruntime")
#: Latency: the fastest of REPEATS timed calls (after WARMUP untimed ones), per image.
BATCH, REPEATS, WARMUP = 256, 30, 3
INSTALL = 'pip install -e ".[export]"'


def onnx_available() -> tuple[bool, str]:
    """(whether tf2onnx and onnxruntime can be imported, why not)."""
    missing = [name for name in PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        return False, (f"{' and '.join(missing)} not installed: the `export` extra "
                       f"({INSTALL}) writes model.onnx")
    return True, ""


def package_versions() -> dict[str, str]:
    found = {}
    for name in ("tf2onnx", "onnxruntime", "onnx"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover
            found[name] = "none"
    return found


def keras_function(model):
    """The model's forward pass as one traced TensorFlow function of its raw input (the
    fastest way Keras runs it; ``model(x)`` eagerly, or ``predict``, add per-call overhead)."""
    import tensorflow as tf

    spec = model.inputs[0]
    signature = [tf.TensorSpec((None, *spec.shape[1:]), spec.dtype, name=input_name(model))]
    return tf.function(lambda x: model(x, training=False), input_signature=signature)


def input_name(model) -> str:
    return model.inputs[0].name.split(":")[0] or "input"


def to_onnx(model, path: Path) -> int:
    """Convert the Keras ``model`` to ONNX at ``path`` (module doc): input ``image`` or
    ``features`` (the model's own), output ``probabilities``; returns the ONNX opset."""
    import onnx
    import tf2onnx
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    try:  # what Keras' own ONNX export does first: tf2onnx's fixes for NumPy 2
        from keras.src.export.tf2onnx_lib import patch_tf2onnx

        with warnings.catch_warnings():  # its check for np.object warns under NumPy 2
            warnings.simplefilter("ignore", FutureWarning)
            patch_tf2onnx()
    except ImportError:  # pragma: no cover (another Keras)
        pass
    function = keras_function(model).get_concrete_function()
    frozen = convert_variables_to_constants_v2(function, lower_control_flow=False,
                                               aggressive_inlining=True)
    graph = frozen.graph.as_graph_def()
    inputs = [tensor.name for tensor in frozen.inputs]
    outputs = [tensor.name for tensor in frozen.outputs]
    proto, _ = tf2onnx.convert.from_graph_def(graph, input_names=inputs, output_names=outputs)
    names = {inputs[0]: input_name(model), outputs[0]: "probabilities"}
    for value in (*proto.graph.input, *proto.graph.output):
        value.name = names.get(value.name, value.name)
    for node in proto.graph.node:
        node.input[:] = [names.get(name, name) for name in node.input]
        node.output[:] = [names.get(name, name) for name in node.output]
    onnx.checker.check_model(proto)
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    return int(next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")))


def session(path: Path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_session(sess, x: np.ndarray, batch: int = 1000) -> np.ndarray:
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch]})[0]
                           for i in range(0, len(x), batch)])


def fastest_ms_per_image(call, x: np.ndarray) -> float:
    """Milliseconds per image of ``call(x)``: the fastest of :data:`REPEATS` timed calls
    after :data:`WARMUP` untimed ones, divided by the batch."""
    for _ in range(WARMUP):
        call(x)
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        call(x)
        best = min(best, time.perf_counter() - start)
    return 1000.0 * best / len(x)


def latencies(model, sess, x: np.ndarray) -> dict[str, Any]:
    """Per-image latency of Keras (its traced function, TensorFlow) and of onnxruntime on the
    first :data:`BATCH` test inputs at once and on one input at a time."""
    import tensorflow as tf

    from tasks.trial.latency import machine

    forward = keras_function(model)
    name = sess.get_inputs()[0].name
    figures: dict[str, Any] = {}
    for label, rows in ((f"batch_{BATCH}", x[:BATCH]), ("batch_1", x[:1])):
        figures[label] = {
            "keras_ms": round(fastest_ms_per_image(
                lambda r: forward(r).numpy(), tf.constant(rows)), 5),
            "onnxruntime_ms": round(fastest_ms_per_image(
                lambda r: sess.run(None, {name: r}), rows), 5)}
    figures["how"] = (f"the fastest of {REPEATS} timed calls after {WARMUP} untimed ones, per "
                      "image, on the test split's first inputs as the model takes them; Keras: "
                      "the model's forward pass as one traced TensorFlow function; "
                      "onnxruntime: an InferenceSession on the CPU, default threads")
    figures["machine"] = machine()
    return figures


def export_onnx(model, folder: Path, x_raw: np.ndarray,
                keras_probabilities: np.ndarray) -> dict[str, Any]:
    """Write ``folder/model.onnx`` where the ``export`` extra is installed and it passes the
    check against ``keras_probabilities`` (the Keras model's on the raw test split ``x_raw``);
    returns what ``model.json`` records under ``onnx``. Never raises for a failed conversion:
    the record says what failed, and no ``model.onnx`` is left."""
    from tasks.settings import current

    available, why = onnx_available()
    if not available:
        return {"written": False, "reason": why}
    limit, parameters = current().onnx_max_params, int(model.count_params())
    if limit and parameters > limit:
        return {"written": False,
                "reason": f"the model has {parameters:,} parameters, more than "
                          f"PIPELINE_ONNX_MAX_PARAMS={limit:,} (tf2onnx's conversion takes "
                          "about 310 bytes of memory per parameter); set it higher, or 0 for "
                          "no limit, to convert it"}
    path = folder / ONNX_FILE
    record: dict[str, Any] = {"written": False, "file": ONNX_FILE,
                              "versions": package_versions()}
    try:
        opset = to_onnx(model, path)
        sess = session(path)
        probabilities = run_session(sess, x_raw)
    except Exception as exc:  # noqa: BLE001 (any failure of a third-party converter)
        path.unlink(missing_ok=True)
        return record | {"reason": f"the conversion failed: {type(exc).__name__}: {exc}"[:500]}
    differing = int(np.sum(probabilities.argmax(axis=1) != keras_probabilities.argmax(axis=1)))
    largest = float(np.max(np.abs(probabilities.astype(np.float64) - keras_probabilities)))
    passed = differing == 0 and largest <= TOLERANCE
    record["parity"] = {
        "samples": int(len(x_raw)), "differing_predictions": differing,
        "max_probability_difference": largest, "tolerance": TOLERANCE, "passed": passed,
        "how": "onnxruntime against the Keras model on the whole test split as raw input: the "
               "most probable class of every sample, and the largest difference of any class "
               "probability"}
    if not passed:
        path.unlink(missing_ok=True)
        return record | {"reason": f"the check failed: {differing} differing predictions, "
                                    f"largest probability difference {largest:.3g}"}
    inputs = sess.get_inputs()[0]
    record |= {"written": True,
               "input": {"name": inputs.name, "type": inputs.type,
                         "shape": [d if isinstance(d, int) else "batch" for d in inputs.shape]},
               "output": {"name": "probabilities", "shape": ["batch", int(
                   keras_probabilities.shape[1])]},
               "opset": opset,
               "latency": latencies(model, sess, x_raw)}
    return record

