"""Health data only where it must be (issue 15), through the real stack.

A stack of this module's own (its own redis-server, so its append-only file holds
only what these screenings wrote; its own database; a worker and a gateway logging
at DEBUG, access log included) screens real PAD-UFES-20 photos with distinctive
clinical answers. Then: no clinical value anywhere in Redis (every key of every
database, and the append-only file on disk), none in any log line of gateway or
worker; the stored photo has lost its EXIF (GPS, device, names), XMP and comments,
keeps its pixels and scores exactly as the same photo sent without metadata; every
answer carries the security headers. A message in the earlier form (with the photo
key and the answers) is still scored, from the row (a rolling upgrade).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from celery import Celery
from PIL import ExifTags, Image, ImageOps
from redis import Redis

from skinscreen.core.clinical import ClinicalInput, Region
from skinscreen.core.imaging import preprocess
from skinscreen.dev.embedded import EmbeddedRedis
from tests.conftest import PAD_UFES
from tests.serving.conftest import (
    Keys,
    Lifecycle,
    Photo,
    Servers,
    lifecycle_stack,
    start_gateway,
)
from tests.test_photo_metadata import SECRETS, XMP, phone_exif
from tests.test_security_headers import assert_security_headers

# Answers no photo of the session sends: an 87-year-old's scalp, every symptom.
CLINICAL = ClinicalInput(
    age=87,
    region=Region.SCALP,
    itch=True,
    grew=True,
    hurt=True,
    changed=True,
    bleed=True,
    elevation=True,
)
# What must appear nowhere: the answers as JSON and each distinctive field with its value.
NEEDLES = (
    CLINICAL.model_dump_json(),
    json.dumps(CLINICAL.model_dump(mode="json")),
    '"age": 87', '"age":87', "'age': 87", "age=87",
    "SCALP", "elevation", "bleed",
)  # fmt: skip
SCREENINGS = 6


@dataclass
class PrivateStack:
    stack: Lifecycle
    url: str  # the gateway logging at DEBUG
    redis: EmbeddedRedis
    redis_url: str
    logs: list[Path]

    @property
    def keys(self) -> Keys:
        return self.stack.keys


@pytest.fixture(scope="module")
def private(
    servers: Servers, model_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrivateStack]:
    folder = tmp_path_factory.mktemp("health-data")
    redis = EmbeddedRedis(folder / "redis")
    redis_url = redis.start()
    try:
        with lifecycle_stack(
            servers, model_store, tmp_path_factory, REDIS_URL=redis_url, LOG_LEVEL="DEBUG"
        ) as stack:
            log = folder / "gateway-debug.log"
            gateway, url = start_gateway(stack.env, log, "debug")
            try:
                worker_log = stack.worker.log
                gateway_log = worker_log.parent / "gateway.log"
                yield PrivateStack(stack, url, redis, redis_url, [log, worker_log, gateway_log])
            finally:
                gateway.stop()
    finally:
        redis.stop()


def _screen(client: httpx.Client, name: str, data: bytes, media_type: str) -> dict:
    accepted = client.post(
        "/v1/screenings",
        files={"image": (name, data, media_type)},
        data={"clinical": CLINICAL.model_dump_json()},
    )
    assert accepted.status_code == 202, accepted.text
    assert_security_headers(accepted)
    location = accepted.headers["Location"]
    for _ in range(10):
        response = client.get(location, params={"wait": 30})
        body: dict = response.json()
        if body["status"] in ("done", "failed"):
            assert_security_headers(response)
            assert body["status"] == "done", body
            return body
    raise AssertionError(f"{location} did not finish: {body}")


@pytest.fixture(scope="module")
def screened(private: PrivateStack, photos: list[Photo]) -> list[dict]:
    """Real photos screened with the distinctive answers, one at a time and all at once."""
    with httpx.Client(base_url=private.url, headers=private.keys.clinician, timeout=60) as client:
        done = [
            _screen(client, photo.path.name, photo.path.read_bytes(), "image/jpeg")
            for photo in photos[:2]
        ]
        accepted = [
            client.post(
                "/v1/screenings",
                files={"image": (photo.path.name, photo.path.read_bytes(), "image/jpeg")},
                data={"clinical": CLINICAL.model_dump_json()},
            )
            for photo in photos[2:SCREENINGS]
        ]
        for response in accepted:
            assert response.status_code == 202, response.text
            body = client.get(response.headers["Location"], params={"wait": 30}).json()
            assert body["status"] == "done", body
            done.append(body)
    return done


def _bodies(text: str) -> str:
    """The base64 message bodies of kombu's envelopes in `text`, decoded."""
    decoded = []
    for encoded in re.findall(r'"body":\s*"([A-Za-z0-9+/=]+)"', text):
        try:
            decoded.append(base64.b64decode(encoded).decode(errors="replace"))
        except ValueError:
            continue
    return "\n".join(decoded)


