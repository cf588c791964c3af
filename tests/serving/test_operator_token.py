"""With OPERATOR_TOKEN set, the operator endpoints need it; screenings and reads stay open."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import start_gateway

TOKEN = "a-long-enough-operator-token"
MODEL = "skinscreen-fusion"


@pytest.fixture(scope="module")
def guarded(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    """A second gateway on the same stack, with an operator token."""
    log = tmp_path_factory.mktemp("logs") / "guarded-gateway.log"
    process, url = start_gateway({**stack_env, "OPERATOR_TOKEN": TOKEN}, log)
    with httpx.Client(base_url=url, timeout=30) as client:
        yield client
    process.stop()


OPERATOR_CALLS = [
    (
        "POST",
        f"/v1/models/{MODEL}/versions/19990101.000000/promote",
        {"requested_by": "t", "reason": "test"},
    ),
    ("POST", f"/v1/models/{MODEL}/rollback", {"requested_by": "t", "reason": "test"}),
    ("POST", "/v1/training-runs", {"epochs": 1}),
    ("POST", "/v1/training-runs/00000000-0000-0000-0000-000000000000/cancel", None),
    (
        "POST",
        "/v1/screenings/00000000-0000-0000-0000-000000000000/diagnosis",
        {"diagnosis": "BCC", "confirmed_by": "histopathology"},
    ),
]


def _state(database) -> tuple[int, int, int]:
    return (
        database.value("SELECT count(*) FROM model_activations"),
        database.value("SELECT count(*) FROM training_runs"),
        database.value("SELECT count(*) FROM diagnoses"),
    )


@pytest.mark.parametrize(("method", "path", "body"), OPERATOR_CALLS)
def test_operator_endpoints_refuse_a_missing_or_wrong_token(
    guarded: httpx.Client, database, method: str, path: str, body: object
) -> None:
    before = _state(database)
    for headers, why in (({}, None), ({"Authorization": "Bearer not-the-token"}, "not it")):
        response = guarded.request(method, path, json=body, headers=headers)
        assert response.status_code == 401, response.text
        assert response.headers["WWW-Authenticate"] == "Bearer"
        detail = response.json()["detail"]
        assert "Authorization: Bearer <token>" in detail
        assert (why is not None) == ("the token sent is not it" in detail)
    assert _state(database) == before


def test_the_token_lets_an_operator_through(guarded: httpx.Client, database) -> None:
    before = _state(database)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    # Past the token check: the answer is the endpoint's own (no such version, nothing done).
    method, path, body = OPERATOR_CALLS[0]
    response = guarded.request(method, path, json=body, headers=headers)
    assert response.status_code == 404, response.text
    assert "19990101.000000" in response.json()["detail"]
    assert _state(database) == before


def test_screenings_and_reads_need_no_token(guarded: httpx.Client, photos) -> None:
    photo = photos[0]
    accepted = guarded.post(
        "/v1/screenings",
        files={"image": (photo.path.name, photo.path.read_bytes(), "image/jpeg")},
        data={"clinical": photo.clinical.model_dump_json()},
    )
    assert accepted.status_code == 202, accepted.text
    assert guarded.get(accepted.headers["Location"]).status_code == 200
    assert guarded.get(f"/v1/models/{MODEL}/versions").status_code == 200
    assert guarded.get("/v1/training-runs").status_code == 200


def test_the_openapi_schema_documents_the_token(guarded: httpx.Client) -> None:
    schema = guarded.get("/openapi.json").json()
    assert "HTTPBearer" in json.dumps(schema["components"]["securitySchemes"])
    rollback = schema["paths"]["/v1/models/{name}/rollback"]["post"]
    assert "401" in rollback["responses"]
    assert "security" not in schema["paths"]["/v1/screenings"]["post"]


def test_a_short_token_is_refused_at_start(tmp_path: Path, stack_env: dict[str, str]) -> None:
    probe = subprocess.run(
        [sys.executable, "-c", "from skinscreen.gateway.settings import Settings; Settings()"],
        env={**stack_env, "OPERATOR_TOKEN": "short"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert probe.returncode != 0
    assert "OPERATOR_TOKEN" in probe.stderr
    assert "at least 16 characters" in probe.stderr
