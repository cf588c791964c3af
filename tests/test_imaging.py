"""The contract's preprocessing, done with fewer copies, gives the very same pixels."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from skinscreen.core.imaging import (
    ORIENTATIONS,
    preprocess,
    reference_preprocess,
)
from tests.conftest import PAD_UFES


def _photo(width: int, height: int, mode: str, orientation: int) -> Image.Image:
    """A random photo of that shape and mode, saved and read back with the EXIF orientation."""
    pixels = np.random.default_rng(width * height + orientation).integers(
        0, 256, (height, width, 4), dtype=np.uint8
    )
    image = Image.fromarray(pixels) if mode == "RGBA" else Image.fromarray(pixels[..., :3])
    image = image.convert(mode)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "PNG", exif=exif.tobytes())
    return Image.open(io.BytesIO(buffer.getvalue()))


@pytest.mark.parametrize("orientation", [1, *ORIENTATIONS])
@pytest.mark.parametrize("shape", [(37, 24), (24, 37), (25, 25), (300, 41)])
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_preprocess_is_the_contracts_steps_exactly(
    orientation: int, shape: tuple[int, int], mode: str
) -> None:
    with (
        _photo(*shape, mode, orientation) as expected_input,
        _photo(*shape, mode, orientation) as image,
    ):
        expected = reference_preprocess(expected_input, 16)
        np.testing.assert_array_equal(preprocess(image, 16), expected)


@pytest.mark.data
def test_preprocess_is_the_contracts_steps_on_real_photos() -> None:
    for path in sorted((PAD_UFES / "images").glob("*.jpg"))[:40]:
        with Image.open(path) as first, Image.open(path) as second:
            np.testing.assert_array_equal(preprocess(first), reference_preprocess(second))