def _redis_contents(url: str) -> str:
    """Every key and value of every database of the server, as text."""
    parts: list[str] = []
    base = url.rsplit("/", 1)[0]

    def text(value: object) -> str:
        return value.decode(errors="replace") if isinstance(value, bytes) else str(value)

    for database in range(16):
        client = Redis.from_url(f"{base}/{database}")
        try:
            for key in client.scan_iter(count=1000):
                kind = text(client.type(key))
                values: list[object] = []
                if kind == "list":
                    values = list(client.lrange(key, 0, -1))
                elif kind == "hash":
                    values = [item for pair in client.hgetall(key).items() for item in pair]
                elif kind == "string":
                    values = [client.get(key)]
                elif kind == "set":
                    values = list(client.smembers(key))
                elif kind == "zset":
                    values = list(client.zrange(key, 0, -1))
                parts.append(text(key))
                parts.extend(text(value) for value in values)
        finally:
            client.close()
    return "\n".join(parts)


def test_redis_holds_no_clinical_answer(private: PrivateStack, screened: list[dict]) -> None:
    assert len(screened) == SCREENINGS
    # Some messages are still there: the clients' task metadata, kombu's bindings...
    contents = _redis_contents(private.redis_url)
    # ... and the append-only file holds every message ever pushed, popped or not.
    aof_files = [path for path in private.redis.folder.rglob("*") if path.is_file()
                 if "appendonly" in path.name or "appendonlydir" in str(path)]  # fmt: skip
    assert aof_files, list(private.redis.folder.rglob("*"))
    aof = "\n".join(path.read_bytes().decode(errors="replace") for path in aof_files)
    assert "skinscreen.screen" in aof, "the screenings' tasks went through this Redis"
    # The messages' bodies are base64 in kombu's envelope: read decoded, too.
    assert f'"screening_id": "{screened[0]["id"]}"' in _bodies(aof)
    haystack = "\n".join([contents, _bodies(contents), aof, _bodies(aof)])
    ids = [body["id"] for body in screened]
    assert all(screening_id in haystack for screening_id in ids)  # the tasks were seen
    for needle in NEEDLES:
        assert needle not in haystack, needle


def test_no_log_line_holds_a_clinical_answer(private: PrivateStack, screened: list[dict]) -> None:
    assert len(screened) == SCREENINGS
    logs = {path: path.read_text(errors="replace") for path in private.logs}
    # The logs did log: uvicorn's access lines, Celery's received and succeeded lines.
    everything = "\n".join(logs.values())
    assert "POST /v1/screenings" in everything
    assert f"skinscreen.screen[{screened[0]['id']}] received" in everything
    assert f"skinscreen.screen[{screened[0]['id']}] succeeded" in everything
    for path, text in logs.items():
        for needle in NEEDLES:
            lines = [line for line in text.splitlines() if needle in line]
            assert not lines, (path.name, needle, lines[:3])


def _with_metadata(path: Path) -> bytes:
    """The photo as a phone writes it: GPS, device, names, a comment, XMP, turned on its
    side with EXIF orientation 6 to stand it up again."""
    with Image.open(path) as image:
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=92, exif=phone_exif(6), xmp=XMP,
                   comment=b"lesion of patient 4711")  # fmt: skip
        return out.getvalue()


def _as_shown_without_metadata(data: bytes) -> bytes:
    """The same photo's pixels, upright, as a PNG without any metadata (lossless)."""
    with Image.open(io.BytesIO(data)) as image:
        out = io.BytesIO()
        ImageOps.exif_transpose(image).save(out, format="PNG")
        return out.getvalue()


