"""A photo is stored without its metadata: pixels and orientation kept, nothing else.

Phones write where a photo was taken (GPS), the device (make, model, serial numbers),
sometimes the owner's name (Artist, Copyright), comments, editing history (XMP), and
thumbnails of the photo. None of it is needed to screen a lesion, and some of it
identifies the patient or the clinician. Each format is stripped without re-encoding,
so the stored photo decodes to exactly the pixels of the upload:

- JPEG: only the segments that decoding needs are kept (SOF, DHT, DQT, DRI, SOS and
  the coded data, the JFIF APP0 without its thumbnail, the ICC profile (APP2), Adobe's
  APP14, which says how to read the colours); every other APPn (EXIF, XMP, IPTC,
  MPF, ...), every comment (COM) and anything after the end of the image (a phone's
  second pictures) is dropped;
- PNG: only the chunks that say how to draw the pixels are kept (IHDR, PLTE, IDAT,
  IEND, transparency, colour space and ICC profile, physical size, animation); text
  (tEXt, zTXt, iTXt), eXIf, tIME and every private chunk are dropped;
- WebP: only the image chunks (VP8, VP8L, VP8X, ALPH, ANIM, ANMF) and the ICC profile
  are kept; EXIF, XMP and unknown chunks are dropped;
- HEIC/HEIF: the container is kept byte for byte except the EXIF and XMP items, which
  are overwritten where they lie (an empty EXIF block, spaces for XMP), so no offset
  moves and nothing is decoded or encoded again. HEIF orientation is not EXIF's:
  it is in the image's own `irot`/`imir` properties, which are kept.

EXIF orientation is kept where it is the format's way of saying which side is up
(JPEG, PNG, WebP): a minimal EXIF block holding only the Orientation tag replaces the
original, so the photo is shown, and preprocessed, as it was taken.

The ICC profile is kept: it says what the pixel values mean as colours (a Display P3
photo read as sRGB looks wrong to a clinician), and it describes a colour space,
not a person; it is the same for every phone of a kind.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from PIL import ExifTags, Image

from .images import CorruptImageError, entropy_end


class MetadataError(ValueError):
    """The file's structure could not be walked, so its metadata cannot be removed."""


@dataclass(frozen=True)
class Stripped:
    data: bytes
    # The EXIF orientation kept (2 to 8), or None when upright or not said.
    orientation: int | None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def stored_photo(data: bytes, format_name: str) -> Stripped:
    """What the blob store keeps of a checked upload: `strip_metadata`, or 422 (a
    CorruptImageError) for a file whose structure cannot be walked."""
    try:
        return strip_metadata(data, format_name)
    except MetadataError as exc:
        raise CorruptImageError(
            f"image: the {format_name} file's structure cannot be read ({exc}), so its metadata "
            "cannot be removed before it is stored; send the original photo"
        ) from exc


def strip_metadata(data: bytes, format_name: str) -> Stripped:
    """The photo without metadata, in the same format (Pillow's format name)."""
    if format_name == "HEIF":
        return Stripped(strip_heif(data), None)
    orientation = _orientation(data, format_name)
    if format_name == "JPEG":
        return Stripped(strip_jpeg(data, orientation), orientation)
    if format_name == "PNG":
        return Stripped(strip_png(data, orientation), orientation)
    if format_name == "WEBP":
        return Stripped(strip_webp(data, orientation), orientation)
    raise MetadataError(f"no metadata stripping for {format_name} files")


def _orientation(data: bytes, format_name: str) -> int | None:
    """The EXIF orientation Pillow (and so the model's preprocessing) reads, if not upright.

    Never decodes the pixels: on a PNG, Pillow's getexif() loads the whole image to look
    for an eXIf chunk after the image data (gigabytes for a 7000 x 7000 photo, outside the
    decode budget), so the chunk is found here and read as Pillow's PNG plugin reads it.
    """
    try:
        if format_name == "PNG":
            body = next((body for kind, body, _ in _png_chunks(data) if kind == b"eXIf"), None)
            if body is None:
                return None
            exif = Image.Exif()
            exif.load(b"Exif\x00\x00" + body)
            value = exif.get(ExifTags.Base.Orientation)
        else:
            with Image.open(io.BytesIO(data)) as image:
                value = image.getexif().get(ExifTags.Base.Orientation)
    except Exception:  # an unreadable EXIF block is not an orientation
        return None
    return value if isinstance(value, int) and 2 <= value <= 8 else None


