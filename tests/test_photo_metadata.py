"""Stored photos lose every metadata block and keep their pixels and orientation
(skinscreen.gateway.metadata), for a real PAD-UFES-20 photo in each accepted format."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageCms, ImageOps
from PIL.PngImagePlugin import PngInfo
from pillow_heif import register_heif_opener

from skinscreen.core.imaging import preprocess
from skinscreen.gateway.metadata import MetadataError, strip_jpeg, strip_metadata
from tests.conftest import PAD_UFES

register_heif_opener()

PHOTO = PAD_UFES / "images" / "PAT_1000_31_620.jpg"
# What a phone (and a curious owner) writes; none of it may be stored.
SECRETS = (b"Apple", b"iPhone 15 Pro", b"Dr Jane Roe", b"Clinic Foo, bed 4", b"SN-20931",
           b"lesion of patient 4711", b"xmp-secret-name")  # fmt: skip
XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf'
    b'-syntax-ns#"><rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/" '
    b'dc:creator="xmp-secret-name"/></rdf:RDF></x:xmpmeta>'
)


def phone_exif(orientation: int) -> Image.Exif:
    """GPS, the device, the owner's name, a description, a comment and an orientation."""
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Apple"
    exif[ExifTags.Base.Model] = "iPhone 15 Pro"
    exif[ExifTags.Base.Artist] = "Dr Jane Roe"
    exif[ExifTags.Base.ImageDescription] = "Clinic Foo, bed 4"
    exif[ExifTags.Base.Orientation] = orientation
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.BodySerialNumber] = "SN-20931"
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = b"ASCII\x00\x00\x00lesion"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "S"
    gps[ExifTags.GPS.GPSLatitude] = (20.0, 19.0, 12.5)
    gps[ExifTags.GPS.GPSLongitudeRef] = "W"
    gps[ExifTags.GPS.GPSLongitude] = (40.0, 20.0, 1.25)
    return exif


def _pixels(data: bytes) -> np.ndarray:
    """The photo as shown: EXIF orientation applied."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(ImageOps.exif_transpose(image))


def _model_input(data: bytes, size: int = 224) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return preprocess(image, size)


def _photo(format_name: str, orientation: int = 6, **options: object) -> bytes:
    with Image.open(PHOTO) as image:
        out = io.BytesIO()
        srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
        image.save(out, format=format_name, exif=phone_exif(orientation), xmp=XMP,
                   icc_profile=srgb, **options)  # fmt: skip
        return out.getvalue()


def _assert_no_metadata(data: bytes) -> None:
    for secret in SECRETS:
        assert secret not in data, secret
    with Image.open(io.BytesIO(data)) as image:
        exif = image.getexif()
        assert set(exif) <= {ExifTags.Base.Orientation}, dict(exif)
        assert not exif.get_ifd(ExifTags.IFD.GPSInfo)
        assert not exif.get_ifd(ExifTags.IFD.Exif)
        assert "comment" not in image.info
        assert not (image.info.get("xmp") or b"").strip()  # HEIF's XMP item: spaces


@pytest.mark.parametrize("orientation", [1, 6, 3, 8])
def test_a_jpeg_loses_its_metadata_and_keeps_pixels_orientation_and_icc(orientation: int) -> None:
    upload = _photo("JPEG", orientation, quality=92, comment=b"lesion of patient 4711")
    assert all(secret in upload for secret in SECRETS[:4])
    stored = strip_metadata(upload, "JPEG")
    _assert_no_metadata(stored.data)
    assert stored.orientation == (None if orientation == 1 else orientation)
    with Image.open(io.BytesIO(stored.data)) as image:
        assert image.getexif().get(ExifTags.Base.Orientation) == stored.orientation
        assert image.info["icc_profile"] == Image.open(io.BytesIO(upload)).info["icc_profile"]
    # Not re-encoded: every coded byte is the upload's, and the pixels are the same.
    assert np.array_equal(_pixels(stored.data), _pixels(upload))
    assert np.array_equal(_model_input(stored.data), _model_input(upload))
    assert len(stored.data) < len(upload)


def test_a_shipped_jpeg_keeps_every_coded_byte() -> None:
    """PAD-UFES-20's own file (JFIF, no EXIF): the segments after the header are untouched."""
    upload = PHOTO.read_bytes()
    stored = strip_jpeg(upload)
    assert np.array_equal(_pixels(stored), _pixels(upload))
    start = upload.index(b"\xff\xdb")  # the first quantisation table
    assert stored.endswith(upload[start : upload.rindex(b"\xff\xd9") + 2])


