"""Image preprocessing before the model, shared by trainer and gateway.

The model contract fixes it exactly: apply EXIF orientation, convert to RGB,
crop the centred square, resize it to S x S with antialiasing. Normalisation
happens inside the ONNX graph, so this returns raw uint8 pixels.

`preprocess` gives exactly that output while holding as few full-size copies
of a photo as it can: it crops before it transposes or converts (both move
pixels one for one, so the order does not change a value), and copies nothing
that is already as wanted. A 49-megapixel PNG held 15 bytes per pixel through
`exif_transpose`, `convert` and `crop` in turn; now the decoded photo and one
square (3 + 3 bytes per pixel at most, see `DECODE_BYTES_PER_PIXEL`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import numpy as np
from PIL import ExifTags, Image, ImageOps

DEFAULT_IMAGE_SIZE: Final = 224

# Pillow's bicubic filter antialiases when it downsizes (its support grows with
# the scale factor), unlike a plain tensor interpolation.
RESAMPLE: Final = Image.Resampling.BICUBIC

# EXIF orientation -> the transposition that shows the photo upright (as ImageOps.exif_transpose).
ORIENTATIONS: Final = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Which axes of the stored photo (x, y) a transposition runs backwards: the centred square of
# the upright photo starts, on a reversed axis of odd excess, one pixel later in the stored one.
_REVERSED: Final = {
    Image.Transpose.FLIP_LEFT_RIGHT: (True, False),
    Image.Transpose.ROTATE_180: (True, True),
    Image.Transpose.FLIP_TOP_BOTTOM: (False, True),
    Image.Transpose.TRANSPOSE: (False, False),
    Image.Transpose.ROTATE_270: (False, True),
    Image.Transpose.TRANSVERSE: (True, True),
    Image.Transpose.ROTATE_90: (True, False),
}

# Peak memory of decoding a photo and `preprocess`ing it, per pixel: the decoded photo (up to
# 4 bytes per pixel: RGBA, CMYK) and its square, cropped, then transposed or converted (one
# full-size copy at a time). Measured: a 7000 x 7000 RGB PNG or JPEG 4 bytes per pixel, a
# non-square one up to 7; libwebp holds 15 per pixel while it decodes, libheif 7.
# skinscreen.core.memory.DecodeBudget charges each decode this much.
DECODE_BYTES_PER_PIXEL: Final = 9
DECODE_BYTES_PER_PIXEL_BY_FORMAT: Final = {"WEBP": 16}


def decode_cost(format_name: str | None, width: int, height: int) -> int:
    """Bytes that decoding and preprocessing a photo of this format and size holds at its peak."""
    per_pixel = DECODE_BYTES_PER_PIXEL_BY_FORMAT.get(format_name or "", DECODE_BYTES_PER_PIXEL)
    return per_pixel * width * height


def center_square(image: Image.Image) -> Image.Image:
    """Crop the largest centred square."""
    width, height = image.size
    side = min(width, height)
    left = (width - side) // 2
    top = (height - side) // 2
    return image.crop((left, top, left + side, top + side))


def orientation(image: Image.Image) -> Image.Transpose | None:
    """The transposition its EXIF orientation asks for, read as ImageOps.exif_transpose does."""
    image.load()
    return ORIENTATIONS.get(image.getexif().get(ExifTags.Base.Orientation, 1))


def _upright_square_box(
    size: tuple[int, int], method: Image.Transpose | None
) -> tuple[int, int, int, int]:
    """The box, in the stored photo, that becomes the upright photo's centred square."""
    width, height = size
    side = min(width, height)
    reversed_x, reversed_y = (False, False) if method is None else _REVERSED[method]
    # The upright photo's crop offset is floor(excess / 2); along an axis it runs backwards,
    # that square starts ceil(excess / 2) from the stored photo's start.
    left = (width - side + reversed_x) // 2
    top = (height - side + reversed_y) // 2
    return (left, top, left + side, top + side)


def preprocess(image: Image.Image, size: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """Turn a decoded photo into the uint8 [size, size, 3] RGB array the model takes.

    The same array as `ImageOps.exif_transpose`, `convert("RGB")`, `center_square` and a
    bicubic resize in that order (tests/test_imaging.py pins it, every orientation).
    """
    method = orientation(image)
    box = _upright_square_box(image.size, method)
    square = image if box == (0, 0, *image.size) else image.crop(box)
    if method is not None:
        square = square.transpose(method)
    if square.mode != "RGB":
        square = square.convert("RGB")
    resized = square.resize((size, size), RESAMPLE, reducing_gap=None)
    return np.asarray(resized, dtype=np.uint8)


def reference_preprocess(image: Image.Image, size: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """The contract's steps written out one after another: what `preprocess` must equal."""
    oriented = ImageOps.exif_transpose(image)
    square = center_square(oriented.convert("RGB"))
    resized = square.resize((size, size), RESAMPLE, reducing_gap=None)
    return np.asarray(resized, dtype=np.uint8)


def load_and_preprocess(path: Path, size: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """Open an image file and preprocess it (see `preprocess`)."""
    with Image.open(path) as image:
        return preprocess(image, size)
