"""Checks an uploaded photo before anything is stored: format, size, structure, a bounded decode.

The inference worker decodes each photo in full once; the gateway proves it is a complete,
readable image of an allowed format and size without decoding it again:

- JPEG: every segment is walked to the end-of-image marker (a file cut short has none, so a
  truncated upload is refused here), and the first JPEG_PREFIX_BYTES of the coded data are
  decoded at 1/8 scale (the tables and the first blocks decode); never the whole photo.
- PNG: every chunk's CRC is checked up to IEND, and the compressed pixel stream is inflated
  for its first PNG_PREFIX_BYTES of scanlines (all of them when fewer), a megabyte at a
  time, counted, never kept; a stream that ends before the scanlines the header announces
  is refused.
- WebP and HEIF have no such shortcut: they are decoded in full when that fits in half the
  process's decode memory budget, and otherwise checked by their header alone.

A photo whose coded data is damaged past what the gateway decodes reaches the worker, which
fails its screening with the reason (the clinician sees `failed` and why). Each decode holds
its share of the budget (`skinscreen.core.memory.DecodeBudget`); a request that cannot get
it within DECODE_WAIT_S is answered 503 with Retry-After.
"""

from __future__ import annotations

import functools
import io
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Final

from PIL import Image, ImageFile, UnidentifiedImageError
from pillow_heif import register_heif_opener

from skinscreen.core.imaging import decode_cost
from skinscreen.core.memory import MIB, DecodeBudget, DecodeBudgetTimeoutError, tune_malloc

from .settings import get_settings

# HEIC/HEIF is what iPhones send; pillow-heif teaches Pillow to read it.
register_heif_opener()
# Freed decode buffers go back to the system (see skinscreen.core.memory).
tune_malloc()

# Pillow format name -> (media type, file extension in the blob store).
FORMATS: Final[dict[str, tuple[str, str]]] = {
    "JPEG": ("image/jpeg", "jpg"),
    "PNG": ("image/png", "png"),
    "WEBP": ("image/webp", "webp"),
    "HEIF": ("image/heic", "heic"),
}
ALLOWED_DESCRIPTION: Final = "JPEG, PNG, WebP or HEIC/HEIF"

# Bytes a check of a JPEG holds per pixel of the photo: its 1/8-scale decode (4 bytes per
# pixel of 1/64 of them) and, for a progressive JPEG, libjpeg's coefficients for the whole
# photo (2 bytes per coefficient, 1.5 coefficients per pixel in 4:2:0) at any scale.
JPEG_DRAFT_BYTES_PER_PIXEL: Final = 4 / 64
PROGRESSIVE_JPEG_BYTES_PER_PIXEL: Final = 3
PNG_INFLATE_STEP: Final = MIB
# Coded bytes of a JPEG the check decodes (at 1/8 scale), and bytes of scanlines a PNG's is
# inflated to: a bounded cost per upload, whatever the photo's size; the worker decodes it all.
JPEG_PREFIX_BYTES: Final = 16 * 1024
PNG_PREFIX_BYTES: Final = 4 * MIB


class RejectedImageError(ValueError):
    """An upload that is not a usable photo; `status` is the HTTP status to answer."""

    status = 422
    headers: dict[str, str] | None = None


class UnsupportedImageError(RejectedImageError):
    status = 415


class CorruptImageError(RejectedImageError):
    status = 422


class ImageTooSmallError(RejectedImageError):
    status = 422


class ImageTooLargeError(RejectedImageError):
    status = 413


class DecoderBusyError(RejectedImageError):
    """Not the photo's fault: the gateway's decode memory is taken; try again shortly."""

    status = 503

    def __init__(self, exc: DecodeBudgetTimeoutError) -> None:
        super().__init__(f"image: the gateway is busy checking other photos ({exc}); try again")
        self.headers = {"Retry-After": str(exc.retry_after_s)}


@dataclass(frozen=True)
class CheckedImage:
    format: str
    extension: str
    width: int
    height: int


@functools.cache
def decode_budget(budget_mb: int) -> DecodeBudget:
    """This process's one budget (one per size, so a test's settings get their own)."""
    return DecodeBudget(budget_mb * MIB)


