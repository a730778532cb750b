"""Image files to model input: decoding encoded bytes within size limits, and reading image files.

Both end in :func:`upgrader.core.images.fit_image` (colour conversion and bilinear resize to the
artifact's ``(H, W, C)``), so a query sent over HTTP and one read from disk give the same pixels.
Server side: Pillow and numpy, never torch.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence

import numpy as np

from upgrader.core.errors import ArtifactError, InvalidRequest
from upgrader.core.images import fit_image


class BadImage(InvalidRequest):
    """An encoded image that cannot be decoded (empty, truncated, not an image format)."""


class ImageTooLarge(InvalidRequest):
    """An encoded image beyond the configured width / height / pixel limits."""


def decode_image(data: bytes, image_shape: tuple[int, int, int], *, max_side: int = 4096,
                 max_pixels: int = 16_777_216) -> np.ndarray:
    """Decode an encoded image file (PNG, JPEG, ...) to uint8 ``[H, W, C]`` of the artifact's shape.

    The header is checked against the limits before the pixels are decoded, so an oversized or
    decompression-bomb image costs nothing. Colour is converted (grey or RGB) and the image resized
    (bilinear) to ``image_shape``, as ``upgrader search FILE`` does.

    Args:
        data: the encoded file.
        image_shape: (H, W, C) of the artifact.
        max_side: largest width or height accepted.
        max_pixels: largest width * height accepted.

    Raises:
        BadImage: not a decodable image. ImageTooLarge: beyond ``max_side`` / ``max_pixels``.
    """
    from PIL import Image

    if not data:
        raise BadImage("empty image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            iw, ih = im.size
            if iw > max_side or ih > max_side or iw * ih > max_pixels:
                raise ImageTooLarge(
                    f"image is {iw}x{ih}; the limit is {max_side} px per side and {max_pixels} pixels — resize it first"
                )
            return fit_image(im, image_shape)
    except ImageTooLarge:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLarge(f"image exceeds {max_pixels} pixels (decompression bomb guard)") from None
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ValueError) for bad input
        raise BadImage(f"not a decodable image ({exc.__class__.__name__}: {str(exc)[:120]})") from None


def load_image(path: str | os.PathLike[str], image_shape: tuple[int, int, int]) -> np.ndarray:
    """Read an image file, convert to the channel count and resize to (H, W) -> uint8 [H, W, C].

    The same size guard as a served query (:func:`decode_image`'s default limits): a decompression
    bomb is refused from its header, never decoded.

    Raises:
        ArtifactError: the file cannot be read, is not an image, or is beyond the size limits.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
        return decode_image(data, image_shape)
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read it ({exc.__class__.__name__})") from None
    except BadImage:
        raise ArtifactError(f"{path}: not a readable image (empty, truncated or not an image format)") from None
    except ImageTooLarge as exc:
        raise ArtifactError(f"{path}: {exc}") from None


def load_images(paths: Sequence[str | os.PathLike[str]], image_shape: tuple[int, int, int]) -> np.ndarray:
    """Read image files fitted to ``image_shape`` -> uint8 [N, H, W, C] (N may be 0)."""
    if not paths:
        return np.zeros((0, *image_shape), dtype=np.uint8)
    return np.stack([load_image(p, image_shape) for p in paths])
