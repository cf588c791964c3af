"""Checks an uploaded photo before anything is stored: format, pixel count, full decode."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Final

from PIL import Image, UnidentifiedImageError
from pillow_heif import register_heif_opener

# HEIC/HEIF is what iPhones send; pillow-heif teaches Pillow to read it.
register_heif_opener()

# Pillow format name -> (media type, file extension in the blob store).
FORMATS: Final[dict[str, tuple[str, str]]] = {
    "JPEG": ("image/jpeg", "jpg"),
    "PNG": ("image/png", "png"),
    "WEBP": ("image/webp", "webp"),
    "HEIF": ("image/heic", "heic"),
}
ALLOWED_DESCRIPTION: Final = "JPEG, PNG, WebP or HEIC/HEIF"


class RejectedImageError(ValueError):
    """An upload that is not a usable photo; `status` is the HTTP status to answer."""

    status = 422


class UnsupportedImageError(RejectedImageError):
    status = 415


class CorruptImageError(RejectedImageError):
    status = 422


class ImageTooLargeError(RejectedImageError):
    status = 413


@dataclass(frozen=True)
class CheckedImage:
    format: str
    extension: str
    width: int
    height: int


def check_image(data: bytes, max_pixels: int) -> CheckedImage:
    """Identify the format and size from the header, refuse bombs, then decode every pixel.

    The full decode is what finds truncated and corrupt files; it happens only
    after the pixel count is known to be within `max_pixels`.
    """
    if not data:
        raise UnsupportedImageError(f"image: the file is empty; allowed: {ALLOWED_DESCRIPTION}")
    try:
        image = Image.open(io.BytesIO(data), formats=list(FORMATS))
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image: too many pixels ({exc}); at most {max_pixels}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UnsupportedImageError(
            f"image: not a recognised image file; allowed: {ALLOWED_DESCRIPTION}"
        ) from exc
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"image: {width}x{height} is {width * height} pixels; at most {max_pixels} allowed"
            )
        try:
            image.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise CorruptImageError(
                f"image: the {image.format} file is truncated or corrupt ({exc}); "
                "send the complete original photo"
            ) from exc
        format_name = image.format or ""
    return CheckedImage(format_name, FORMATS[format_name][1], width, height)
