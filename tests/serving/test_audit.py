"""The audit trail in the session's real PostgreSQL: one event per action, with the key, its
clinic and the request id; readable by operators only, paged; append-only."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import asyncpg
import httpx
import pytest

from skinscreen.runtime.accounts import key_sha256
from tests.serving.conftest import Database, Keys, Photo, bearer


@pytest.fixture(scope="module")
def api(idle_gateway: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=idle_gateway, timeout=30) as client:
        yield client


def _key_id(database: Database, secret: str) -> str:
    return str(database.value("SELECT id FROM api_keys WHERE key_sha256 = $1", key_sha256(secret)))


def _events(database: Database, request_id: str) -> list[dict[str, Any]]:
    rows = database.fetch(
        "SELECT key_id::text, clinic_id::text, action, subject, details FROM audit_events"
        " WHERE request_id = $1 ORDER BY id",
        request_id,
    )
    return [{**dict(row), "details": json.loads(row["details"])} for row in rows]


def _rid(headers: dict[str, str]) -> tuple[str, dict[str, str]]:
    request_id = f"test-{uuid4()}"
    return request_id, {**headers, "X-Request-ID": request_id}


def test_one_event_per_action_with_key_clinic_and_request_id(
    api: httpx.Client, keys: Keys, database: Database, photos: list[Photo]
) -> None:
    operator_id = _key_id(database, keys.operator_key)

    rid, headers = _rid(keys.operator)
    made = api.post("/v1/clinics", json={"name": f"audited {uuid4()}"}, headers=headers)
    assert made.status_code == 201
    assert made.headers["X-Request-ID"] == rid
    clinic_id = made.json()["id"]
    assert [tuple(e.values())[:4] for e in _events(database, rid)] == [
        (operator_id, None, "clinic.created", clinic_id)
    ]

    rid, headers = _rid(keys.operator)
    key = api.post(
        f"/v1/clinics/{clinic_id}/keys", json={"scopes": ["clinician"]}, headers=headers
    ).json()
    (event,) = _events(database, rid)
    assert tuple(event.values())[:4] == (operator_id, None, "key.created", key["id"])
    assert key["key"] not in str(event["details"])  # never the secret
    clinician = bearer(key["key"])
    clinician_id = key["id"]

    def one(action: str, subject: str | None, answer: httpx.Response, rid: str) -> None:
        assert answer.status_code < 300, answer.text
        assert answer.headers["X-Request-ID"] == rid
        (event,) = _events(database, rid)
        assert tuple(event.values())[:4] == (clinician_id, clinic_id, action, subject)

    photo = photos[0]
    rid, headers = _rid(clinician)
    created = api.post(
        "/v1/screenings",
        files={"image": (photo.path.name, photo.path.read_bytes(), "image/jpeg")},
        data={"clinical": photo.clinical.model_dump_json()},
        headers=headers,
    )
    screening_id = created.json()["id"]
    one("screening.created", screening_id, created, rid)

    rid, headers = _rid(clinician)
    one(
        "screening.read",
        screening_id,
        api.get(f"/v1/screenings/{screening_id}", headers=headers),
        rid,
    )
    rid, headers = _rid(clinician)
    waited = api.get(f"/v1/screenings/{screening_id}", params={"wait": 0.1}, headers=headers)
    one("screening.waited", screening_id, waited, rid)
    rid, headers = _rid(clinician)
    one("screenings.listed", None, api.get("/v1/screenings", headers=headers), rid)
    assert _events(database, rid)[0]["details"]["ids"] == [screening_id]

    rid, headers = _rid(clinician)
    diagnosis = api.post(
        f"/v1/screenings/{screening_id}/diagnosis",
        json={"diagnosis": "NEV", "confirmed_by": "histopathology", "patient_id": "PAT-77"},
        headers=headers,
    )
    one("diagnosis.recorded", screening_id, diagnosis, rid)
    # No health data in the trail: neither the diagnosis nor the patient.
    (event,) = _events(database, rid)
    assert "NEV" not in str(event["details"])
    assert "PAT-77" not in str(event["details"])

    # A refused request leaves no event.
    rid, headers = _rid(clinician)
    assert api.get(f"/v1/screenings/{uuid4()}", headers=headers).status_code == 404
    assert _events(database, rid) == []

    rid, headers = _rid(keys.operator)
    assert api.delete(f"/v1/keys/{clinician_id}", headers=headers).status_code == 200
    assert [tuple(e.values())[:4] for e in _events(database, rid)] == [
        (operator_id, None, "key.revoked", clinician_id)
    ]

    # Operators read it through the API, by clinic, newest first, paged.
    first = api.get(
        "/v1/audit", params={"clinic": clinic_id, "limit": 2}, headers=keys.operator
    ).json()
    assert [e["action"] for e in first["items"]] == ["diagnosis.recorded", "screenings.listed"]
    second = api.get(
        "/v1/audit",
        params={"clinic": clinic_id, "limit": 10, "cursor": first["next_cursor"]},
        headers=keys.operator,
    ).json()
    assert [e["action"] for e in second["items"]] == [
        "screening.waited",
        "screening.read",
        "screening.created",
    ]
    assert second["next_cursor"] is None
    assert all(e["key_id"] == clinician_id for e in first["items"] + second["items"])
    only = api.get(
        "/v1/audit", params={"action": "key.revoked", "limit": 1}, headers=keys.operator
    ).json()
    assert only["items"][0]["subject"] == clinician_id


def test_a_request_id_is_made_when_none_or_a_bad_one_is_sent(api: httpx.Client, keys: Keys) -> None:
    made = api.get("/v1/screenings", headers=keys.clinician).headers["X-Request-ID"]
    bad = api.get(
        "/v1/screenings", headers={**keys.clinician, "X-Request-ID": "a b;" + "x" * 200}
    ).headers["X-Request-ID"]
    for request_id in (made, bad):
        assert len(request_id) == 32
        int(request_id, 16)
    assert made != bad


def test_only_operators_read_the_trail_and_bad_queries_name_the_field(
    api: httpx.Client, keys: Keys
) -> None:
    assert api.get("/v1/audit", headers=keys.clinician).status_code == 403
    for field, value in (("cursor", "x1"), ("action", "screening.eaten")):
        refused = api.get("/v1/audit", params={field: value}, headers=keys.operator)
        assert refused.status_code == 422
        assert refused.json()["detail"][0]["loc"] == ["query", field]


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_events SET action = 'screening.read'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
    ],
)
def test_the_trail_is_append_only(
    api: httpx.Client, keys: Keys, database: Database, statement: str
) -> None:
    api.get("/v1/screenings", headers=keys.clinician)  # at least one event
    before = database.value("SELECT count(*) FROM audit_events")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        database.fetch(statement)
    assert database.value("SELECT count(*) FROM audit_events") == before
