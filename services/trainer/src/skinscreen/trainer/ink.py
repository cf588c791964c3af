"""Surgical-pen ink: find it on a photo and paint it out.

Many PAD-UFES-20 lesions were circled with a pen before biopsy, and biopsied
lesions are mostly cancers, so ink is a shortcut a model can learn instead of
the lesion. The model-selection report measures how much a model's answers on
inked photos move when the ink is painted out (out of fold).

The pens here are blue to violet: a pixel is ink when its hue lies between 200
and 320 degrees, it is saturated (> 0.25) and not bright (value < 0.85), which
skin, blood and crusts are not.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from scipy.ndimage import binary_dilation, gaussian_filter

INK_HUE_DEGREES: Final = (200.0, 320.0)
INK_MIN_SATURATION: Final = 0.25
INK_MAX_VALUE: Final = 0.85
# A photo is inked when at least this share of its pixels is ink, and at most the upper
# share: a whole photo of violet hue is a lesion or a skin tone, not a pen line.
INKED_SHARE: Final = (0.005, 0.5)
# Pixels next to a line are ink too (its blurred edge), and the fill comes from a wide
# neighbourhood of skin, so that no trace of the line's shape is left.
DILATION_PIXELS: Final = 3
FILL_SIGMA_PIXELS: Final = 12.0


def ink_mask(photo: np.ndarray) -> np.ndarray:
    """bool [S, S]: the pen-ink pixels of a uint8 RGB photo [S, S, 3]."""
    x = photo.astype(np.float32) / 255.0
    red, green, blue = x[..., 0], x[..., 1], x[..., 2]
    value, low = x.max(axis=-1), x.min(axis=-1)
    spread = np.maximum(value - low, 1e-6)
    saturation = (value - low) / np.maximum(value, 1e-6)
    hue = np.where(
        value == red,
        (60.0 * (green - blue) / spread) % 360.0,
        np.where(
            value == green,
            60.0 * (blue - red) / spread + 120.0,
            60.0 * (red - green) / spread + 240.0,
        ),
    )
    return (
        (hue > INK_HUE_DEGREES[0])
        & (hue < INK_HUE_DEGREES[1])
        & (saturation > INK_MIN_SATURATION)
        & (value < INK_MAX_VALUE)
    )


def is_inked(photo: np.ndarray) -> bool:
    share = float(ink_mask(photo).mean())
    return INKED_SHARE[0] <= share <= INKED_SHARE[1]


def paint_out(photo: np.ndarray) -> np.ndarray:
    """The photo with its ink replaced by the surrounding skin (normalised convolution:
    a wide blur of the ink-free pixels, divided by the blur of where they are)."""
    mask = binary_dilation(ink_mask(photo), iterations=DILATION_PIXELS)
    if not mask.any():
        return photo.copy()
    keep = (~mask).astype(np.float32)
    pixels = photo.astype(np.float32)
    weight = np.maximum(gaussian_filter(keep, FILL_SIGMA_PIXELS), 1e-3)
    fill = np.stack(
        [
            gaussian_filter(pixels[..., channel] * keep, FILL_SIGMA_PIXELS) / weight
            for channel in range(3)
        ],
        axis=-1,
    )
    painted = np.where(mask[..., None], fill, pixels)
    return painted.clip(0, 255).round().astype(np.uint8)
