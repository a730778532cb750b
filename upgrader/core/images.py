"""Fitting a decoded image to a model's input: one colour conversion and one resize for every reader.

Query files, uploaded images and image-folder datasets all pass through :func:`fit_image`, so an
image gives the same pixels whichever way it came in. Pillow is imported when an image is fitted,
not at import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image


def fit_image(im: Image.Image, image_shape: tuple[int, int, int]) -> np.ndarray:
    """Convert an image to the channel count and resize it (bilinear) to (H, W).

    Args:
        im: a Pillow image of any mode and size.
        image_shape: (H, W, C) wanted; C is 1 (grey) or 3 (RGB).

    Returns:
        uint8 [H, W, C].
    """
    from PIL import Image

    h, w, c = image_shape
    im = im.convert("L" if c == 1 else "RGB")
    if im.size != (w, h):
        im = im.resize((w, h), Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8).reshape(h, w, c)
