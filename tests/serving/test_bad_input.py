"""Bad input gets a precise answer, and leaves no row, no blob and no queued task behind."""

from __future__ import annotations

import json
import socket
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from skinscreen.gateway.settings import Settings as GatewaySettings
from skinscreen.runtime.queue import QUEUE
from tests.conftest import DESIGN_EXAMPLE
from tests.serving.conftest import Keys


def _snapshot(database, blob_dir: Path, idle_redis) -> tuple[int, int, int]:
    rows = database.value("SELECT count(*) FROM screenings")
    blobs = sum(1 for path in blob_dir.rglob("*") if path.is_file())
    return rows, blobs, idle_redis.llen(QUEUE)


@pytest.fixture
def nothing_created(database, blob_dir: Path, idle_redis) -> Iterator[None]:
    before = _snapshot(database, blob_dir, idle_redis)
    yield
    assert _snapshot(database, blob_dir, idle_redis) == before


@pytest.fixture
def client(keys: Keys, idle_gateway: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=idle_gateway, headers=keys.clinician, timeout=30) as client:
        yield client


@pytest.fixture
def photo_bytes(photos) -> bytes:
    return photos[0].path.read_bytes()


def _post(client: httpx.Client, image: bytes, clinical: object, **extra: str) -> httpx.Response:
    text = clinical if isinstance(clinical, str) else json.dumps(clinical)
    return client.post(
        "/v1/screenings",
        files={"image": ("lesion.jpg", image, "image/jpeg")},
        data={"clinical": text, **extra},
    )


def test_the_check_itself_sees_a_queued_task(
    client, photo_bytes, database, blob_dir, idle_redis
) -> None:
    """Positive control: a good upload does create a row, a blob and a task."""
    rows, blobs, tasks = _snapshot(database, blob_dir, idle_redis)
    response = _post(client, photo_bytes, DESIGN_EXAMPLE)
    assert response.status_code == 202, response.text
    assert _snapshot(database, blob_dir, idle_redis) == (rows + 1, blobs + 1, tasks + 1)
    # Nobody works this queue: ?wait gives up after its time and answers `queued`.
    waited = client.get(response.headers["Location"], params={"wait": 1})
    assert waited.status_code == 200
    assert waited.json()["status"] == "queued"
    # Leave the shared database as it was: this screening will never be processed.
    screening_id = response.json()["id"]
    key = database.value(
        "DELETE FROM screenings WHERE id = $1::uuid RETURNING image_key", screening_id
    )
    (blob_dir / key).unlink()
    idle_redis.delete(QUEUE)


@pytest.mark.usefixtures("nothing_created")
def test_each_bad_clinical_field_is_named_with_what_is_allowed(client, photo_bytes) -> None:
    clinical = {**DESIGN_EXAMPLE, "age": 130, "region": "ELBOW", "itch": "yes", "smoker": True}
    del clinical["bleed"]
    response = _post(client, photo_bytes, clinical)
    assert response.status_code == 422
    errors = {tuple(error["loc"]): error for error in response.json()["detail"]}
    assert set(errors) == {
        ("body", "clinical", "age"),
        ("body", "clinical", "region"),
        ("body", "clinical", "itch"),
        ("body", "clinical", "bleed"),
        ("body", "clinical", "smoker"),
    }
    assert "0 to 120" in errors[("body", "clinical", "age")]["msg"]
    assert "ABDOMEN" in errors[("body", "clinical", "region")]["msg"]
    assert "OTHER" in errors[("body", "clinical", "region")]["msg"]
    assert "true, false or null" in errors[("body", "clinical", "itch")]["msg"]
    assert errors[("body", "clinical", "bleed")]["type"] == "missing"
    assert "unknown field 'smoker'" in errors[("body", "clinical", "smoker")]["msg"]


@pytest.mark.usefixtures("nothing_created")
@pytest.mark.parametrize(
    ("clinical", "expected"),
    [
        ("{not json", "not valid JSON"),
        ("[62, 1]", "JSON object"),
        ({**DESIGN_EXAMPLE, "age": 62.5}, "age"),
        ({**DESIGN_EXAMPLE, "age": True}, "age"),
        ({**DESIGN_EXAMPLE, "region": "face"}, "region"),
    ],
)
def test_malformed_clinical_is_refused(client, photo_bytes, clinical, expected: str) -> None:
    response = _post(client, photo_bytes, clinical)
    assert response.status_code == 422
    assert expected in json.dumps(response.json()["detail"])


@pytest.mark.usefixtures("nothing_created")
def test_unknown_form_part_and_missing_image_are_refused(client, photo_bytes) -> None:
    response = _post(client, photo_bytes, DESIGN_EXAMPLE, comment="hello")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "comment"]
    response = client.post("/v1/screenings", data={"clinical": json.dumps(DESIGN_EXAMPLE)})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "image"]


