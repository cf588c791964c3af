"""A gateway whose broker is down, or whose model has no active version: /readyz says so
with 503, and a screening that cannot be queued is refused with 503, leaving nothing behind.

Real processes: the gateway is started with a REDIS_URL where no server listens (a port
that was free a moment ago), or with a MODEL_NAME the registry has no active version of.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from skinscreen.dev.embedded import free_port
from tests.serving.conftest import Database, Keys, Photo, Process, start_gateway, submit


def _gateway(env: dict[str, str], log: Path) -> Iterator[str]:
    process: Process | None = None
    try:
        process, url = start_gateway(env, log)
        yield url
    finally:
        if process is not None:
            process.stop()


@pytest.fixture(scope="module")
def brokerless_gateway(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    env = {**stack_env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    yield from _gateway(env, tmp_path_factory.mktemp("logs") / "brokerless-gateway.log")


@pytest.fixture(scope="module")
def unserved_model_gateway(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    env = {**stack_env, "MODEL_NAME": "skinscreen-not-published"}
    yield from _gateway(env, tmp_path_factory.mktemp("logs") / "unserved-gateway.log")


def _checks(url: str) -> tuple[int, dict[str, bool], dict[str, str]]:
    response = httpx.get(f"{url}/readyz", timeout=30)
    body = response.json()
    assert body["ready"] is (response.status_code == 200)
    checks = body["checks"]
    return (
        response.status_code,
        {name: check["ok"] for name, check in checks.items()},
        {name: check["detail"] for name, check in checks.items()},
    )


def test_readyz_is_503_when_the_broker_is_down(brokerless_gateway: str) -> None:
    status, ok, detail = _checks(brokerless_gateway)
    assert status == 503
    assert ok == {"database": True, "broker": False, "model": True, "notifications": True}
    assert detail["broker"].startswith("Redis: ")
    # Alive all the same: Kubernetes must take it out of the Service, not restart it.
    assert httpx.get(f"{brokerless_gateway}/healthz", timeout=30).status_code == 200


def test_readyz_is_503_without_an_active_model(unserved_model_gateway: str) -> None:
    status, ok, detail = _checks(unserved_model_gateway)
    assert status == 503
    assert ok == {"database": True, "broker": True, "model": False, "notifications": True}
    assert "no active version of skinscreen-not-published" in detail["model"]


@pytest.mark.data
def test_a_screening_that_cannot_be_queued_is_503_and_leaves_nothing(
    brokerless_gateway: str,
    photos: list[Photo],
    database: Database,
    blob_dir: Path,
    keys: Keys,
) -> None:
    """Stored first (blob, row), then queued: when queueing fails both are removed again."""

    def snapshot() -> tuple[int, int]:
        rows = database.value("SELECT count(*) FROM screenings")
        blobs = sum(1 for path in blob_dir.rglob("*") if path.is_file())
        return rows, blobs

    before = snapshot()
    with httpx.Client(base_url=brokerless_gateway, headers=keys.clinician, timeout=120) as client:
        response = submit(client, photos[0])
    assert response.status_code == 503, response.text
    assert response.json()["detail"] == "the screening queue is unavailable; try again later"
    assert "Location" not in response.headers
    assert snapshot() == before