def test_the_stored_photo_has_no_metadata_and_scores_as_the_bare_photo(
    private: PrivateStack,
) -> None:
    upload = _with_metadata(PAD_UFES / "images" / "PAT_1000_31_620.jpg")
    for secret in SECRETS[:4]:
        assert secret in upload
    bare = _as_shown_without_metadata(upload)
    with httpx.Client(base_url=private.url, headers=private.keys.clinician, timeout=60) as client:
        with_metadata = _screen(client, "phone.jpg", upload, "image/jpeg")
        without = _screen(client, "bare.png", bare, "image/png")
    row = private.stack.database.fetch(
        "SELECT image_key, image_format, image_bytes, image_sha256 FROM screenings"
        " WHERE id = $1::uuid",
        with_metadata["id"],
    )[0]
    stored = (Path(private.stack.env["BLOB_DIR"]) / row["image_key"]).read_bytes()
    # Nothing of the phone's metadata; the orientation alone stays.
    for secret in SECRETS:
        assert secret not in stored, secret
    with Image.open(io.BytesIO(stored)) as image:
        exif = image.getexif()
        assert dict(exif) == {ExifTags.Base.Orientation: 6}
        assert not exif.get_ifd(ExifTags.IFD.GPSInfo)
        assert "comment" not in image.info
        assert "xmp" not in image.info
        shown = np.asarray(ImageOps.exif_transpose(image))
        model_input = preprocess(image, 224)
    # The same pixels, upright, and the same model input as the upload.
    with Image.open(io.BytesIO(upload)) as image:
        assert np.array_equal(shown, np.asarray(ImageOps.exif_transpose(image)))
        assert np.array_equal(model_input, preprocess(image, 224))
    # The row describes the stored file.
    assert row["image_format"] == "JPEG"
    assert row["image_bytes"] == len(stored) < len(upload)
    assert row["image_sha256"] == hashlib.sha256(stored).hexdigest()
    # Scored as the bare photo: the same model input gives the same probabilities.
    assert with_metadata["result"]["cancer_probability"] == pytest.approx(
        without["result"]["cancer_probability"], abs=1e-6
    )
    assert with_metadata["result"]["suspicious"] == without["result"]["suspicious"]


def test_a_message_of_the_earlier_form_is_scored_from_the_row(
    gateway: str, keys: Keys, stack_env: dict[str, str], database, photos: list[Photo]
) -> None:
    """A rolling upgrade: a task sent by a gateway of the release before (with the photo key
    and the answers in it) is still scored; the worker reads both from the row, not the
    message (whose key here names no photo)."""
    with httpx.Client(base_url=gateway, headers=keys.clinician, timeout=60) as client:
        first = client.post(
            "/v1/screenings",
            files={"image": ("a.jpg", photos[0].path.read_bytes(), "image/jpeg")},
            data={"clinical": photos[0].clinical.model_dump_json()},
        )
        assert first.status_code == 202, first.text
        done = client.get(first.headers["Location"], params={"wait": 30}).json()
        assert done["status"] == "done", done
        image_key = database.value(
            "SELECT image_key FROM screenings WHERE id = $1::uuid", done["id"]
        )
        # A second screening of the same photo and answers, queued by hand in the old form.
        screening_id = str(uuid.uuid4())
        database.fetch(
            "INSERT INTO screenings (id, clinic_id, clinical, image_key, image_format,"
            " image_bytes, image_sha256) VALUES ($1::uuid, $2, $3::jsonb, $4, 'JPEG', 0, '')",
            screening_id,
            keys.clinic_id,
            photos[0].clinical.model_dump_json(),
            image_key,
        )
        celery = Celery(broker=stack_env["REDIS_URL"])
        message = {"screening_id": screening_id, "image_key": "elsewhere/nothing.jpg",
                   "clinical": photos[0].clinical.model_dump(mode="json"),
                   "model_name": "skinscreen-fusion"}  # fmt: skip
        celery.send_task("skinscreen.screen", args=[message], queue="screenings")
        celery.close()
        again = client.get(f"/v1/screenings/{screening_id}", params={"wait": 30}).json()
    assert again["status"] == "done", again
    assert again["result"]["cancer_probability"] == pytest.approx(
        done["result"]["cancer_probability"], abs=1e-5
    )