@pytest.mark.usefixtures("nothing_created")
def test_a_file_that_is_not_an_image_is_415(client) -> None:
    response = _post(client, b"%PDF-1.7 definitely not a photo", DESIGN_EXAMPLE)
    assert response.status_code == 415
    assert "JPEG, PNG, WebP or HEIC" in response.json()["detail"]


@pytest.mark.usefixtures("nothing_created")
def test_a_truncated_photo_is_422(client, photo_bytes) -> None:
    response = _post(client, photo_bytes[: len(photo_bytes) // 2], DESIGN_EXAMPLE)
    assert response.status_code == 422
    assert "truncated or corrupt" in response.json()["detail"]


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + chunk(b"IEND", b"")
    )


@pytest.mark.usefixtures("nothing_created")
def test_too_many_pixels_is_413_without_decoding(client) -> None:
    """400 megapixels: Pillow itself refuses to open it (its bomb limit is 2 x 89.5 MP)."""
    response = _post(client, _png_claiming(20_000, 20_000), DESIGN_EXAMPLE)
    assert response.status_code == 413
    assert "pixels" in response.json()["detail"]


# The gateway's own limit (MAX_IMAGE_PIXELS, 50 megapixels by default), far below the
# ~179 megapixels at which Pillow refuses an image by itself (2 x Image.MAX_IMAGE_PIXELS).
PROJECT_PIXEL_LIMIT = GatewaySettings.model_fields["MAX_IMAGE_PIXELS"].default


@pytest.mark.usefixtures("nothing_created")
def test_the_projects_own_pixel_limit_is_413(client) -> None:
    """One row over 50 megapixels: only the gateway's own check stands between this header
    and a decode; Pillow opens it without complaint (a warning at most)."""
    width = 8_000
    height = PROJECT_PIXEL_LIMIT // width + 1
    assert PROJECT_PIXEL_LIMIT < width * height < Image.MAX_IMAGE_PIXELS
    response = _post(client, _png_claiming(width, height), DESIGN_EXAMPLE)
    assert response.status_code == 413, response.text
    assert response.json()["detail"] == (
        f"image: {width}x{height} is {width * height} pixels; at most {PROJECT_PIXEL_LIMIT} allowed"
    )


@pytest.mark.usefixtures("nothing_created")
def test_a_photo_at_the_pixel_limit_is_not_refused_for_its_size(client) -> None:
    """The boundary: exactly the limit is allowed; this header's empty pixel data then fails
    the full decode (422), which proves it went past the pixel check."""
    width = 8_000
    height = PROJECT_PIXEL_LIMIT // width
    assert width * height == PROJECT_PIXEL_LIMIT
    response = _post(client, _png_claiming(width, height), DESIGN_EXAMPLE)
    assert response.status_code == 422, response.text
    assert "truncated or corrupt" in response.json()["detail"]


@pytest.mark.usefixtures("nothing_created")
def test_a_file_over_the_size_limit_is_413(client) -> None:
    over = 15 * 1024 * 1024 + 1
    response = _post(client, b"\xff\xd8" + b"\x00" * over, DESIGN_EXAMPLE)
    assert response.status_code == 413


def _raw_request(url: str, head: bytes, body_chunks: list[bytes]) -> bytes:
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as connection:
        connection.sendall(head)
        for chunk in body_chunks:
            try:
                connection.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
        return connection.recv(65536)


@pytest.mark.usefixtures("nothing_created")
def test_an_announced_oversized_body_is_refused_before_it_is_sent(idle_gateway: str) -> None:
    """Content-Length over the limit: 413 comes back although the body never arrives."""
    head = (
        b"POST /v1/screenings HTTP/1.1\r\nHost: gateway\r\n"
        b"Content-Type: multipart/form-data; boundary=x\r\n"
        b"Content-Length: 200000000\r\n\r\n"
    )
    answer = _raw_request(idle_gateway, head, [b"--x\r\n"])
    assert answer.startswith(b"HTTP/1.1 413")


@pytest.mark.usefixtures("nothing_created")
def test_a_chunked_body_is_cut_off_at_the_limit(idle_gateway: str) -> None:
    """No Content-Length: reading stops once the limit is passed, not at the end of the body."""
    head = (
        b"POST /v1/screenings HTTP/1.1\r\nHost: gateway\r\n"
        b"Content-Type: multipart/form-data; boundary=x\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )

    def chunk(data: bytes) -> bytes:
        return f"{len(data):x}\r\n".encode() + data + b"\r\n"

    part = (
        b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n"
    )
    # A 40 MB image in 1 MB pieces; the server answers after about 15 MB.
    answer = _raw_request(idle_gateway, head, [chunk(part)] + [chunk(b"\xff" * 2**20)] * 40)
    assert answer.startswith(b"HTTP/1.1 413")
