"""What the exported model takes and how it normalizes it, read from the processed data's
manifest (``data/processed/<fingerprint>/manifest.json``).

The processed splits are float32 feature rows (:mod:`tasks.data.prepare`): 8-bit images
scaled by 1/255 (``pixels``), everything else standardized per feature with the training
split's mean and standard deviation (``standardize``). The exported model takes the input
*before* that step, as the user's data holds it, and does the step itself:

* ``pixels``: ``Normalization(mean=0, variance=65025)``, which is ``x / 255`` bit for bit
  (``sqrt(65025) = 255`` exactly in float32; ``Rescaling(1/255)`` multiplies by a rounded
  reciprocal and is not);
* ``standardize``: ``Normalization(mean, variance=std**2)`` in float64, as the data step
  computes it (``sqrt(std**2) == std`` exactly in IEEE arithmetic), then float32.

An image folder's images are converted before they are images of one shape (grey stays grey,
otherwise RGB; other sizes resized): that happens before the model's input and is recorded
(:attr:`ModelInput.before_model`), not built in.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tasks.data.splits import DataHandle

#: ``Normalization(mean=0, variance=PIXEL_VARIANCE)`` divides by 255 exactly.
PIXEL_VARIANCE = 255.0**2
#: Keras' Normalization divides by ``max(sqrt(variance), epsilon)``; keras.config.epsilon().
KERAS_EPSILON = 1e-7


@dataclass(frozen=True)
class ModelInput:
    """The exported model's input and its normalization.

    ``kind``: ``image`` or ``table``; ``shape``: one sample's shape (``(h, w)``, ``(h, w, c)``
    or ``(features,)``); ``dtype``: what the user's data holds (``uint8`` for 8-bit images,
    ``float64`` for a table's rows); ``scaling``: ``pixels`` or ``standardize`` (with
    ``mean`` and ``std`` per feature, in the flattened order); ``before_model``: the
    conversion that happens before the input (an image folder's), or None."""

    kind: str
    shape: tuple[int, ...]
    dtype: str
    classes: tuple[str, ...]
    scaling: str
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    feature_names: tuple[str, ...] | None = None
    before_model: dict[str, Any] | None = None
    data_name: str = ""
    source: str = ""
    split: dict[str, Any] = field(default_factory=dict)
    #: which normalization rule the data step applied, and why (its manifest's ``reason``)
    rule: str = ""

    @property
    def features(self) -> int:
        return int(np.prod(self.shape))

    def normalization(self) -> dict[str, Any]:
        """The normalization as ``model.json`` records it."""
        if self.scaling == "pixels":
            return {"kind": "pixels", "formula": "x / 255",
                    "layer": "Normalization(mean=0, variance=65025)",
                    "note": "equals x.astype(float32) / 255 bit for bit"}
        tiny = int(np.sum(self.std < KERAS_EPSILON))
        record: dict[str, Any] = {
            "kind": "standardize", "formula": "(x - mean) / std, per feature, in float64",
            "layer": "Normalization(mean=mean, variance=std**2), float64",
            "mean": self.mean.tolist(), "std": self.std.tolist(),
            "note": "mean and std of the training split; a constant feature has std 1"}
        if tiny:
            record["warning"] = (f"{tiny} feature(s) have a standard deviation below Keras' "
                                 f"epsilon ({KERAS_EPSILON:g}): the model divides them by "
                                 "the epsilon, the training data by their own")
        return record

    def describe(self) -> dict[str, Any]:
        """The input as ``model.json`` records it."""
        shape = "x".join(map(str, self.shape))
        return {"kind": self.kind, "shape": list(self.shape), "dtype": self.dtype,
                "feature_names": list(self.feature_names) if self.feature_names else None,
                "what": (f"{shape} images, {self.dtype}" if self.kind == "image" else
                         f"rows of {self.features} feature columns, as floats")}

    def preprocessing(self) -> dict[str, Any]:
        """Everything between the user's data and the network (part of the model key)."""
        return {"input": self.describe(), "normalization": self.normalization(),
                "before_model": self.before_model, "classes": list(self.classes)}


#: The rule of data processed before the manifest said why (tasks.data.prepare.scaling_rule).
DEFAULT_RULES = {"pixels": "8-bit images: x / 255, as the exercise does",
                 "standardize": "not 8-bit images: standardized per feature"}


def manifest_of(data: DataHandle) -> dict[str, Any]:
    return json.loads((Path(data.directory) / "manifest.json").read_text())


def model_input(data: DataHandle) -> ModelInput:
    """The exported model's input for the processed data ``data``."""
    manifest = manifest_of(data)
    described = manifest.get("dataset", {})
    normalization = described.get("normalization") or {"kind": "pixels"}
    scaling = normalization.get("kind", "pixels")
    kind = described.get("kind", "image")
    image_shape = described.get("image_shape")
    shape = tuple(image_shape) if kind == "image" and image_shape else (data.features,)
    source = described.get("source") or ""
    classes = tuple(described.get("class_names") or map(str, range(data.classes)))
    mean = std = None
    if scaling == "standardize":
        mean = np.asarray(normalization["mean"], np.float64)
        std = np.asarray(normalization["std"], np.float64)
    return ModelInput(
        kind="image" if kind == "image" and image_shape else "table", shape=shape,
        dtype=raw_dtype(source, scaling, kind), classes=classes, scaling=scaling,
        mean=mean, std=std,
        feature_names=tuple(described["feature_names"]) if described.get("feature_names")
        else None,
        before_model=image_folder_conversion(source, shape) if kind == "image" else None,
        data_name=described.get("name", ""), source=source,
        split=described.get("split") or {},
        rule=normalization.get("reason") or DEFAULT_RULES[scaling])


def raw_dtype(source: str, scaling: str, kind: str) -> str:
    """The dtype of the user's samples: an npz says it in its header (read without loading
    the array); IDX files and image folders are uint8; a table's rows are float64 (its
    reader reads every numeric column as float64)."""
    if source.endswith(".npz") and Path(source).is_file():
        found = npz_dtype(Path(source), "x_train")
        if found is not None:
            return found
    if scaling == "pixels":
        return "uint8"
    return "float64" if kind == "table" else "float32"


def npz_dtype(path: Path, array: str) -> str | None:
    """The dtype of ``array`` in the npz at ``path``, from its .npy header, or None."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open(f"{array}.npy") as handle:
            version = np.lib.format.read_magic(handle)
            read = {(1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read is None:
                return None
            _, _, dtype = read(handle)
        return np.dtype(dtype).name
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def image_folder_conversion(source: str, shape: tuple[int, ...]) -> dict[str, Any] | None:
    """How an image folder's files became images of ``shape`` (:func:`tasks.data.readers.
    read_image_folder`), for a source that is such a folder; None for any other source."""
    from tasks.data.readers import IDX_FILES, IMAGE_SUFFIXES

    folder = Path(source) if source else None
    if folder is None or not folder.is_dir() or any(
            (folder / f"{IDX_FILES['x_train']}{gz}").is_file() for gz in ("", ".gz")):
        return None
    height, width = shape[:2]
    mode = "RGB" if len(shape) == 3 else "L"
    return {
        "source": "a folder of images, one subfolder per class",
        "files": list(IMAGE_SUFFIXES),
        "convert": mode,
        "size": [width, height],
        "resize": "bilinear",
        "steps": (f"PIL: Image.open(path).convert('{mode}'); if its size is not "
                  f"({width}, {height}): .resize(({width}, {height}), "
                  "Image.Resampling.BILINEAR); np.asarray(image, dtype=np.uint8)"),
    }
