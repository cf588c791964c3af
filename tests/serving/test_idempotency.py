"""Safe retries: POST /v1/screenings with an Idempotency-Key creates one screening per key,
answers a retry of the same request with it, and refuses the key with another request.

Against the gateway whose queue no worker reads, so each test sees exactly which rows, blobs
and queued tasks a request left behind, and removes its own.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from skinscreen.runtime.queue import QUEUE
from tests.conftest import DESIGN_EXAMPLE
from tests.serving.conftest import Keys

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"


@pytest.fixture
def client(keys: Keys, idle_gateway: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=idle_gateway, headers=keys.clinician, timeout=60) as client:
        yield client


@pytest.fixture
def photo_bytes(photos) -> bytes:
    return photos[0].path.read_bytes()


@pytest.fixture
def key(database, blob_dir: Path, idle_redis) -> Iterator[str]:
    """A fresh key; afterwards the screenings it made, their blobs and the idle queue's tasks
    are removed (nobody works that queue)."""
    key = f"test-{uuid.uuid4()}"
    yield key
    for row in database.fetch(
        "DELETE FROM screenings WHERE idempotency_key = $1 RETURNING image_key", key
    ):
        (blob_dir / row["image_key"]).unlink(missing_ok=True)
    idle_redis.delete(QUEUE)


def _post(
    client: httpx.Client,
    image: bytes,
    clinical: object = DESIGN_EXAMPLE,
    headers: dict[str, str] | dict[bytes, bytes] | None = None,
    **extra: str,
) -> httpx.Response:
    text = clinical if isinstance(clinical, str) else json.dumps(clinical)
    return client.post(
        "/v1/screenings",
        files={"image": ("lesion.jpg", image, "image/jpeg")},
        data={"clinical": text, **extra},
        headers=headers,
    )


def _made(database, key: str) -> list[uuid.UUID]:
    return [
        row["id"]
        for row in database.fetch("SELECT id FROM screenings WHERE idempotency_key = $1", key)
    ]


def test_a_retry_gets_the_first_screening_back(
    client, photo_bytes, key, database, blob_dir, idle_redis
) -> None:
    blobs = sum(1 for path in blob_dir.rglob("*") if path.is_file())
    tasks = idle_redis.llen(QUEUE)
    first = _post(client, photo_bytes, headers={HEADER: key})
    assert first.status_code == 202, first.text
    assert REPLAYED not in first.headers
    # The same answers spelled otherwise (another key order, no spaces) are the same request.
    respelled = json.dumps(dict(reversed(DESIGN_EXAMPLE.items())), separators=(",", ":"))
    again = _post(client, photo_bytes, respelled, headers={HEADER: key})
    assert again.status_code == 202, again.text
    assert again.headers[REPLAYED] == "true"
    assert again.json() == first.json()
    assert again.headers["Location"] == first.headers["Location"]
    assert _made(database, key) == [uuid.UUID(first.json()["id"])]
    # One blob and one task: the retry stored and queued nothing.
    assert sum(1 for path in blob_dir.rglob("*") if path.is_file()) == blobs + 1
    assert idle_redis.llen(QUEUE) == tasks + 1
    # The screening reads as any other.
    read = client.get(first.headers["Location"])
    assert read.status_code == 200
    assert read.json()["id"] == first.json()["id"]


def test_without_a_key_each_request_is_a_screening(
    client, photo_bytes, database, blob_dir, idle_redis
) -> None:
    """The positive control of the retry test: the same request twice without a key is two."""
    ids = [_post(client, photo_bytes).json()["id"] for _ in range(2)]
    for row in database.fetch(
        "DELETE FROM screenings WHERE id = ANY($1::uuid[]) RETURNING image_key", ids
    ):
        (blob_dir / row["image_key"]).unlink()
    idle_redis.delete(QUEUE)
    assert ids[0] != ids[1]


@pytest.mark.parametrize("change", ["clinical", "photo", "model"])
def test_the_same_key_with_another_request_is_refused(
    client, photo_bytes, photos, key, database, change: str
) -> None:
    first = _post(client, photo_bytes, headers={HEADER: key})
    assert first.status_code == 202, first.text
    if change == "clinical":
        other = _post(client, photo_bytes, {**DESIGN_EXAMPLE, "age": 63}, headers={HEADER: key})
    elif change == "photo":
        other = _post(client, photos[1].path.read_bytes(), headers={HEADER: key})
    else:
        # The model the first request got by default, now named: not the request sent first.
        other = _post(client, photo_bytes, headers={HEADER: key}, model="skinscreen-fusion")
    assert other.status_code == 422, other.text
    (error,) = other.json()["detail"]
    assert error["loc"] == ["header", HEADER]
    assert error["type"] == "idempotency_key_reused"
    assert "new key" in error["msg"]
    assert _made(database, key) == [uuid.UUID(first.json()["id"])]


def test_concurrent_requests_with_one_key_create_one_screening(
    client, photo_bytes, key, database, idle_redis
) -> None:
    tasks = idle_redis.llen(QUEUE)
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda _: _post(client, photo_bytes, headers={HEADER: key}), range(8))
        )
    assert [answer.status_code for answer in answers] == [202] * 8, [a.text for a in answers]
    assert len({answer.json()["id"] for answer in answers}) == 1
    assert sum(REPLAYED not in answer.headers for answer in answers) == 1
    assert len(_made(database, key)) == 1
    assert idle_redis.llen(QUEUE) == tasks + 1


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param("", id="empty"),
        pytest.param("x" * 129, id="too-long"),
        pytest.param("has space", id="space"),
        pytest.param("semi;colon", id="semicolon"),
        pytest.param("caf\xe9", id="not-ascii"),
    ],
)
def test_a_malformed_key_is_refused_and_changes_nothing(
    client, photo_bytes, database, bad: str
) -> None:
    before = database.value("SELECT count(*) FROM screenings")
    response = _post(client, photo_bytes, headers={HEADER.encode(): bad.encode("latin-1")})
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["header", HEADER]
    assert error["type"] == "idempotency_key_invalid"
    assert "1 to 128 characters from A-Z, a-z, 0-9" in error["msg"]
    assert database.value("SELECT count(*) FROM screenings") == before


def test_the_longest_key_is_accepted(client, photo_bytes, database, blob_dir, idle_redis) -> None:
    key = "K" * 128
    response = _post(client, photo_bytes, headers={HEADER: key})
    try:
        assert response.status_code == 202, response.text
    finally:
        for row in database.fetch(
            "DELETE FROM screenings WHERE idempotency_key = $1 RETURNING image_key", key
        ):
            (blob_dir / row["image_key"]).unlink()
        idle_redis.delete(QUEUE)


def test_a_key_sent_twice_in_one_request_is_refused(client, photo_bytes, database) -> None:
    before = database.value("SELECT count(*) FROM screenings")
    response = client.post(
        "/v1/screenings",
        files={"image": ("lesion.jpg", photo_bytes, "image/jpeg")},
        data={"clinical": json.dumps(DESIGN_EXAMPLE)},
        headers=[(HEADER, "one"), (HEADER, "two")],
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["type"] == "duplicate_header"
    assert database.value("SELECT count(*) FROM screenings") == before


def test_the_key_is_documented(client) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/v1/screenings"]["post"]
    (parameter,) = [p for p in operation["parameters"] if p["name"] == HEADER]
    assert parameter["in"] == "header"
    assert parameter["schema"]["maxLength"] == 128
    assert REPLAYED in operation["responses"]["202"]["headers"]
