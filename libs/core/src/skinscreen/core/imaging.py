"""Image preprocessing before the model, shared by trainer and gateway.

The model contract fixes it exactly: apply EXIF orientation, convert to RGB,
crop the centred square, resize it to S x S with antialiasing. Normalisation
happens inside the ONNX graph, so this returns raw uint8 pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import numpy as np
from PIL import Image, ImageOps

DEFAULT_IMAGE_SIZE: Final = 224

# Pillow's bicubic filter antialiases when it downsizes (its support grows with
# the scale factor), unlike a plain tensor interpolation.
RESAMPLE: Final = Image.Resampling.BICUBIC


def center_square(image: Image.Image) -> Image.Image:
    """Crop the largest centred square."""
    width, height = image.size
    side = min(width, height)
    left = (width - side) // 2
    top = (height - side) // 2
    return image.crop((left, top, left + side, top + side))


def preprocess(image: Image.Image, size: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """Turn a decoded photo into the uint8 [size, size, 3] RGB array the model takes."""
    oriented = ImageOps.exif_transpose(image)
    square = center_square(oriented.convert("RGB"))
    resized = square.resize((size, size), RESAMPLE, reducing_gap=None)
    return np.asarray(resized, dtype=np.uint8)


def load_and_preprocess(path: Path, size: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """Open an image file and preprocess it (see `preprocess`)."""
    with Image.open(path) as image:
        return preprocess(image, size)
