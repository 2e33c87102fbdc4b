"""A request's instances, as the model takes them, or one line naming what does not fit.

The body is TensorFlow Serving's REST shape, ``{"instances": [instance, ...]}``, each
instance one of:

* **the model's raw input**: an image as nested lists of its shape (``28 x 28``; ``H x W`` for
  a model of ``H x W x 1``), 0..255 for a model of 8-bit images (whole numbers written as
  ``3.0`` are taken); a table's row of feature values, in the model's column order;
* **``{"b64": "..."}``**: a file in base64 (TensorFlow Serving's form for binary values; a
  ``data:...;base64,`` prefix is taken too). For an image model an image file (PNG, JPEG, BMP,
  GIF, ...), decoded and converted as predict converts image files
  (:func:`tasks.predict.inputs.conversion_of`: ``model.json``'s ``before_model``, grey or RGB,
  resized bilinear); for a table model a CSV (with a header row, or rows of numbers only, in
  the model's column order) or Parquet file of the feature columns, one prediction per row.

The checks are predict's own (:func:`tasks.predict.inputs.fit`,
:func:`tasks.predict.inputs.checked_values`, the table readers' column check); every mismatch
is a :class:`tasks.errors.DataError` whose one line names the instance
(``instances[3]: a 27x28 image; the model takes 28x28 uint8 images``). Nothing is written.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from tasks.data.readers import RawData, converted
from tasks.errors import DataError, first_line
from tasks.predict.inputs import checked_values, conversion_of, fit
from tasks.predict.model import ModelFolder, shape_text

#: How many of the model's inputs the default body bound (``--max-body``) fits.
DEFAULT_INPUTS = 1000
#: JSON bytes of one value at its widest: ``255, `` for 8-bit pixels, a float64's ``repr``
#: with its separator (``-1.2345678901234567e-300, ``) for anything else.
PIXEL_BYTES, NUMBER_BYTES = 5, 26
#: The most pixels an uploaded image may decode to (a small PNG can hold a huge plain image).
MAX_PIXELS = 40_000_000
_DATA_URL = re.compile(r"^data:[^,]*;base64,")


#: :func:`first_non_number`'s answer for a JSON null.
NULL = object()


class BodyTooLarge(DataError):
    """A request body over the server's bound (HTTP 413)."""


def input_bytes(model: ModelFolder) -> int:
    """An upper bound of one raw input's JSON text: each value at its widest (:data:`PIXEL_BYTES`
    for 8-bit pixels, else :data:`NUMBER_BYTES`), the brackets of its rows and some slack."""
    shape = model.shape
    values = int(np.prod(shape))
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    per_value = PIXEL_BYTES if model.dtype == "uint8" else NUMBER_BYTES
    return values * per_value + 4 * rows + 64


def default_max_body(model: ModelFolder) -> int:
    """The default body bound: :data:`DEFAULT_INPUTS` raw inputs (4,096,000 bytes for 28x28
    8-bit images)."""
    return DEFAULT_INPUTS * input_bytes(model)