def check_image(
    data: bytes,
    max_pixels: int,
    min_side: int | None = None,
    budget: DecodeBudget | None = None,
    wait_s: float | None = None,
) -> CheckedImage:
    """Identify the format and size from the header, refuse bombs and thumbnails, then check
    that the pixel data is complete and decodes, holding as little of it as the format allows.

    `min_side`, `budget` and `wait_s` default to the gateway's settings (MIN_IMAGE_SIDE,
    DECODE_MEMORY_BUDGET_MB, DECODE_WAIT_S).
    """
    if min_side is None or budget is None or wait_s is None:
        settings = get_settings()
        min_side = settings.MIN_IMAGE_SIDE if min_side is None else min_side
        budget = decode_budget(settings.DECODE_MEMORY_BUDGET_MB) if budget is None else budget
        wait_s = settings.DECODE_WAIT_S if wait_s is None else wait_s
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
        if min(width, height) < min_side:
            raise ImageTooSmallError(
                f"image: {width}x{height} is too small; its shorter side must be at least "
                f"{min_side} pixels (MIN_IMAGE_SIDE): send the original photo, not a thumbnail"
            )
        format_name = image.format or ""
        try:
            _check_pixels(image, data, budget, wait_s)
        except DecodeBudgetTimeoutError as exc:
            raise DecoderBusyError(exc) from exc
        except (OSError, SyntaxError, ValueError, zlib.error, Image.DecompressionBombError) as exc:
            raise CorruptImageError(
                f"image: the {format_name} file is truncated or corrupt ({exc}); "
                "send the complete original photo"
            ) from exc
    return CheckedImage(format_name, FORMATS[format_name][1], width, height)


def _check_pixels(image: Image.Image, data: bytes, budget: DecodeBudget, wait_s: float) -> None:
    width, height = image.size
    if image.format == "PNG":
        _inflate_png(data, PNG_PREFIX_BYTES)
        return
    if image.format == "JPEG":
        assert isinstance(image, ImageFile.ImageFile)
        _walk_jpeg(data)
        image.draft(None, (1, 1))  # the smallest scale libjpeg offers: 1/8
        per_pixel = JPEG_DRAFT_BYTES_PER_PIXEL
        if image.info.get("progressive"):
            per_pixel += PROGRESSIVE_JPEG_BYTES_PER_PIXEL
        with budget.hold(math.ceil(per_pixel * width * height), wait_s):
            _decode_prefix(image, data, JPEG_PREFIX_BYTES)
        return
    cost = decode_cost(image.format, width, height)
    if cost > budget.budget // 2:
        return  # read by its header only; see the module's docstring
    with budget.hold(cost, wait_s):
        image.load()


# Markers without a length: TEM and the restart markers.
_STANDALONE: Final = frozenset({0x01, *range(0xD0, 0xD8)})
_SOF: Final = frozenset({*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC),
                         *range(0xCD, 0xD0)})  # fmt: skip


def _walk_jpeg(data: bytes) -> None:
    """Every segment, from the start-of-image marker to the end-of-image marker after the
    last scan: SyntaxError for a file cut short or a segment that runs past it."""
    if not data.startswith(b"\xff\xd8"):
        raise SyntaxError("no start-of-image marker")
    truncated = "image file is truncated: no end-of-image marker; the coded data ends early"
    position = 2
    frame = scans = 0
    while True:
        if position >= len(data):
            raise SyntaxError(truncated)
        if data[position] != 0xFF:
            raise SyntaxError(f"expected a marker at byte {position}")
        while position < len(data) and data[position] == 0xFF:
            position += 1  # fill bytes
        if position >= len(data):
            continue
        marker = data[position]
        position += 1
        if marker == 0xD9:
            if not frame or not scans:
                raise SyntaxError("the end-of-image marker comes before any coded data")
            return
        if marker in _STANDALONE:
            continue
        if position + 2 > len(data):
            raise SyntaxError(truncated)
        length = int.from_bytes(data[position : position + 2], "big")
        if length < 2 or position + length > len(data):
            raise SyntaxError(
                f"image file is truncated: a segment of {length} bytes runs past the file"
            )
        position += length
        frame += marker in _SOF
        if marker == 0xDA:
            scans += 1
            position = entropy_end(data, position)


