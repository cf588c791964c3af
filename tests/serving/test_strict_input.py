"""Ambiguous or tampered input is refused by name and changes nothing: a form part or a clinical
field sent twice (the last no longer wins silently), a list cursor the API did not issue; the
methods of a path are answered with Allow; every status the gateway sends is documented."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from skinscreen.runtime.queue import QUEUE
from tests.conftest import DESIGN_EXAMPLE
from tests.serving.conftest import Keys


@pytest.fixture
def client(keys: Keys, idle_gateway: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=idle_gateway, headers=keys.clinician, timeout=30) as client:
        yield client


@pytest.fixture
def nothing_created(database, blob_dir: Path, idle_redis) -> Iterator[None]:
    def snapshot() -> tuple[int, int, int]:
        blobs = sum(1 for path in blob_dir.rglob("*") if path.is_file())
        return database.value("SELECT count(*) FROM screenings"), blobs, idle_redis.llen(QUEUE)

    before = snapshot()
    yield
    assert snapshot() == before


@pytest.fixture
def photo_bytes(photos) -> bytes:
    return photos[0].path.read_bytes()


CLINICAL = json.dumps(DESIGN_EXAMPLE)


@pytest.mark.usefixtures("nothing_created")
@pytest.mark.parametrize("part", ["clinical", "model", "image"])
def test_a_form_part_sent_twice_is_refused_by_name(client, photo_bytes, part: str) -> None:
    files = [("image", ("lesion.jpg", photo_bytes, "image/jpeg"))]
    data: dict[str, str | list[str]] = {"clinical": CLINICAL}
    if part == "clinical":
        data["clinical"] = [CLINICAL, CLINICAL]
    elif part == "model":
        data["model"] = ["skinscreen-fusion", "skinscreen-dermoscopy"]
    else:
        files.append(("image", ("other.jpg", photo_bytes, "image/jpeg")))
    response = client.post("/v1/screenings", files=files, data=data)
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", part]
    assert error["type"] == "duplicate_part"
    assert error["msg"] == (
        f"form part {part!r} sent 2 times; send each of image, clinical and model at most once"
    )


@pytest.mark.usefixtures("nothing_created")
def test_a_clinical_field_repeated_in_the_json_is_refused_by_name(client, photo_bytes) -> None:
    # Both ages are valid; json.loads and pydantic would have kept 63 without a word.
    text = CLINICAL[:-1] + ', "age": 63, "itch": false, "itch": true}'
    response = client.post(
        "/v1/screenings",
        files={"image": ("lesion.jpg", photo_bytes, "image/jpeg")},
        data={"clinical": text},
    )
    assert response.status_code == 422, response.text
    errors = {tuple(error["loc"]): error for error in response.json()["detail"]}
    assert set(errors) == {("body", "clinical", "age"), ("body", "clinical", "itch")}
    assert errors[("body", "clinical", "age")]["type"] == "duplicate_key"
    assert errors[("body", "clinical", "age")]["msg"].startswith(
        "age appears 2 times in clinical; each field at most once"
    )
    assert errors[("body", "clinical", "itch")]["msg"].startswith("itch appears 3 times")


def _cursor(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


NIL = "00000000-0000-0000-0000-000000000000"
TIME = "2024-01-01T00:00:00+00:00"


def _json_cursor(value: object) -> str:
    return _cursor(json.dumps(value).encode())


TAMPERED_CURSORS = {
    "not-base64": "%%%",
    "not-json": _cursor(b"not json"),
    "a-dict": _json_cursor({TIME: NIL}),
    "a-dict-as-id": _json_cursor([TIME, {"id": 1}]),
    "a-number-as-id": _json_cursor([TIME, 7]),
    "a-number-as-time": _json_cursor([1700000000, NIL]),
    "time-plus-garbage": _json_cursor([TIME + "garbage", NIL]),
    "naive-time": _json_cursor(["2024-01-01T00:00:00", NIL]),
    "three-items": _json_cursor([TIME, NIL, 1]),
    "nested-deeply": _cursor(b"[" * 5000),
    "too-long": "A" * 1000,
    "not-utf8": _cursor(b"\xff\xfe[]"),
    "a-nul": _json_cursor([TIME, "\u0000"]),
}


@pytest.mark.parametrize("cursor", TAMPERED_CURSORS.values(), ids=TAMPERED_CURSORS.keys())
def test_a_tampered_cursor_is_422(client, cursor: str) -> None:
    response = client.get("/v1/screenings", params={"cursor": cursor})
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["query", "cursor"]
    assert error["type"] == "cursor_invalid"


@pytest.mark.parametrize(
    ("path", "params", "where"),
    [
        ("/v1/models/%00/activations", {}, ["path", "name"]),
        ("/v1/models/skinscreen-fusion/versions/%00", {}, ["path", "version"]),
        ("/v1/screenings", {"model": "\x00"}, ["query", "model"]),
    ],
)
def test_a_nul_character_is_a_422_on_its_field(client, path: str, params, where) -> None:
    """PostgreSQL cannot store NUL in text: these reached it, and asyncpg's error was a 500."""
    response = client.get(path, params=params)
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == where
    assert "NUL character" in error["msg"]


