"""The REST surface: formats, long polling, listing, probes, and how failures are reported."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from celery import Celery
from PIL import Image
from pillow_heif import register_heif_opener

from skinscreen.core.clinical import encode
from skinscreen.core.imaging import preprocess
from skinscreen.runtime import screenings
from skinscreen.runtime.queue import QUEUE
from tests.serving.conftest import (
    IDLE_GATEWAY,
    Keys,
    hold_long_poll,
    served_model,
    submit,
)

register_heif_opener()


@pytest.fixture
def client(keys: Keys, gateway: str):
    with httpx.Client(base_url=gateway, headers=keys.clinician, timeout=60) as client:
        yield client


def _encoded(photo_path: Path, fmt: str) -> bytes:
    """The photo re-encoded as `fmt`, turned on its side with an EXIF orientation to undo it."""
    with Image.open(photo_path) as image:
        rotated = image.convert("RGB").rotate(90, expand=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": undoes the rotation above
    buffer = io.BytesIO()
    rotated.save(buffer, format=fmt, exif=exif.tobytes())
    return buffer.getvalue()


@pytest.mark.parametrize(("fmt", "media_type"), [("PNG", "image/png"), ("WEBP", "image/webp"),
                                                 ("HEIF", "image/heic")])  # fmt: skip
def test_png_webp_and_heic_with_exif_orientation(
    client, photos, database, fmt: str, media_type: str
) -> None:
    photo = photos[0]
    data = _encoded(photo.path, fmt)
    response = client.post(
        "/v1/screenings",
        files={"image": (f"lesion.{fmt.lower()}", data, media_type)},
        data={"clinical": photo.clinical.model_dump_json()},
    )
    assert response.status_code == 202, response.text
    result = client.get(response.headers["Location"], params={"wait": 30}).json()
    assert result["status"] == "done", result

    model_path, card = served_model(database, "skinscreen-fusion")
    with Image.open(io.BytesIO(data)) as image:
        pixels = preprocess(image, card.input_size)
    with Image.open(photo.path) as original:
        upright = preprocess(original, card.input_size)
    # EXIF orientation was applied: the model saw the photo upright again.
    assert np.abs(pixels.astype(int) - upright.astype(int)).mean() < 8
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    (expected,) = session.run(
        ["cancer_probability"], {"image": pixels[None], "clinical": encode(photo.clinical)[None]}
    )
    assert abs(result["result"]["cancer_probability"] - float(expected[0])) <= 1e-5


def test_unknown_ids_are_404_with_or_without_wait(client) -> None:
    missing = uuid.uuid4()
    assert client.get(f"/v1/screenings/{missing}").status_code == 404
    # An unknown id is answered at once, with or without ?wait (the wait never starts).
    assert client.get(f"/v1/screenings/{missing}", params={"wait": 2}).status_code == 404
    assert client.get(f"/v1/screenings/{missing}", params={"wait": 31}).status_code == 422


def test_a_long_poll_is_woken_by_the_finished_notification(
    keys: Keys, idle_gateway: str, photos, database, blob_dir: Path, idle_redis
) -> None:
    """?wait=30 on a screening no worker will score: the request is held, the result is
    written as a worker writes it (one statement that also sends the NOTIFY), and the held
    request answers with it. Without the notification it would answer `queued` after 30 s:
    when its time is up it returns the row it read before waiting."""
    with httpx.Client(base_url=idle_gateway, headers=keys.clinician, timeout=60) as client:
        accepted = submit(client, photos[0])
    assert accepted.status_code == 202, accepted.text
    screening_id = accepted.json()["id"]
    try:
        held = hold_long_poll(
            idle_gateway, accepted.headers["Location"], database, IDLE_GATEWAY, keys.clinician
        )
        poller, answer = held.thread, held.answer
        assert "response" not in answer, f"answered before the result existed: {answer}"
        # The worker's own statement: the row becomes `failed` and the NOTIFY goes out.
        assert database.value(screenings.FAIL, uuid.UUID(screening_id), "written by the test") == 1
        poller.join(60)
        assert not poller.is_alive()
        response = answer["response"]
        assert isinstance(response, httpx.Response), repr(response)
        assert response.status_code == 200
        body = response.json()
        assert (body["status"], body["failure_reason"]) == ("failed", "written by the test")
    finally:
        key = database.value(
            "DELETE FROM screenings WHERE id = $1::uuid RETURNING image_key", screening_id
        )
        (blob_dir / key).unlink()
        idle_redis.delete(QUEUE)


def test_listing_is_newest_first_with_a_cursor(client, photos, submit_photo) -> None:
    ids = [submit_photo(client, photo).json()["id"] for photo in photos[:5]]
    first = client.get("/v1/screenings", params={"limit": 3}).json()
    assert [item["id"] for item in first["items"]] == ids[::-1][:3]
    second = client.get("/v1/screenings", params={"limit": 3, "cursor": first["next_cursor"]})
    assert [item["id"] for item in second.json()["items"]][:2] == ids[::-1][3:5]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, object] = {"limit": 100}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/screenings", params=params).json()
        seen.extend(item["id"] for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen))
    assert set(ids) <= set(seen)
    bad = client.get("/v1/screenings", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["query", "cursor"]


def test_probes(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert set(ready.json()["checks"]) == {"database", "broker", "model", "notifications"}
    schema = client.get("/openapi.json").json()
    responses = schema["paths"]["/v1/screenings"]["post"]["responses"]
    assert {"202", "413", "415", "422"} <= set(responses)


def _enqueue_directly(stack_env, database, key: str) -> str:
    """A screening whose stored photo is missing or broken, queued as the gateway would."""
    screening_id = str(uuid.uuid4())
    clinical = {"age": 40, "region": "BACK", "itch": None, "grew": None, "hurt": None,
                "changed": None, "bleed": None, "elevation": None}  # fmt: skip
    database.fetch(
        "INSERT INTO screenings (id, clinical, image_key, image_format, image_bytes, image_sha256)"
        " VALUES ($1::uuid, $2::jsonb, $3, 'JPEG', 0, '')",
        screening_id,
        json.dumps(clinical),
        key,
    )
    celery = Celery(broker=stack_env["REDIS_URL"])
    message = {"screening_id": screening_id, "image_key": key, "clinical": clinical}
    celery.send_task("skinscreen.screen", args=[message], queue="screenings")
    celery.close()
    return screening_id


def test_transient_errors_are_retried_then_fail_with_a_reason(
    client, keys: Keys, stack_env, database
) -> None:
    screening_id = _enqueue_directly(stack_env, database, "no/such-photo.jpg")
    # Made without a clinic, as before clinic accounts: an operator reads it.
    result = client.get(
        f"/v1/screenings/{screening_id}", params={"wait": 30}, headers=keys.operator
    ).json()
    assert result["status"] == "failed", result
    assert "gave up after 6 attempts" in result["failure_reason"]
    assert "FileNotFoundError" in result["failure_reason"]
    assert result["result"] is None


def test_an_undecodable_stored_photo_fails_at_once(
    client, keys: Keys, stack_env, database, blob_dir
) -> None:
    (blob_dir / "broken").mkdir(exist_ok=True)
    (blob_dir / "broken" / "photo.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    screening_id = _enqueue_directly(stack_env, database, "broken/photo.jpg")
    # Made without a clinic, as before clinic accounts: an operator reads it.
    result = client.get(
        f"/v1/screenings/{screening_id}", params={"wait": 30}, headers=keys.operator
    ).json()
    assert result["status"] == "failed", result
    assert "cannot be decoded" in result["failure_reason"]
    assert database.value("SELECT attempts FROM screenings WHERE id = $1::uuid", screening_id) == 0