def test_a_progressive_jpeg_with_a_second_picture_after_it() -> None:
    """Markers between scans are walked, and a phone's trailing picture (MPF) goes."""
    upload = _photo("JPEG", 6, quality=90, progressive=True, comment=b"lesion of patient 4711")
    trailer = _photo("JPEG", 1, quality=50)
    stored = strip_metadata(upload + trailer, "JPEG")
    _assert_no_metadata(stored.data)
    assert np.array_equal(_pixels(stored.data), _pixels(upload))


@pytest.mark.parametrize("orientation", [1, 6])
def test_a_png_loses_its_text_exif_and_time_chunks(orientation: int) -> None:
    with Image.open(PHOTO) as photo:
        image = photo.crop((0, 0, 300, 200))
        info = PngInfo()
        info.add_text("Author", "Dr Jane Roe")
        info.add_text("Comment", "lesion of patient 4711", zip=True)
        info.add_itxt("Description", "Clinic Foo, bed 4")
        out = io.BytesIO()
        image.save(out, format="PNG", pnginfo=info, exif=phone_exif(orientation), xmp=XMP)
        upload = out.getvalue()
    upload = upload[:-12] + b"\x00\x00\x00\x07tIME" + b"\x07\xe9\x01\x02\x03\x04\x05"
    upload += b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00IEND\xaeB`\x82"
    upload = _fix_png_crc(upload)
    stored = strip_metadata(upload, "PNG")
    _assert_no_metadata(stored.data)
    assert b"tIME" not in stored.data
    assert stored.orientation == (None if orientation == 1 else orientation)
    assert np.array_equal(_pixels(stored.data), _pixels(upload))
    assert np.array_equal(_model_input(stored.data), _model_input(upload))


def _fix_png_crc(data: bytes) -> bytes:
    """Rewrite every chunk's CRC (the test spliced a tIME chunk in by hand)."""
    out = bytearray(data[:8])
    position = 8
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind_body = data[position + 4 : position + 8 + length]
        out += data[position : position + 8 + length] + struct.pack(">I", zlib.crc32(kind_body))
        position += 12 + length
    return bytes(out)


@pytest.mark.parametrize("lossless", [False, True])
def test_a_webp_loses_exif_and_xmp_and_keeps_orientation(lossless: bool) -> None:
    upload = _photo("WEBP", 6, lossless=lossless, quality=90)
    assert b"Dr Jane Roe" in upload
    stored = strip_metadata(upload, "WEBP")
    _assert_no_metadata(stored.data)
    with Image.open(io.BytesIO(stored.data)) as image:
        assert image.getexif().get(ExifTags.Base.Orientation) == 6
        assert "icc_profile" in image.info
    assert np.array_equal(_pixels(stored.data), _pixels(upload))
    assert np.array_equal(_model_input(stored.data), _model_input(upload))


def test_a_heic_keeps_every_byte_but_its_exif_and_xmp() -> None:
    with Image.open(PHOTO) as image:
        out = io.BytesIO()
        # Not square, so that a quarter turn shows.
        image.crop((0, 0, 448, 300)).save(
            out, format="HEIF", exif=phone_exif(6).tobytes(), xmp=XMP, quality=80
        )
        upload = out.getvalue()
    assert b"Dr Jane Roe" in upload
    assert b"xmp-secret-name" in upload
    stored = strip_metadata(upload, "HEIF")
    assert len(stored.data) == len(upload)
    _assert_no_metadata(stored.data)
    # The rotation is HEIF's own (irot), untouched: the photo stands as it was taken.
    assert np.array_equal(_pixels(stored.data), _pixels(upload))
    assert _pixels(stored.data).shape[:2] == (448, 300)  # turned a quarter, as EXIF said
    assert np.array_equal(_model_input(stored.data), _model_input(upload))


@pytest.mark.parametrize("format_name", ["JPEG", "PNG", "WEBP", "HEIF"])
def test_what_cannot_be_walked_is_refused(format_name: str) -> None:
    with pytest.raises(MetadataError):
        strip_metadata(b"\x00" * 64, format_name)


def test_a_jpeg_whose_segment_runs_past_the_end_is_refused(tmp_path: Path) -> None:
    upload = _photo("JPEG", 6)
    with pytest.raises(MetadataError):
        strip_jpeg(upload[:40])