def entropy_end(data: bytes, position: int) -> int:
    """Where the coded data starting at `position` ends: at the next marker that is not a
    stuffed 0xFF00 or a restart marker (the file's length if none follows). The photo check
    and the metadata stripping (metadata.py) both walk a JPEG's segments with it."""
    while True:
        position = data.find(b"\xff", position)
        if position < 0 or position + 1 >= len(data):
            return len(data)
        following = data[position + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7:
            position += 2
        elif following == 0xFF:
            position += 1  # a fill byte before a marker
        else:
            return position


def _decode_prefix(image: ImageFile.ImageFile, data: bytes, limit: int) -> None:
    """Run the image's decoder over its first `limit` coded bytes (all of them when fewer),
    as `ImageFile.load` does, into an image of the (drafted) size: OSError if it fails."""
    (tile,) = image.tile
    decoder = Image._getdecoder(image.mode, tile.codec_name, tile.args, image.decoderconfig)
    try:
        decoder.setimage(Image.core.new(image.mode, image.size), tile.extents)
        position = tile.offset
        end = min(len(data), position + limit)
        error = 0
        while position < end:
            consumed, error = decoder.decode(data[position:end])
            if consumed < 0:
                break  # finished, or failed (error < 0)
            if consumed == 0:
                break  # wants more than the prefix holds
            position += consumed
        if error < 0:
            raise ImageFile._get_oserror(error, encoder=False)
    finally:
        decoder.cleanup()


# PNG colour type -> samples per pixel.
_PNG_CHANNELS: Final = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# Adam7 interlacing: each pass's first column and row and its steps.
_ADAM7: Final = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4),
                 (1, 0, 2, 2), (0, 1, 1, 2))  # fmt: skip


def _png_raw_size(header: bytes) -> int:
    """Bytes of filtered scanlines the IHDR announces: what the pixel stream must inflate to."""
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header[:13])
    if colour not in _PNG_CHANNELS:
        raise SyntaxError(f"unknown PNG colour type {colour}")
    bits = _PNG_CHANNELS[colour] * depth

    def scanlines(columns: int, rows: int) -> int:
        return 0 if columns <= 0 or rows <= 0 else rows * (1 + (columns * bits + 7) // 8)

    if not interlace:
        return scanlines(width, height)
    return sum(
        scanlines((width - x + dx - 1) // dx, (height - y + dy - 1) // dy)
        for x, y, dx, dy in _ADAM7
    )


def _inflate_png(data: bytes, limit: int) -> None:
    """Walk the chunks to IEND (checking each CRC, as Pillow does) and inflate the pixel
    stream a megabyte at a time, counting, until it gave `limit` bytes of scanlines:
    SyntaxError when the file ends early, or the stream ends before the scanlines the header
    announces."""
    view = memoryview(data)  # chunks are read in place, not copied
    position = 8
    expected: int | None = None
    wanted = 0
    produced = 0
    ended = False
    inflater = zlib.decompressobj()
    while True:
        head = data[position : position + 8]
        if len(head) < 8:
            break
        length, kind = struct.unpack(">I4s", head)
        body = view[position + 8 : position + 8 + length]
        crc = data[position + 8 + length : position + 12 + length]
        if len(body) < length or len(crc) < 4:
            break
        if zlib.crc32(body, zlib.crc32(kind)) != int.from_bytes(crc, "big"):
            raise SyntaxError(f"broken PNG file: bad CRC in the {kind!r} chunk")
        if kind == b"IHDR":
            expected = _png_raw_size(bytes(body))
            wanted = min(expected, limit)
        elif kind == b"IDAT" and expected is not None:
            chunk: bytes | memoryview = body
            while chunk and produced < wanted:
                produced += len(inflater.decompress(chunk, PNG_INFLATE_STEP))
                chunk = inflater.unconsumed_tail
        elif kind == b"IEND":
            ended = True
            break
        position += 12 + length
    if not ended:
        raise SyntaxError("image file is truncated: no IEND chunk; the file ends early")
    if expected is None or produced < wanted or (inflater.eof and produced < expected):
        raise SyntaxError(
            f"image file is truncated: {produced} of {expected} bytes of scanlines; "
            "the pixel data ends early"
        )
