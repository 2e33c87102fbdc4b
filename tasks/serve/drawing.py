"""A drawing made into a digit the way MNIST's digits were made.

MNIST's images (LeCun, Cortes and Burges) are NIST's bilevel digits "size normalized to fit in
a 20x20 pixel box while preserving their aspect ratio" (the grey levels are the
normalization's anti-aliasing), then "centered in a 28x28 image by computing the center of
mass of the pixels, and translating the image so as to position this point at the center of
the 28x28 field". The real MNIST agrees: every training image's ink spans 20 pixels in its
longer direction (all but 2 of the first 5,000), and its centre of mass lies within half a
pixel of (14, 14), spread evenly over that pixel: a whole-pixel translation.

:func:`mnist_style` does the same to a drawing (white ink on black, any size): the ink's
bounding box, scaled into the box (20/28 of the model's input size, keeping the aspect ratio;
an area average when it shrinks, bilinear when it grows), placed so that its centre of mass
is the field's centre to the nearest pixel (kept inside the field). A model of other grey
images up to 64 x 64 gets the same proportions at its own size.
"""

from __future__ import annotations

import numpy as np

#: The digit's box in MNIST's field: 20 of 28 pixels.
BOX = 20 / 28
#: The largest grey image (height and width) the page offers a canvas for.
MAX_SIDE = 64
#: A pixel is ink where it is brighter than this (0..255): the canvas's anti-aliased edges are.
INK = 0


def drawable(model) -> bool:
    """Whether the page offers a canvas for ``model``: 8-bit grey images (H x W or H x W x 1)
    of at most :data:`MAX_SIDE` pixels a side."""
    shape = tuple(model.shape)
    grey = len(shape) == 2 or (len(shape) == 3 and shape[2] == 1)
    return (model.kind == "image" and model.dtype == "uint8" and grey
            and max(shape[:2]) <= MAX_SIDE)


def mnist_style(drawing: np.ndarray, size: tuple[int, int] = (28, 28)) -> np.ndarray | None:
    """``drawing`` (a grey H x W array, white ink on black) as an MNIST digit of ``size``
    (height, width): uint8, the ink's bounding box scaled into :data:`BOX` of the field
    keeping its aspect ratio, its centre of mass at the field's centre (to the nearest pixel).
    None where there is no ink."""
    from PIL import Image

    grey = np.asarray(drawing)
    if grey.ndim != 2:
        raise ValueError(f"a drawing is a grey H x W array, not of shape {grey.shape}")
    ink = grey > INK
    if not ink.any():
        return None
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    crop = np.clip(grey[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], 0, 255).astype(np.uint8)
    height, width = size
    box_h, box_w = max(1, round(height * BOX)), max(1, round(width * BOX))
    scale = min(box_h / crop.shape[0], box_w / crop.shape[1])
    new_h = min(box_h, max(1, round(crop.shape[0] * scale)))
    new_w = min(box_w, max(1, round(crop.shape[1] * scale)))
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    digit = np.asarray(Image.fromarray(crop, "L").resize((new_w, new_h), resample), np.uint8)
    if not digit.any():  # pragma: no cover (faint specks that the scaling averaged away)
        return None
    centre_y, centre_x = centre_of_mass(digit)
    top = int(np.clip(np.floor(height / 2 - centre_y + 0.5), 0, height - new_h))
    left = int(np.clip(np.floor(width / 2 - centre_x + 0.5), 0, width - new_w))
    field = np.zeros((height, width), np.uint8)
    field[top:top + new_h, left:left + new_w] = digit
    return field


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    """(row, column) of ``image``'s centre of mass, its pixels as weights."""
    mass = np.asarray(image, np.float64)
    total = mass.sum()
    return (float(mass.sum(axis=1) @ np.arange(mass.shape[0]) / total),
            float(mass.sum(axis=0) @ np.arange(mass.shape[1]) / total))
