"""Clinic accounts: every /v1 request needs an API key; a key's scopes say what it may do; a
clinic sees only its own screenings, another clinic's read exactly as absent (404).

Two clinics (made through the management API by an operator) and an operator, on the
session's stack; keys are checked against the real database on every request.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from uuid import UUID, uuid4

import httpx
import pytest

from tests.conftest import DESIGN_EXAMPLE, REPO
from tests.serving.conftest import Database, Keys, Photo, bearer

MODEL: Final = "skinscreen-fusion"
NO_SUCH: Final = "00000000-0000-0000-0000-000000000000"


@dataclass
class Clinic:
    id: str
    key: str
    key_id: str

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.key)


@pytest.fixture(scope="module")
def api(idle_gateway: str) -> Iterator[httpx.Client]:
    """A client with no key of its own: each request says which key it sends."""
    with httpx.Client(base_url=idle_gateway, timeout=30) as client:
        yield client


def _clinic(api: httpx.Client, keys: Keys, name: str) -> Clinic:
    made = api.post("/v1/clinics", json={"name": name}, headers=keys.operator)
    assert made.status_code == 201, made.text
    clinic_id = made.json()["id"]
    key = api.post(
        f"/v1/clinics/{clinic_id}/keys",
        json={"scopes": ["clinician"], "name": "front desk"},
        headers=keys.operator,
    )
    assert key.status_code == 201, key.text
    return Clinic(clinic_id, key.json()["key"], key.json()["id"])


@pytest.fixture(scope="module")
def clinics(api: httpx.Client, keys: Keys) -> tuple[Clinic, Clinic]:
    suffix = uuid4().hex[:8]
    return _clinic(api, keys, f"Clinic A {suffix}"), _clinic(api, keys, f"Clinic B {suffix}")


def _screen(
    api: httpx.Client, photo: Photo, headers: dict[str, str], **extra: Any
) -> httpx.Response:
    return api.post(
        "/v1/screenings",
        files={"image": (photo.path.name, photo.path.read_bytes(), "image/jpeg")},
        data={"clinical": photo.clinical.model_dump_json()},
        headers={**headers, **extra},
    )


def _refused_401(response: httpx.Response, error: str | None = "invalid_token") -> str:
    assert response.status_code == 401, response.text
    challenge = response.headers["WWW-Authenticate"]
    assert challenge == ("Bearer" if error is None else f'Bearer error="{error}"')
    detail: str = response.json()["detail"]
    assert "Authorization: Bearer <key>" in detail or "ask an operator" in detail
    return detail


# --- Scopes: each allowed and refused

SWITCH: Final = {"requested_by": "t", "reason": "test"}
# (method, path, body): operations only an operator's key may call. None of these changes
# anything when allowed (no such version, run or clinic).
OPERATOR_ONLY: Final = [
    ("POST", f"/v1/models/{MODEL}/versions/19990101.000000/promote", SWITCH),
    ("POST", f"/v1/models/{MODEL}/rollback", SWITCH),
    ("GET", "/v1/training-runs", None),
    ("GET", f"/v1/training-runs/{NO_SUCH}", None),
    ("POST", f"/v1/training-runs/{NO_SUCH}/cancel", None),
    ("GET", "/v1/clinics", None),
    ("GET", f"/v1/clinics/{NO_SUCH}/keys", None),
    ("POST", f"/v1/clinics/{NO_SUCH}/keys", {"scopes": ["clinician"]}),
    ("DELETE", f"/v1/keys/{NO_SUCH}", None),
]


@pytest.mark.parametrize(("method", "path", "body"), OPERATOR_ONLY)
def test_a_clinicians_key_is_refused_operator_operations(
    api: httpx.Client, clinics: tuple[Clinic, Clinic], keys: Keys, method: str, path: str, body: Any
) -> None:
    refused = api.request(method, path, json=body, headers=clinics[0].headers)
    assert refused.status_code == 403, refused.text
    assert refused.headers["WWW-Authenticate"] == (
        'Bearer error="insufficient_scope", scope="operator"'
    )
    assert refused.json()["detail"] == (
        "this operation needs a key with the operator scope; this key has: clinician"
    )
    allowed = api.request(method, path, json=body, headers=keys.operator)
    # Past the key: the operation's own answer.
    assert allowed.status_code in (200, 404, 409), allowed.text


def test_an_operators_key_cannot_screen_but_reads_every_clinic(
    api: httpx.Client, clinics: tuple[Clinic, Clinic], keys: Keys, photos: list[Photo]
) -> None:
    refused = _screen(api, photos[0], keys.operator)
    assert refused.status_code == 403, refused.text
    assert "needs a key with the clinician scope" in refused.json()["detail"]
    accepted = [_screen(api, photos[i], clinic.headers) for i, clinic in enumerate(clinics)]
    assert all(response.status_code == 202 for response in accepted)
    ids = {response.json()["id"] for response in accepted}
    listed = api.get("/v1/screenings", params={"limit": 100}, headers=keys.operator).json()
    assert ids <= {item["id"] for item in listed["items"]}
    for response in accepted:
        read = api.get(response.headers["Location"], headers=keys.operator)
        assert read.status_code == 200
    only_a = api.get(
        "/v1/screenings", params={"limit": 100, "clinic": clinics[0].id}, headers=keys.operator
    ).json()["items"]
    assert accepted[0].json()["id"] in {item["id"] for item in only_a}
    assert accepted[1].json()["id"] not in {item["id"] for item in only_a}


def test_any_valid_key_reads_the_model_registry(
    api: httpx.Client, clinics: tuple[Clinic, Clinic], keys: Keys
) -> None:
    for headers in (clinics[0].headers, keys.operator):
        for path in (f"/v1/models/{MODEL}/versions", f"/v1/models/{MODEL}/activations"):
            assert api.get(path, headers=headers).status_code == 200
    _refused_401(api.get(f"/v1/models/{MODEL}/versions"), error=None)


# --- A clinic sees only its own screenings


def test_another_clinics_screening_reads_as_absent(
    api: httpx.Client, clinics: tuple[Clinic, Clinic], photos: list[Photo], database: Database
) -> None:
    mine, theirs = clinics
    accepted = _screen(api, photos[2], mine.headers)
    assert accepted.status_code == 202, accepted.text
    screening_id = accepted.json()["id"]
    assert (
        database.value("SELECT clinic_id::text FROM screenings WHERE id = $1", UUID(screening_id))
        == mine.id
    )
    location = accepted.headers["Location"]
    diagnosis = {"diagnosis": "BCC", "confirmed_by": "histopathology"}

    # Exactly as a screening that does not exist: same status, same words but for the id.
    absent = api.get(f"/v1/screenings/{uuid4()}", headers=theirs.headers)
    for response in (
        api.get(location, headers=theirs.headers),
        api.get(location, params={"wait": 1}, headers=theirs.headers),
    ):
        assert response.status_code == 404, response.text
        assert response.json()["detail"] == f"no screening with id {screening_id}"
        assert absent.json()["detail"].startswith("no screening with id ")
    recorded = api.post(f"{location}/diagnosis", json=diagnosis, headers=theirs.headers)
    assert recorded.status_code == 404, recorded.text
    assert api.get(f"{location}/diagnosis", headers=theirs.headers).status_code == 404
    assert database.value("SELECT count(*) FROM diagnoses WHERE screening_id = $1",
                          UUID(screening_id)) == 0  # fmt: skip

    their_list = api.get("/v1/screenings", params={"limit": 100}, headers=theirs.headers).json()
    assert screening_id not in {item["id"] for item in their_list["items"]}
    # Asking for another clinic's list gives nothing either.
    asked = api.get(
        "/v1/screenings", params={"limit": 100, "clinic": mine.id}, headers=theirs.headers
    )
    assert asked.status_code == 200
    assert asked.json() == {"items": [], "next_cursor": None}

    # Its own clinic reads, waits on, lists it and records its diagnosis.
    assert api.get(location, headers=mine.headers).status_code == 200
    assert api.get(location, params={"wait": 0.2}, headers=mine.headers).status_code == 200
    my_list = api.get("/v1/screenings", params={"limit": 100}, headers=mine.headers).json()
    assert screening_id in {item["id"] for item in my_list["items"]}
    assert {item["id"] for item in my_list["items"]} <= {
        str(row[0])
        for row in database.fetch("SELECT id FROM screenings WHERE clinic_id = $1", UUID(mine.id))
    }
    recorded = api.post(f"{location}/diagnosis", json=diagnosis, headers=mine.headers)
    assert recorded.status_code == 201, recorded.text
    assert api.get(f"{location}/diagnosis", headers=mine.headers).status_code == 200


def test_screenings_from_before_accounts_are_for_operators_only(
    api: httpx.Client, clinics: tuple[Clinic, Clinic], keys: Keys, database: Database
) -> None:
    legacy = uuid4()
    database.fetch(
        "INSERT INTO screenings (id, model_name, clinical, image_key, image_format, image_bytes,"
        " image_sha256) VALUES ($1, $2, $3::jsonb, 'none', 'JPEG', 1, 'x')",
        legacy, MODEL, json.dumps(DESIGN_EXAMPLE),
    )  # fmt: skip
    assert api.get(f"/v1/screenings/{legacy}", headers=keys.operator).status_code == 200
    assert api.get(f"/v1/screenings/{legacy}", headers=clinics[0].headers).status_code == 404


def test_idempotency_keys_are_each_clinics_own(
    api: httpx.Client, clinics: tuple[Clinic, Clinic], photos: list[Photo]
) -> None:
    key = {"Idempotency-Key": str(uuid4())}
    first = _screen(api, photos[3], clinics[0].headers, **key)
    # The same key from another clinic, even for another photo: a screening of its own.
    other = _screen(api, photos[4], clinics[1].headers, **key)
    assert first.status_code == other.status_code == 202, (first.text, other.text)
    assert first.json()["id"] != other.json()["id"]
    assert "Idempotent-Replayed" not in other.headers
    again = _screen(api, photos[3], clinics[0].headers, **key)
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"


# --- Missing, malformed, unknown, revoked and expired keys


@pytest.mark.parametrize(
    ("headers", "error", "words"),
    [
        ({}, None, "needs an API key"),
        ({"Authorization": "Basic dXNlcjpwdw=="}, "invalid_request", "malformed"),
        ({"Authorization": "Bearer"}, "invalid_request", "malformed"),
        ({"Authorization": "Bearer sk_live_" + "A" * 43}, "invalid_token", "not a valid key"),
        ({"Authorization": "Bearer not-a-key"}, "invalid_token", "not a valid key"),
    ],
)
def test_no_key_or_a_bad_one_is_401(
    api: httpx.Client, headers: dict[str, str], error: str | None, words: str
) -> None:
    for method, path in (("GET", "/v1/screenings"), ("GET", "/v1/clinics"),
                         ("POST", f"/v1/models/{MODEL}/rollback")):  # fmt: skip
        response = api.request(method, path, headers=headers, json=SWITCH)
        assert response.status_code == 401, response.text
        expected = "Bearer" if error is None else f'Bearer error="{error}"'
        assert response.headers["WWW-Authenticate"] == expected
        assert words in response.json()["detail"]


def test_a_revoked_key_is_refused_from_the_next_request(
    api: httpx.Client, clinics: tuple[Clinic, Clinic], keys: Keys
) -> None:
    made = api.post(
        f"/v1/clinics/{clinics[0].id}/keys", json={"scopes": ["clinician"]}, headers=keys.operator
    ).json()
    headers = bearer(made["key"])
    assert api.get("/v1/screenings", headers=headers).status_code == 200
    revoked = api.delete(f"/v1/keys/{made['id']}", headers=keys.operator)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked_at"] is not None
    assert "key" not in revoked.json()
    detail = _refused_401(api.get("/v1/screenings", headers=headers))
    assert "was revoked at" in detail
    # Revoking again changes nothing.
    again = api.delete(f"/v1/keys/{made['id']}", headers=keys.operator)
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]


def test_an_expired_key_is_refused(
    api: httpx.Client, clinics: tuple[Clinic, Clinic], keys: Keys, database: Database
) -> None:
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    made = api.post(
        f"/v1/clinics/{clinics[0].id}/keys",
        json={"scopes": ["clinician"], "expires_at": soon},
        headers=keys.operator,
    ).json()
    headers = bearer(made["key"])
    assert api.get("/v1/screenings", headers=headers).status_code == 200
    database.fetch(
        "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1",
        UUID(made["id"]),
    )
    detail = _refused_401(api.get("/v1/screenings", headers=headers))
    assert "expired at" in detail


def test_probes_and_docs_need_no_key_and_metrics_are_off_the_api_port(
    api: httpx.Client, gateway_metrics: str
) -> None:
    for path in ("/healthz", "/readyz", "/docs", "/openapi.json"):
        assert api.get(path).status_code == 200, path
    # The public port does not serve metrics at all; their own port (loopback by default,
    # the pod network behind a NetworkPolicy in Kubernetes) does, to Prometheus, with no key.
    assert api.get("/metrics").status_code == 404
    scrape = httpx.get(gateway_metrics, timeout=10)
    assert scrape.status_code == 200
    assert "skinscreen_gateway_requests_total" in scrape.text


# --- The management API


def test_clinics_and_keys_are_managed_by_operators(
    api: httpx.Client, keys: Keys, database: Database
) -> None:
    name = f"Posto de Saude {uuid4().hex[:6]}"
    made = api.post("/v1/clinics", json={"name": name}, headers=keys.operator)
    assert made.status_code == 201, made.text
    clinic = made.json()
    assert set(clinic) == {"id", "name", "created_at", "rate_limit_screenings", "rate_limit_reads"}
    # No limits of its own: the gateway's defaults (test_rate_limits.py sets some).
    assert clinic["rate_limit_screenings"] is None
    assert clinic["rate_limit_reads"] is None
    taken = api.post("/v1/clinics", json={"name": name}, headers=keys.operator)
    assert taken.status_code == 409
    assert "exists already" in taken.json()["detail"]
    listed = api.get("/v1/clinics", headers=keys.operator).json()["items"]
    assert clinic in listed

    created = api.post(
        f"/v1/clinics/{clinic['id']}/keys",
        json={"scopes": ["clinician", "operator"], "name": "lab"},
        headers=keys.operator,
    )
    assert created.status_code == 201, created.text
    key = created.json()
    assert key["key"].startswith("sk_live_")
    assert len(key["key"]) == 51
    assert key["prefix"] == key["key"][:12]
    assert key["scopes"] == ["clinician", "operator"]
    assert key["clinic_id"] == clinic["id"]

    items = api.get(f"/v1/clinics/{clinic['id']}/keys", headers=keys.operator).json()["items"]
    assert [item["id"] for item in items] == [key["id"]]
    assert "key" not in items[0]
    assert key["key"] not in json.dumps(items)

    # Stored as its SHA-256 only: the secret is in no column.
    row = database.fetch("SELECT * FROM api_keys WHERE id = $1", UUID(key["id"]))[0]
    assert bytes(row["key_sha256"]) == hashlib.sha256(key["key"].encode()).digest()
    assert not any(key["key"] in str(value) for value in row.values())
    assert (
        database.value(
            "SELECT count(*) FROM api_keys WHERE key_sha256 = sha256(convert_to($1, 'UTF8'))",
            key["key"],
        )
        == 1
    )

    for missing in (
        api.get(f"/v1/clinics/{NO_SUCH}/keys", headers=keys.operator),
        api.post(f"/v1/clinics/{NO_SUCH}/keys", json={"scopes": ["operator"]},
                 headers=keys.operator),
        api.delete(f"/v1/keys/{NO_SUCH}", headers=keys.operator),
    ):  # fmt: skip
        assert missing.status_code == 404, missing.text


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"scopes": ["admin"]}, ["body", "scopes", 0], "clinician"),
        ({"scopes": []}, ["body", "scopes"], "at least 1"),
        ({"scopes": ["operator", "operator"]}, ["body", "scopes"], "each scope at most once"),
        ({"scopes": ["operator"], "expires_at": "2001-01-01T00:00:00Z"}, ["body", "expires_at"],
         "must be in the future"),
        ({"scopes": ["operator"], "expires_at": "2099-01-01T00:00:00"}, ["body", "expires_at"],
         "timezone"),
        ({"scopes": ["operator"], "owner": "x"}, ["body", "owner"], "Extra inputs"),
    ],
)  # fmt: skip
def test_a_bad_key_request_names_its_field(
    api: httpx.Client, clinics: tuple[Clinic, Clinic], keys: Keys, body: Any, field: list[Any],
    words: str,
) -> None:  # fmt: skip
    response = api.post(f"/v1/clinics/{clinics[0].id}/keys", json=body, headers=keys.operator)
    assert response.status_code == 422, response.text
    problems = response.json()["detail"]
    assert any(p["loc"] == field and words in p["msg"] for p in problems), problems


# --- OpenAPI


def test_every_v1_operation_documents_its_key(api: httpx.Client) -> None:
    schema = api.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    operations = [
        (path, method, operation)
        for path, methods in schema["paths"].items()
        for method, operation in methods.items()
    ]
    for path, method, operation in operations:
        if not path.startswith("/v1/"):
            assert "security" not in operation, path
            continue
        (requirement,) = operation["security"]
        scopes = requirement["HTTPBearer"]
        assert "401" in operation["responses"], (method, path)
        assert ("403" in operation["responses"]) == bool(scopes), (method, path)
    security = {(p, m): op["security"][0]["HTTPBearer"] for p, m, op in operations
                if p.startswith("/v1/")}  # fmt: skip
    assert security[("/v1/screenings", "post")] == ["clinician"]
    assert security[("/v1/screenings/{screening_id}", "get")] == ["clinician", "operator"]
    assert security[("/v1/models/{name}/versions", "get")] == []
    assert security[("/v1/models/{name}/rollback", "post")] == ["operator"]
    assert security[("/v1/clinics", "post")] == ["operator"]


# --- skinscreen-gateway-admin ---


def _admin(stack_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "skinscreen.gateway.admin", *args],
        env=stack_env, cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_the_admin_command_makes_the_first_operator_key(
    api: httpx.Client, stack_env: dict[str, str], database: Database
) -> None:
    made = _admin(stack_env, "create-key", "--operator", "--name", "first operator")
    assert made.returncode == 0, made.stderr
    line = made.stdout.strip()
    assert line.startswith("API key (operator): sk_live_")
    key = line.removeprefix("API key (operator): ")
    assert api.get("/v1/clinics", headers=bearer(key)).status_code == 200
    assert (
        database.value(
            "SELECT count(*) FROM api_keys WHERE key_sha256 = $1",
            hashlib.sha256(key.encode()).digest(),
        )
        == 1
    )

    name = f"Clinica {uuid4().hex[:6]}"
    clinic = _admin(stack_env, "create-clinic", name)
    assert clinic.returncode == 0, clinic.stderr
    clinic_id = clinic.stdout.strip().rsplit(" ", 1)[-1]
    assert UUID(clinic_id)
    taken = _admin(stack_env, "create-clinic", name)
    assert taken.returncode == 1
    assert "exists already" in taken.stderr

    orphan = _admin(stack_env, "create-key", "--clinician")
    assert orphan.returncode == 1
    assert "--clinic" in orphan.stderr
    clinician = _admin(stack_env, "create-key", "--clinician", "--clinic", name)
    assert clinician.returncode == 0, clinician.stderr
    secret = clinician.stdout.strip().removeprefix(f"API key ({name}): ")
    assert api.get("/v1/screenings", headers=bearer(secret)).status_code == 200

    listed = _admin(stack_env, "list-keys", "--clinic", clinic_id)
    assert listed.returncode == 0
    assert secret[:12] in listed.stdout
    assert secret not in listed.stdout
    key_id = listed.stdout.split()[0]
    revoked = _admin(stack_env, "revoke-key", key_id)
    assert revoked.returncode == 0, revoked.stderr
    assert api.get("/v1/screenings", headers=bearer(secret)).status_code == 401
    bad = _admin(stack_env, "revoke-key", "nope")
    assert bad.returncode == 1
    assert "KEY_ID" in bad.stderr


def test_a_gateway_setting_operator_token_says_it_is_no_longer_read(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    from tests.serving.conftest import start_gateway

    log = tmp_path_factory.mktemp("logs") / "old-token-gateway.log"
    process, _ = start_gateway({**stack_env, "OPERATOR_TOKEN": "an-old-operator-token"}, log)
    try:
        from tests.waiting import wait_until

        wait_until(lambda: "OPERATOR_TOKEN is set but no longer read" in log.read_text(),
                   lambda: log.read_text()[-2000:], 30)  # fmt: skip
    finally:
        process.stop()