@pytest.mark.usefixtures("nothing_created")
def test_a_nul_in_the_model_part_is_a_422(client, photo_bytes) -> None:
    response = client.post(
        "/v1/screenings",
        files={"image": ("lesion.jpg", photo_bytes, "image/jpeg")},
        data={"clinical": CLINICAL, "model": "skinscreen\x00fusion"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "model"]


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/v1/screenings", "GET, OPTIONS, POST"),
        ("/v1/screenings/00000000-0000-0000-0000-000000000000", "DELETE, GET, OPTIONS"),
        ("/v1/screenings/00000000-0000-0000-0000-000000000000/diagnosis", "GET, OPTIONS, POST"),
        ("/v1/models/skinscreen-fusion/rollback", "OPTIONS, POST"),
        ("/healthz", "GET, OPTIONS"),
    ],
)
def test_options_lists_the_methods_of_the_path(client, path: str, allowed: str) -> None:
    response = client.options(path)
    assert response.status_code == 204
    assert response.headers["allow"] == allowed
    assert response.content == b""
    # A method the path lacks is 405 with the same list (Starlette named the first route's).
    refused = client.put(path)
    assert refused.status_code == 405
    assert refused.headers["allow"] == allowed
    assert "PUT is not allowed" in refused.json()["detail"]


def test_an_unknown_path_is_404_for_options_too(client) -> None:
    assert client.options("/v1/nothing-here").status_code == 404


# (path, its template in the OpenAPI document)
BODY_OPERATIONS = [
    ("/v1/models/skinscreen-fusion/rollback", "/v1/models/{name}/rollback"),
    (
        "/v1/models/skinscreen-fusion/versions/19990101.000000/promote",
        "/v1/models/{name}/versions/{version}/promote",
    ),
    ("/v1/training-runs", "/v1/training-runs"),
    (f"/v1/screenings/{NIL}/diagnosis", "/v1/screenings/{screening_id}/diagnosis"),
]


@pytest.mark.parametrize(("path", "template"), BODY_OPERATIONS)
def test_an_unparsable_body_is_a_documented_400(client, database, path: str, template: str) -> None:
    """Not UTF-8: FastAPI answers 400 before any handler runs (this gateway asks no operator
    token, so nothing else stands in the way); the operation's OpenAPI lists the 400."""
    state = "SELECT (SELECT count(*) FROM model_activations), (SELECT count(*) FROM training_runs)"
    before = database.fetch(state)
    response = client.post(path, content=b"\xff\xfe{", headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert database.fetch(state) == before
    responses = client.get("/openapi.json").json()["paths"][template]["post"]["responses"]
    assert "400" in responses


@pytest.mark.usefixtures("nothing_created")
def test_broken_multipart_framing_is_a_documented_400(client) -> None:
    response = client.post(
        "/v1/screenings", content=b"garbage", headers={"Content-Type": "multipart/form-data"}
    )
    assert response.status_code == 400, response.text
    openapi = client.get("/openapi.json").json()
    assert "400" in openapi["paths"]["/v1/screenings"]["post"]["responses"]
