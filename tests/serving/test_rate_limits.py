"""Rate limits per API key, counted in the session's real Redis: a clinic with tiny limits
(the session's own are far higher, so the load tests are never refused)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Final
from uuid import uuid4

import httpx
import pytest

from tests.serving.conftest import Database, Keys, Photo, bearer, start_gateway

SCREENINGS_LIMIT: Final = 3
READS_LIMIT: Final = 5


@pytest.fixture(scope="module")
def api(idle_gateway: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=idle_gateway, timeout=30) as client:
        yield client


def _tiny_clinic(api: httpx.Client, keys: Keys) -> tuple[str, dict[str, str]]:
    made = api.post(
        "/v1/clinics",
        json={
            "name": f"tiny limits {uuid4()}",
            "rate_limit_screenings": f"{SCREENINGS_LIMIT}/minute",
            "rate_limit_reads": f"{READS_LIMIT}/minute",
        },
        headers=keys.operator,
    )
    assert made.status_code == 201, made.text
    assert made.json()["rate_limit_screenings"] == f"{SCREENINGS_LIMIT}/minute"
    clinic_id = made.json()["id"]
    key = api.post(
        f"/v1/clinics/{clinic_id}/keys", json={"scopes": ["clinician"]}, headers=keys.operator
    )
    assert key.status_code == 201, key.text
    return clinic_id, bearer(key.json()["key"])


def _post(api: httpx.Client, photo: Photo, headers: dict[str, str]) -> httpx.Response:
    return api.post(
        "/v1/screenings",
        files={"image": (photo.path.name, photo.path.read_bytes(), "image/jpeg")},
        data={"clinical": photo.clinical.model_dump_json()},
        headers=headers,
    )


def _blobs(blob_dir: Path) -> set[Path]:
    return {path for path in blob_dir.rglob("*") if path.is_file()}


def test_a_burst_over_the_limit_is_refused_and_stores_nothing(
    api: httpx.Client, keys: Keys, photos: list[Photo], database: Database, blob_dir: Path
) -> None:
    clinic_id, headers = _tiny_clinic(api, keys)
    blobs_before = _blobs(blob_dir)
    answers = [_post(api, photos[i], headers) for i in range(SCREENINGS_LIMIT + 2)]
    assert [a.status_code for a in answers] == [202] * SCREENINGS_LIMIT + [429, 429]
    first = answers[0]
    assert first.headers["RateLimit-Limit"] == str(SCREENINGS_LIMIT)
    assert first.headers["RateLimit-Remaining"] == str(SCREENINGS_LIMIT - 1)
    for refused in answers[SCREENINGS_LIMIT:]:
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert refused.headers["RateLimit-Remaining"] == "0"
        assert refused.headers["RateLimit-Limit"] == str(SCREENINGS_LIMIT)
        assert "screenings budget" in refused.json()["detail"]
    stored = database.value("SELECT count(*) FROM screenings WHERE clinic_id = $1", clinic_id)
    assert stored == SCREENINGS_LIMIT
    # One blob per accepted screening, none for the refused ones.
    assert len(_blobs(blob_dir) - blobs_before) == SCREENINGS_LIMIT

    # Reads have their own budget: the posts spent none of it.
    reads = [api.get("/v1/screenings", headers=headers) for _ in range(READS_LIMIT + 1)]
    assert [r.status_code for r in reads] == [200] * READS_LIMIT + [429]
    assert reads[0].headers["RateLimit-Remaining"] == str(READS_LIMIT - 1)
    assert "Retry-After" in reads[-1].headers

    # An operator raises the clinic's limits: the same key is served again at once.
    raised = api.patch(
        f"/v1/clinics/{clinic_id}",
        json={"rate_limit_reads": "1000/minute"},
        headers=keys.operator,
    )
    assert raised.status_code == 200, raised.text
    assert raised.json()["rate_limit_reads"] == "1000/minute"
    assert raised.json()["rate_limit_screenings"] == f"{SCREENINGS_LIMIT}/minute"
    again = api.get("/v1/screenings", headers=headers)
    assert again.status_code == 200
    assert again.headers["RateLimit-Limit"] == "1000"
    # ... and the screenings budget is still spent.
    assert _post(api, photos[0], headers).status_code == 429


def test_limits_are_per_clinic(api: httpx.Client, keys: Keys) -> None:
    _, tiny = _tiny_clinic(api, keys)
    for _ in range(READS_LIMIT):
        assert api.get("/v1/screenings", headers=tiny).status_code == 200
    assert api.get("/v1/screenings", headers=tiny).status_code == 429
    # The session's clinic has the (high) defaults.
    served = api.get("/v1/screenings", headers=keys.clinician)
    assert served.status_code == 200
    assert served.headers["RateLimit-Limit"] == "1000000"


@pytest.mark.parametrize(
    "body",
    [{"rate_limit_reads": "lots/minute"}, {"rate_limit_screenings": "0/minute"}, {"name": None}],
)
def test_a_bad_limit_is_refused_naming_the_field(
    api: httpx.Client, keys: Keys, body: dict[str, object]
) -> None:
    clinic_id, _ = _tiny_clinic(api, keys)
    refused = api.patch(f"/v1/clinics/{clinic_id}", json=body, headers=keys.operator)
    assert refused.status_code == 422, refused.text
    (field,) = body
    assert refused.json()["detail"][0]["loc"] == ["body", field]
    clinics = api.get("/v1/clinics", headers=keys.operator).json()["items"]
    (unchanged,) = [clinic for clinic in clinics if clinic["id"] == clinic_id]
    assert unchanged["rate_limit_reads"] == f"{READS_LIMIT}/minute"
    assert unchanged["rate_limit_screenings"] == f"{SCREENINGS_LIMIT}/minute"


def test_with_redis_down_reads_are_served_unlimited(
    stack_env: dict[str, str], keys: Keys, tmp_path: Path
) -> None:
    """Fail open: reads need only PostgreSQL; a screening is refused by the queue (503)."""
    env = {**stack_env, "REDIS_URL": "redis://127.0.0.1:9/0", "REDIS_TIMEOUT_S": "0.2"}
    process, url = start_gateway(env, tmp_path / "gateway.log")
    try:
        read = httpx.get(f"{url}/v1/screenings", headers=keys.clinician, timeout=30)
        assert read.status_code == 200, read.text
        assert "RateLimit-Limit" not in read.headers
    finally:
        process.stop()
    assert "rate limits not checked" in (tmp_path / "gateway.log").read_text()