# --------------------------------------------------------------------------------------------
# The body
# --------------------------------------------------------------------------------------------
def parse_body(body: bytes) -> list[Any]:
    """The ``instances`` of a request body, a non-empty list; one line otherwise."""
    try:
        payload = json.loads(body)
    except RecursionError:
        raise DataError("the body is JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise DataError(f"the body is not JSON ({first_line(exc)})") from None
    if isinstance(payload, dict) and "instances" not in payload and "inputs" in payload:
        raise DataError('TensorFlow Serving\'s columnar "inputs" is not taken: send '
                        '{"instances": [instance, ...]}')
    if not isinstance(payload, dict) or "instances" not in payload:
        raise DataError('the body must be a JSON object {"instances": [instance, ...]} '
                        "(TensorFlow Serving's REST shape)")
    instances = payload["instances"]
    if not isinstance(instances, list):
        raise DataError(f'"instances" is {json_type(instances)}, not a list: '
                        '{"instances": [instance, ...]}')
    if not instances:
        raise DataError('"instances" is empty: give at least one instance')
    return instances


def json_type(value: Any) -> str:
    """``an object``, ``a string``, ``a number`` ... (what JSON calls it)."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


# --------------------------------------------------------------------------------------------
# Instances -> the model's input
# --------------------------------------------------------------------------------------------
def model_input(model: ModelFolder, instances: list[Any]) -> np.ndarray:
    """The instances as the model takes them: ``(n, *model.shape)`` in its dtype (a table
    file's rows counted one by one)."""
    files = {i for i, instance in enumerate(instances) if isinstance(instance, dict)}
    if not files:
        return raw_values(model, instances)
    parts = []
    run: list[int] = []  # consecutive raw instances, converted together

    def flush():
        if run:
            parts.append(raw_values(model, [instances[i] for i in run], start=run[0]))
            run.clear()

    decoded = {}
    if model.kind == "image":
        decoded = dict(zip(sorted(files), image_files(model, {i: instances[i]
                                                            for i in sorted(files)}),
                           strict=True))
    for index, instance in enumerate(instances):
        if index not in files:
            run.append(index)
            continue
        flush()
        parts.append(decoded[index] if model.kind == "image"
                     else table_file(model, file_bytes(instance, f"instances[{index}]"),
                                     f"instances[{index}]"))
    flush()
    return np.concatenate(parts)


def raw_values(model: ModelFolder, instances: list[Any], start: int = 0) -> np.ndarray:
    """Instances in the model's raw input shape (nested lists of numbers), checked as predict
    checks arrays; ``start``: the index of the first (for the messages)."""
    try:
        x = np.asarray(instances)
    except (ValueError, TypeError, OverflowError):
        x = None
    if x is None or x.dtype.kind not in "biuf":
        for offset, instance in enumerate(instances):
            check_shape(array_of(instance, f"instances[{start + offset}]", model).shape,
                        model, f"instances[{start + offset}]")
        x = np.stack([np.asarray(i).reshape(model.shape) for i in instances])
    check_shape(x.shape[1:], model, f"instances[{start}]")
    if x.shape[1:] != model.shape:
        x = x.reshape(len(x), *model.shape)  # H x W for H x W x 1, and the other way
    if x.dtype.kind == "f" and np.dtype(model.dtype).kind in "iu":
        whole = (np.isfinite(x).all() and np.array_equal(x, np.round(x))
                 and np.abs(x).max() < 2**31)
        if whole:  # 3.0 for 3: what some JSON writers give
            x = x.astype(np.int64)
    names = model.feature_names
    try:
        return checked_values(x, model, "instances", "the instances", names)
    except DataError:
        for index in range(len(x)):  # name the first instance that does not fit
            checked_values(x[index:index + 1], model, f"instances[{start + index}]",
                           "the instance", names)
        raise


def check_shape(shape: tuple[int, ...], model: ModelFolder, source: str) -> None:
    """One line where an instance of ``shape`` is not the model's input (``H x W`` for a model
    of ``H x W x 1`` is, and the other way round)."""
    if shape == model.shape or shape + (1,) == model.shape or shape == model.shape + (1,):
        return
    raise DataError(f"{source}: {instance_text(shape)}; the model takes {model.takes()}"
                    f"{hint(model, shape)}")


def array_of(instance: Any, source: str, model: ModelFolder) -> np.ndarray:
    """One raw instance as a numeric array; one line where it is none (a non-numeric value,
    nested lists of unequal lengths)."""
    if isinstance(instance, dict):  # pragma: no cover (model_input sends these elsewhere)
        raise DataError(f"{source}: an object; a raw instance is nested lists of numbers")
    bad = first_non_number(instance)
    if bad is not None:
        shown = (repr(bad[:40]) if isinstance(bad, str)
                 else "an object" if isinstance(bad, dict) else "null")
        raise DataError(f"{source}: a non-numeric value ({shown}); the model takes "
                        f"{model.takes()} as numbers")
    try:
        array = np.asarray(instance)
    except (ValueError, TypeError):
        raise DataError(f"{source}: nested lists of unequal lengths; the model takes "
                        f"{model.takes()}") from None
    if array.dtype.kind not in "biuf":
        raise DataError(f"{source}: a number out of range; the model takes {model.takes()}")
    return array


def first_non_number(value: Any) -> Any:
    """The first leaf of nested lists that is not a number (a string, null, an object), else
    None (a boolean counts as a number, as in the tables)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif not isinstance(item, int | float):
            return item if item is not None else NULL
    return None


def instance_text(shape: tuple[int, ...]) -> str:
    """``one value``, ``a row of 5 values``, ``a 27x28 image``, ``a 28x28 image of 3 channels``."""
    if len(shape) == 0:
        return "one value"
    if len(shape) == 1:
        return f"a row of {shape[0]} values"
    if len(shape) == 2:
        return f"a {shape_text(shape)} image"
    if len(shape) == 3:
        return f"a {shape_text(shape[:2])} image of {shape[2]} channels"
    return f"an array of shape {shape_text(shape)}"


def hint(model: ModelFolder, shape: tuple[int, ...]) -> str:
    """What to send instead, where the mistake is a common one."""
    if model.kind == "table" and len(shape) == 0:
        return ' (each instance is one row: {"instances": [[v1, v2, ...], ...]})'
    if model.kind == "image" and int(np.prod(shape)) == int(np.prod(model.shape)):
        return f" (send each image as nested lists of {shape_text(model.shape)})"
    return ""


# --------------------------------------------------------------------------------------------
# {"b64": ...}: files
# --------------------------------------------------------------------------------------------
def file_bytes(instance: dict, source: str) -> bytes:
    """The bytes of a ``{"b64": "..."}`` instance; one line for another object or bad base64."""
    if set(instance) != {"b64"} or not isinstance(instance["b64"], str):
        keys = ", ".join(sorted(map(str, instance)))[:60] or "none"
        raise DataError(f'{source}: an object instance is {{"b64": "<a file in base64>"}} '
                        f"(keys here: {keys})")
    text = _DATA_URL.sub("", instance["b64"].strip())
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        try:  # the URL-safe alphabet
            data = base64.b64decode(text, altchars=b"-_", validate=True)
        except (binascii.Error, ValueError) as exc:
            raise DataError(f"{source}: b64 is not base64 ({first_line(exc)})") from None
    if not data:
        raise DataError(f"{source}: b64 is empty")
    return data


def open_image_bytes(data: bytes, source: str):
    """The decoded image in ``data`` (a PIL image); one line if it is none or too large."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise DataError(f"{source}: a {width}x{height} image, over the "
                            f"{MAX_PIXELS // 1_000_000} million pixels this server decodes")
        image.load()
        return image
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError(f"{source}: b64 holds no image file that can be read (PNG, JPEG, BMP, "
                        "GIF, ...)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        reason = first_line(exc) or type(exc).__name__
        raise DataError(f"{source}: b64 holds no readable image ({reason})") from None


def image_files(model: ModelFolder, instances: dict[int, dict]) -> list[np.ndarray]:
    """The image files of ``instances`` (index -> ``{"b64": ...}``), each decoded and converted
    as predict converts image files, checked against the model: one ``(1, *shape)`` array
    each."""
    conversion = conversion_of(model)
    arrays = [converted(open_image_bytes(file_bytes(instance, f"instances[{i}]"),
                                         f"instances[{i}]"), *conversion)
              for i, instance in instances.items()]
    raw = RawData(x_train=np.stack(arrays), y_train=None, kind="image", source="instances",
                  files=tuple(f"instances[{i}]" for i in instances))
    x = fit(model, raw, conversion).x
    return [x[k:k + 1] for k in range(len(x))]


def table_file(model: ModelFolder, data: bytes, source: str) -> np.ndarray:
    """The rows of a CSV or Parquet file, for a table model: its feature columns, in the
    model's order (a label column may be there: ``label``), checked. A CSV's first row is its
    header, unless it holds as many numbers as the model has features: then every row is
    data, in the model's column order."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from tasks.data.readers import read_table

    if _is_image(data):
        raise DataError(f"{source}: an image file; the model takes {model.takes()} (a CSV "
                        "or Parquet file of them, or rows of numbers)")
    try:
        if data[:4] == b"PAR1":
            table = pq.read_table(io.BytesIO(data))
        else:
            table = pcsv.read_csv(io.BytesIO(data))
            if table.num_columns == len(model.feature_names) and all(
                    _is_number(name) for name in table.column_names):  # no header row
                table = pcsv.read_csv(io.BytesIO(data), read_options=pcsv.ReadOptions(
                    column_names=list(model.feature_names)))
    except (pa.ArrowException, OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{source}: b64 holds no readable CSV or Parquet table "
                        f"({first_line(exc) or type(exc).__name__})") from None
    raw = read_table(table, Path(source), "label", inputs=True, expected=model.feature_names)
    return fit(model, RawData(x_train=raw.x_train, y_train=None, kind="table",
                              feature_names=raw.feature_names, source=source)).x


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_image(data: bytes) -> bool:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)):
            return True
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False


# --------------------------------------------------------------------------------------------
# The page's drawings
# --------------------------------------------------------------------------------------------
def drawing_inputs(model: ModelFolder, instances: list[Any]) -> np.ndarray:
    """Each instance a drawing (white ink on black, any size: ``{"b64": PNG}`` or nested lists
    of 0..255), made into the model's input as MNIST's digits were made
    (:func:`tasks.serve.drawing.mnist_style`): ``(n, *model.shape)`` uint8."""
    from tasks.serve.drawing import drawable, mnist_style

    if not drawable(model):
        raise DataError(f"this model takes {model.takes()}: drawings are for models of grey "
                        "8-bit images up to 64x64")
    digits = []
    for index, instance in enumerate(instances):
        source = f"instances[{index}]"
        if isinstance(instance, dict):
            grey = np.asarray(open_image_bytes(file_bytes(instance, source), source)
                              .convert("L"), np.uint8)
        else:
            grey = array_of(instance, source, model)
            if grey.ndim != 2 or grey.size > MAX_PIXELS:
                raise DataError(f"{source}: {instance_text(grey.shape)}; a drawing is a grey "
                                "image (nested lists of rows of 0..255)")
            if grey.size and (grey.min() < 0 or grey.max() > 255):
                raise DataError(f"{source}: values in {grey.min()}..{grey.max()}; a drawing's "
                                "are 0..255")
        digit = mnist_style(grey, model.shape[:2])
        if digit is None:
            raise DataError(f"{source}: no ink: the drawing is empty (white ink on black)")
        digits.append(digit.reshape(model.shape))
    return np.stack(digits)