def minimal_exif(orientation: int) -> bytes:
    """A TIFF-structured EXIF block holding only the Orientation tag (no "Exif" prefix)."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    return exif.tobytes().removeprefix(b"Exif\x00\x00")


# --- JPEG ------------------------------------------------------------------------------------

SOI: Final = b"\xff\xd8"
EOI: Final = b"\xff\xd9"
SOS: Final = 0xDA
APP0: Final = 0xE0
APP1: Final = 0xE1
APP2: Final = 0xE2
APP14: Final = 0xEE
COM: Final = 0xFE
# Markers without a length: TEM and the restart markers.
STANDALONE: Final = frozenset({0x01, *range(0xD0, 0xD8)})


def _jpeg_segment(marker: int, payload: bytes) -> bytes:
    if len(payload) + 2 > 0xFFFF:
        raise MetadataError("a JPEG segment over 65535 bytes")
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _kept_jpeg_segment(marker: int, payload: bytes) -> bytes | None:
    """The segment as stored, or None to drop it."""
    if marker == APP0:
        if not payload.startswith(b"JFIF\x00") or len(payload) < 14:
            return None  # JFXX (a thumbnail) or unknown
        # Version, units and density; the thumbnail (its size and its pixels) goes.
        return _jpeg_segment(marker, payload[:12] + b"\x00\x00")
    if marker == APP2:
        return _jpeg_segment(marker, payload) if payload.startswith(b"ICC_PROFILE\x00") else None
    if marker == APP14:
        return _jpeg_segment(marker, payload) if payload.startswith(b"Adobe") else None
    if 0xE0 <= marker <= 0xEF or marker == COM:
        return None
    return _jpeg_segment(marker, payload)


def strip_jpeg(data: bytes, orientation: int | None = None) -> bytes:
    """The JPEG's decoding segments and coded data, as they were; see the module's docstring."""
    if not data.startswith(SOI):
        raise MetadataError("not a JPEG file: no start-of-image marker")
    out = [SOI]
    orientation_segment = (
        None
        if orientation is None
        else _jpeg_segment(APP1, b"Exif\x00\x00" + minimal_exif(orientation))
    )
    position = 2
    while position < len(data):
        if data[position] != 0xFF:
            raise MetadataError(f"JPEG: expected a marker at byte {position}")
        while position < len(data) and data[position] == 0xFF:
            position += 1  # a marker may be preceded by fill bytes
        if position >= len(data):
            break
        marker = data[position]
        position += 1
        if marker == 0xD9:
            break  # end of image: anything after it (a second picture, a trailer) goes
        if marker in STANDALONE:
            out.append(bytes([0xFF, marker]))
            continue
        if position + 2 > len(data):
            raise MetadataError("JPEG: a segment's length is cut off")
        (length,) = struct.unpack(">H", data[position : position + 2])
        if length < 2 or position + length > len(data):
            raise MetadataError(f"JPEG: a segment's length ({length}) runs past the file")
        payload = data[position + 2 : position + length]
        position += length
        if orientation_segment is not None and marker != APP0:
            # Right after SOI, or after JFIF's APP0, where readers look for EXIF.
            out.append(orientation_segment)
            orientation_segment = None
        kept = _kept_jpeg_segment(marker, payload)
        if kept is not None:
            out.append(kept)
        if marker == SOS:
            end = entropy_end(data, position)
            out.append(data[position:end])
            position = end
    out.append(EOI)
    return b"".join(out)


# --- PNG -------------------------------------------------------------------------------------

PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
# The chunks that say how to draw the pixels (PNG 3rd edition), and APNG's.
PNG_KEPT: Final = frozenset(
    {
        b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"cHRM", b"gAMA", b"iCCP", b"sBIT",
        b"sRGB", b"cICP", b"mDCV", b"cLLI", b"bKGD", b"hIST", b"pHYs", b"sPLT",
        b"acTL", b"fcTL", b"fdAT",
    }
)  # fmt: skip


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + body))
    return struct.pack(">I", len(body)) + kind + body + crc


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes, bytes]]:
    """(kind, body, the chunk's bytes) of each chunk up to IEND."""
    if not data.startswith(PNG_SIGNATURE):
        raise MetadataError("not a PNG file: no signature")
    position = len(PNG_SIGNATURE)
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        end = position + 12 + length
        if end > len(data):
            raise MetadataError(f"PNG: the {kind!r} chunk runs past the file")
        yield kind, data[position + 8 : position + 8 + length], data[position:end]
        position = end
        if kind == b"IEND":
            return
    raise MetadataError("PNG: no IEND chunk")


def strip_png(data: bytes, orientation: int | None = None) -> bytes:
    """The PNG's drawing chunks, as they were; see the module's docstring."""
    out = [PNG_SIGNATURE]
    pending = None if orientation is None else _png_chunk(b"eXIf", minimal_exif(orientation))
    for kind, _, chunk in _png_chunks(data):
        if pending is not None and kind in (b"IDAT", b"acTL", b"fcTL", b"IEND"):
            out.append(pending)  # eXIf goes before the image data
            pending = None
        if kind in PNG_KEPT:
            out.append(chunk)
    return b"".join(out)


# --- WebP ------------------------------------------------------------------------------------

WEBP_KEPT: Final = frozenset({b"VP8 ", b"VP8L", b"VP8X", b"ALPH", b"ANIM", b"ANMF", b"ICCP"})
VP8X_EXIF: Final = 0x08
VP8X_XMP: Final = 0x04


def _riff_chunk(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("<I", len(body)) + body + (b"\x00" if len(body) % 2 else b"")


def strip_webp(data: bytes, orientation: int | None = None) -> bytes:
    """The WebP's image chunks and ICC profile; see the module's docstring."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise MetadataError("not a WebP file: no RIFF/WEBP header")
    (riff_size,) = struct.unpack("<I", data[4:8])
    end = min(len(data), 8 + riff_size)
    chunks: list[bytes] = []
    extended = False
    position = 12
    while position + 8 <= end:
        kind = data[position : position + 4]
        (size,) = struct.unpack("<I", data[position + 4 : position + 8])
        body = data[position + 8 : position + 8 + size]
        if len(body) < size:
            raise MetadataError(f"WebP: the {kind!r} chunk runs past the file")
        position += 8 + size + (size % 2)
        if kind not in WEBP_KEPT:
            continue
        if kind == b"VP8X":
            if size < 10:
                raise MetadataError("WebP: a VP8X chunk shorter than 10 bytes")
            extended = True
            flags = body[0] & ~(VP8X_EXIF | VP8X_XMP)
            if orientation is not None:
                flags |= VP8X_EXIF
            body = bytes([flags]) + body[1:]
        chunks.append(_riff_chunk(kind, body))
    if extended and orientation is not None:
        chunks.append(_riff_chunk(b"EXIF", minimal_exif(orientation)))
    payload = b"WEBP" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(payload)) + payload


# --- HEIF (ISO base media file format) -------------------------------------------------------

# An EXIF item's payload: a 4-byte offset to the TIFF header (0), then an empty big-endian
# TIFF directory: readers find a valid EXIF block with no tags.
EMPTY_HEIF_EXIF: Final = (
    b"\x00\x00\x00\x00" + b"MM\x00*\x00\x00\x00\x08" + b"\x00\x00" + b"\x00" * 4
)


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, start of the body, end) of each box between `start` and `end`."""
    position = start
    while position + 8 <= end:
        size, kind = struct.unpack(">I4s", data[position : position + 8])
        body = position + 8
        if size == 1:
            if body + 8 > end:
                raise MetadataError("HEIF: a box's 64-bit size is cut off")
            (size,) = struct.unpack(">Q", data[body : body + 8])
            body += 8
        elif size == 0:
            size = end - position
        if size < body - position or position + size > end:
            raise MetadataError(f"HEIF: the {kind!r} box runs past its container")
        yield kind, body, position + size
        position += size


def _read_uint(data: bytes, position: int, size: int) -> tuple[int, int]:
    if size == 0:
        return 0, position
    if position + size > len(data):
        raise MetadataError("HEIF: a field runs past its box")
    return int.from_bytes(data[position : position + size], "big"), position + size


def _metadata_items(data: bytes, start: int, end: int) -> dict[int, bytes]:
    """item id -> what to write over it, for each EXIF and XMP item that `iinf` lists."""
    version = data[start]
    position = start + 4
    _, position = _read_uint(data, position, 2 if version == 0 else 4)
    items: dict[int, bytes] = {}
    for kind, body, box_end in _boxes(data, position, end):
        if kind != b"infe":
            continue
        infe_version = data[body]
        if infe_version < 2:
            continue  # no item type before version 2
        position = body + 4
        item_id, position = _read_uint(data, position, 2 if infe_version == 2 else 4)
        position += 2  # protection index
        item_type = data[position : position + 4]
        position += 4
        if item_type == b"Exif":
            items[item_id] = EMPTY_HEIF_EXIF
        elif item_type == b"mime":
            name_end = data.index(b"\x00", position, box_end)
            content_end = data.find(b"\x00", name_end + 1, box_end)
            content_type = data[name_end + 1 : content_end if content_end >= 0 else box_end]
            if content_type.strip().lower() == b"application/rdf+xml":
                items[item_id] = b" "  # XMP: spaces throughout
    return items


def _item_extents(data: bytes, start: int, end: int) -> dict[int, list[tuple[int, int, int]]]:
    """item id -> (construction method, offset, length) of each of its extents (`iloc`)."""
    version = data[start]
    position = start + 4
    sizes = data[position : position + 2]
    position += 2
    offset_size, length_size = sizes[0] >> 4, sizes[0] & 0x0F
    base_offset_size, index_size = sizes[1] >> 4, (sizes[1] & 0x0F if version in (1, 2) else 0)
    count, position = _read_uint(data, position, 2 if version < 2 else 4)
    extents: dict[int, list[tuple[int, int, int]]] = {}
    for _ in range(count):
        item_id, position = _read_uint(data, position, 2 if version < 2 else 4)
        method = 0
        if version in (1, 2):
            field, position = _read_uint(data, position, 2)
            method = field & 0x0F
        position += 2  # data reference index
        base, position = _read_uint(data, position, base_offset_size)
        extent_count, position = _read_uint(data, position, 2)
        for _ in range(extent_count):
            _, position = _read_uint(data, position, index_size)
            offset, position = _read_uint(data, position, offset_size)
            length, position = _read_uint(data, position, length_size)
            extents.setdefault(item_id, []).append((method, base + offset, length))
        if position > end:
            raise MetadataError("HEIF: the iloc box is cut off")
    return extents


def strip_heif(data: bytes) -> bytes:
    """The HEIF file with its EXIF and XMP items overwritten in place; see the docstring."""
    meta = next(((body, box_end) for kind, body, box_end in _boxes(data, 0, len(data))
                 if kind == b"meta"), None)  # fmt: skip
    if meta is None:
        raise MetadataError("HEIF: no meta box")
    children = {kind: (body, box_end) for kind, body, box_end in _boxes(data, meta[0] + 4, meta[1])}
    if b"iinf" not in children or b"iloc" not in children:
        raise MetadataError("HEIF: no item information or location box")
    items = _metadata_items(data, *children[b"iinf"])
    extents = _item_extents(data, *children[b"iloc"])
    out = bytearray(data)
    for item_id, filler in items.items():
        for method, offset, length in extents.get(item_id, []):
            if method == 1 and b"idat" in children:
                offset += children[b"idat"][0]
            elif method != 0:
                raise MetadataError(f"HEIF: item {item_id} is built in a way not supported")
            if offset + length > len(data):
                raise MetadataError(f"HEIF: item {item_id} runs past the file")
            if filler == EMPTY_HEIF_EXIF and length < len(EMPTY_HEIF_EXIF):
                raise MetadataError(f"HEIF: the EXIF item {item_id} is too short")
            block = filler if filler != b" " else b" " * length
            out[offset : offset + length] = block.ljust(length, b"\x00")
    return bytes(out)
