"""A request's images to model input, within its limits: every encoded image's header is read and
the per-image and per-request pixel limits are checked before a single pixel is decoded.

Decoding is what a request's CPU goes on. Measured on this project's 2-core reference machine
(Pillow 13, one thread), decoding, converting and resizing an image to the artifact's input costs
about 2-5 ms per megapixel for grey PNG and JPEG, 10-11 ms for RGB(A) PNG and CMYK JPEG, and up to
14 ms for lossless RGBA WebP, the slowest format found. Such images compress to almost nothing (a
flat 4096x4096 WebP is under 1 kB), so the body-size limit does not bound that cost: 64 images at
the 4096-px limit took about 4.4 s of CPU in one ~1 MB request. The per-request budget,
:attr:`~upgrader.serving.config.ServingConfig.max_request_pixels` (default 64 Mpx), bounds the
largest accepted request to about 64 x 14 ms = 0.9 s of CPU whatever the format.

Arrays already at the artifact's shape (the Python API) need no decoding and are not counted.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np

from upgrader.core.errors import InvalidRequest
from upgrader.runtime.images import BadImage, ImageTooLarge, decode_image
from upgrader.serving.config import ServingConfig

class PixelBudgetExceeded(ImageTooLarge):
    """The images of one request declare more pixels in all than the per-request budget.

    Attributes:
        total: pixels the request's images declare (width x height, summed).
        limit: the budget (``max_request_pixels``).
    """

    def __init__(self, total: int, limit: int, images: int) -> None:
        super().__init__(
            f"the request's {images} images hold {total:,} pixels in all; the limit is {limit:,} pixels "
            "per request — send fewer or smaller images", subject="max_request_pixels")
        self.total = total
        self.limit = limit


def image_size(data: bytes, *, max_side: int, max_pixels: int) -> tuple[int, int]:
    """(width, height) an encoded image declares, read from its header alone (nothing is decoded).

    Raises:
        BadImage: empty, or not an image format Pillow reads.
        ImageTooLarge: a side over ``max_side``, more than ``max_pixels``, or a header Pillow itself
            flags as a decompression bomb.
    """
    from PIL import Image

    if not data:
        raise BadImage("empty image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:  # lazy: reads the header, not the pixels
                width, height = im.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLarge(f"image declares more than {max_pixels:,} pixels (a decompression bomb?); "
                            "resize it first") from None
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ValueError) for bad input
        raise BadImage(f"not a decodable image ({exc.__class__.__name__}: {str(exc)[:120]})") from None
    if width > max_side or height > max_side or width * height > max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height}; the limit is {max_side} px per side and {max_pixels:,} pixels — resize it first"
        )
    return width, height


def decode_files(files: Sequence[bytes], image_shape: tuple[int, int, int], config: ServingConfig) -> np.ndarray:
    """Encoded image files -> uint8 ``[N, H, W, C]`` of ``image_shape``, refusing over-limit requests first.

    Every header is checked (per-image limits, then the request's total against
    ``config.max_request_pixels``) before any image is decoded, so a refused request costs only
    the header reads.

    Raises:
        BadImage / ImageTooLarge: naming the image's position. PixelBudgetExceeded: over budget.
    """
    total = 0
    for i, data in enumerate(files):
        try:
            width, height = image_size(data, max_side=config.max_side, max_pixels=config.max_pixels)
        except InvalidRequest as exc:
            raise type(exc)(f"image {i}: {exc}") from None
        total += width * height
    if total > config.max_request_pixels:
        raise PixelBudgetExceeded(total, config.max_request_pixels, len(files))
    out = np.empty((len(files), *image_shape), dtype=np.uint8)
    for i, data in enumerate(files):
        try:
            out[i] = decode_image(data, image_shape, max_side=config.max_side, max_pixels=config.max_pixels)
        except InvalidRequest as exc:
            raise type(exc)(f"image {i}: {exc}") from None
    return out


def prepare_images(images: np.ndarray | Sequence[bytes], image_shape: tuple[int, int, int], generation: str,
                   config: ServingConfig) -> np.ndarray:
    """A request's images as uint8 ``[N, H, W, C]`` of the artifact's ``image_shape``, within the limits.

    Args:
        images: uint8 NHWC already at ``image_shape`` (grey may omit C), or encoded image files.
        image_shape: (H, W, C) the serving artifact takes.
        generation: its name, for the message when an array has another shape.
        config: the limits.

    Raises:
        InvalidRequest: no images, too many, a wrong array, or (BadImage, ImageTooLarge,
        PixelBudgetExceeded) files that cannot be decoded within the limits.
    """
    if isinstance(images, np.ndarray):
        arr = images
        if arr.dtype != np.uint8:
            raise InvalidRequest(f"images must be uint8 0..255, got {arr.dtype}")
        if arr.ndim == 3 and image_shape[2] == 1:
            arr = arr[..., None]
        if arr.ndim != 4 or tuple(arr.shape[1:]) != image_shape:
            raise InvalidRequest(
                f"images have shape {tuple(images.shape)}; generation {generation} takes "
                f"(N, {', '.join(map(str, image_shape))}) — or pass encoded image files to have them resized"
            )
        n = arr.shape[0]
    else:
        files = list(images)
        if any(not isinstance(f, (bytes, bytearray, memoryview)) for f in files):
            raise InvalidRequest("images must be a uint8 array or a list of encoded image files (bytes)")
        n = len(files)
    if n == 0:
        raise InvalidRequest("no images given")
    if n > config.max_images:
        raise InvalidRequest(f"{n} images in one request; the limit is {config.max_images}")
    if isinstance(images, np.ndarray):
        return np.ascontiguousarray(arr)
    return decode_files([bytes(f) for f in files], image_shape, config)


__all__ = ["PixelBudgetExceeded", "decode_files", "image_size", "prepare_images"]
