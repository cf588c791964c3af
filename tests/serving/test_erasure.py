"""Erasure (DELETE /v1/screenings/{id}) on the session's real stack: no photo and no answers
left behind, a tombstone and the audit event stay; another clinic cannot erase; a screening a
published model could have trained on is refused unless an operator forces it; a worker that
gets an erased screening's task skips it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from skinscreen.runtime.queue import ScreeningTask, enqueue_screening, make_celery
from tests.serving.conftest import Database, Keys, Photo, create_keys

MODEL = "skinscreen-fusion"


@pytest.fixture(scope="module")
def client(gateway: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway, timeout=60) as client:
        yield client


def _screen(client: httpx.Client, photo: Photo, keys: Keys) -> str:
    accepted = client.post(
        "/v1/screenings",
        files={"image": (photo.path.name, photo.path.read_bytes(), "image/jpeg")},
        data={"clinical": photo.clinical.model_dump_json()},
        headers=keys.clinician,
    )
    assert accepted.status_code == 202, accepted.text
    screening_id: str = accepted.json()["id"]
    return screening_id


def _done(client: httpx.Client, screening_id: str, keys: Keys) -> None:
    read = client.get(f"/v1/screenings/{screening_id}", params={"wait": 30}, headers=keys.clinician)
    assert read.json()["status"] == "done", read.text


def _photo_path(database: Database, blob_dir: Path, screening_id: str) -> Path:
    key = database.value("SELECT image_key FROM screenings WHERE id = $1", uuid.UUID(screening_id))
    return blob_dir / key


def test_erasure_leaves_no_photo_and_no_answers(
    client: httpx.Client,
    keys: Keys,
    stack_env: dict[str, str],
    database: Database,
    blob_dir: Path,
    photos: list[Photo],
) -> None:
    screening_id = _screen(client, photos[0], keys)
    _done(client, screening_id, keys)
    photo = _photo_path(database, blob_dir, screening_id)
    assert photo.is_file()
    diagnosis = client.post(
        f"/v1/screenings/{screening_id}/diagnosis",
        json={"diagnosis": "NEV", "confirmed_by": "histopathology", "patient_id": "P-1"},
        headers=keys.clinician,
    )
    assert diagnosis.status_code == 201

    other = create_keys(stack_env["DATABASE_URL"], f"other clinic {uuid.uuid4()}")
    assert (
        client.delete(f"/v1/screenings/{screening_id}", headers=other.clinician).status_code == 404
    )
    assert photo.is_file()
    forced_by_clinician = client.delete(
        f"/v1/screenings/{screening_id}", params={"force": "true"}, headers=keys.clinician
    )
    assert forced_by_clinician.status_code == 403
    assert "force" in forced_by_clinician.json()["detail"]

    erased = client.delete(
        f"/v1/screenings/{screening_id}", headers={**keys.clinician, "X-Request-ID": "erase-1"}
    )
    assert erased.status_code == 200, erased.text
    assert erased.json()["forced_over"] == []
    assert not photo.exists()
    (row,) = database.fetch(
        "SELECT status, clinical, image_key, erased_at, cancer_probability FROM screenings"
        " WHERE id = $1",
        uuid.UUID(screening_id),
    )
    assert row["clinical"] is None
    assert row["image_key"] is None
    assert row["erased_at"] is not None
    assert row["status"] == "done"  # the tombstone keeps its status
    assert (
        database.value(
            "SELECT count(*) FROM diagnoses WHERE screening_id = $1", uuid.UUID(screening_id)
        )
        == 0
    )
    (event,) = database.fetch(
        "SELECT action, subject FROM audit_events WHERE request_id = 'erase-1'"
    )
    assert tuple(event) == ("screening.erased", screening_id)

    gone = client.get(f"/v1/screenings/{screening_id}", headers=keys.clinician)
    assert gone.status_code == 410
    assert "erased" in gone.json()["detail"]
    listed = client.get("/v1/screenings", params={"limit": 100}, headers=keys.clinician).json()
    assert screening_id not in [item["id"] for item in listed["items"]]
    assert (
        client.delete(f"/v1/screenings/{screening_id}", headers=keys.clinician).status_code == 410
    )


def test_a_queued_screening_erased_is_skipped_by_the_worker(
    client: httpx.Client,
    idle_gateway: str,
    keys: Keys,
    stack_env: dict[str, str],
    database: Database,
    photos: list[Photo],
) -> None:
    with httpx.Client(base_url=idle_gateway, timeout=60) as idle:
        screening_id = _screen(idle, photos[1], keys)
        assert (
            idle.delete(f"/v1/screenings/{screening_id}", headers=keys.operator).status_code == 200
        )
    (row,) = database.fetch(
        "SELECT status, failure_reason FROM screenings WHERE id = $1", uuid.UUID(screening_id)
    )
    assert tuple(row) == ("failed", "erased before it was screened")
    # Its task reaches a working worker after all: skipped, and the worker keeps screening.
    celery = make_celery("erasure-test", stack_env["REDIS_URL"], 60)
    try:
        enqueue_screening(
            celery, ScreeningTask(screening_id=uuid.UUID(screening_id), model_name=MODEL)
        )
    finally:
        celery.close()
    # Queued behind it, on the same queue: done means the erased one's task was consumed.
    _done(client, _screen(client, photos[2], keys), keys)
    (row,) = database.fetch(
        "SELECT status, clinical, image_key FROM screenings WHERE id = $1",
        uuid.UUID(screening_id),
    )
    assert tuple(row) == ("failed", None, None)


def test_a_screening_a_published_model_trained_on_needs_force(
    client: httpx.Client, keys: Keys, database: Database, blob_dir: Path, photos: list[Photo]
) -> None:
    screening_id = _screen(client, photos[3], keys)
    _done(client, screening_id, keys)
    recorded = client.post(
        f"/v1/screenings/{screening_id}/diagnosis",
        json={"diagnosis": "BCC", "confirmed_by": "histopathology"},
        headers=keys.clinician,
    )
    assert recorded.status_code == 201
    # A training run that started after the diagnosis, whose version was published.
    run_id, name = uuid.uuid4(), f"erasure-test-{uuid.uuid4().hex[:8]}"
    database.fetch(
        "INSERT INTO training_runs (id, status, config, requested_by, model_name,"
        " candidate_version, started_at, finished_at)"
        " VALUES ($1, 'succeeded', $2::jsonb, 'test', $3, 'v1', now(), now())",
        run_id,
        json.dumps({}),
        name,
    )
    database.fetch(
        "INSERT INTO model_versions (name, version, artifact_uri, sha256, card, status,"
        " training_run_id, promoted_by, promoted_at)"
        " VALUES ($1, 'v1', 'file:///nowhere', $2, '{}'::jsonb, 'retired', $3, 'test', now())",
        name,
        "0" * 64,
        run_id,
    )
    photo = _photo_path(database, blob_dir, screening_id)
    refused = client.delete(f"/v1/screenings/{screening_id}", headers=keys.clinician)
    assert refused.status_code == 409
    assert f"{name}@v1" in refused.json()["detail"]
    assert "force=true" in refused.json()["detail"]
    assert photo.is_file()
    assert client.get(f"/v1/screenings/{screening_id}", headers=keys.clinician).status_code == 200

    forced = client.delete(
        f"/v1/screenings/{screening_id}", params={"force": "true"}, headers=keys.operator
    )
    assert forced.status_code == 200, forced.text
    assert forced.json()["forced_over"] == [f"{name}@v1"]
    assert not photo.exists()
