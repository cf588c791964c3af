"""Training runs and confirmed diagnoses through the API, carried out by a real trainer worker.

The runs are small (40 photos at 64 px, a couple of epochs) but real: PAD-UFES-20
photos plus screenings with a confirmed diagnosis, trained, exported,
published, registered and gated.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from skinscreen.runtime.queue import TRAINING_QUEUE
from skinscreen.runtime.stack import TRAINER_COMMAND
from tests.serving.conftest import Lifecycle, Photo, Process, _log_mentions, _wait_until, submit

pytestmark = [pytest.mark.data, pytest.mark.timeout(600)]

SMALL_RUN: dict[str, Any] = {
    "backbone": "efficientnet-lite0",
    "image_size": 64,
    "epochs": 2,
    "ensemble": 1,
    "views": 1,
    "folds": 2,
    "max_samples": 40,
    "data_sources": ["pad-ufes-20", "confirmed-screenings"],
}


@pytest.fixture(scope="module")
def client(lifecycle: Lifecycle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=lifecycle.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def trainer(lifecycle: Lifecycle) -> Iterator[Process]:
    process = Process(
        TRAINER_COMMAND, lifecycle.env, Path(lifecycle.env["RUNS_DIR"]).parent / "trainer.log"
    )
    process.start()
    _wait_until(lambda: _log_mentions(process.log, "ready."), 120, "trainer worker", process)
    yield process
    process.stop()


def queued_training_tasks(lifecycle: Lifecycle) -> int:
    redis = Redis.from_url(lifecycle.env["REDIS_URL"])
    try:
        return int(redis.llen(TRAINING_QUEUE))
    finally:
        redis.close()


def wait_for_run(
    client: httpx.Client, location: str, statuses: set[str], timeout_s: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        body: dict[str, Any] = client.get(location).json()
        if body["status"] in statuses:
            return body
        assert time.monotonic() < deadline, f"run still {body['status']}: {body['progress']}"
        time.sleep(0.5)


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (
            {"backbone": "vgg16"},
            "backbone",
            "'efficientnet-lite0', 'efficientnet-lite1', 'efficientnet-lite2', 'resnet50' or "
            "'simple-cnn'",
        ),
        ({"clinical_share": 1.5}, "clinical_share", "less than 1"),
        ({"clinical_share": 0}, "clinical_share", "greater than 0"),
        ({"epochs": 0}, "epochs", "greater than or equal to 1"),
        ({"data_sources": ["no-such-set"]}, "data_sources", "does not exist"),
        ({"learning_rate": 1}, "learning_rate", "Extra inputs are not permitted"),
    ],
)
def test_bad_training_requests_are_refused_and_nothing_is_queued(
    lifecycle: Lifecycle, client: httpx.Client, change: dict[str, Any], field: str, words: str
) -> None:
    runs_before = lifecycle.database.value("SELECT count(*) FROM training_runs")
    response = client.post("/v1/training-runs", json={**SMALL_RUN, **change})
    assert response.status_code == 422, response.text
    problems = response.json()["detail"]
    assert any(problem["loc"][:2] == ["body", field] for problem in problems), problems
    assert any(words in problem["msg"] for problem in problems), problems
    assert lifecycle.database.value("SELECT count(*) FROM training_runs") == runs_before
    assert queued_training_tasks(lifecycle) == 0


def test_missing_data_source_names_what_exists(client: httpx.Client) -> None:
    response = client.post("/v1/training-runs", json={"data_sources": ["pad-ufes-20", "nope"]})
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["body", "data_sources", 1]
    assert "available: " in problem["msg"]
    assert "pad-ufes-20" in problem["msg"]
    assert "confirmed-screenings" in problem["msg"]


def test_a_queued_run_can_be_cancelled(lifecycle: Lifecycle, client: httpx.Client) -> None:
    accepted = client.post("/v1/training-runs", json=SMALL_RUN)
    assert accepted.status_code == 202
    location = accepted.headers["Location"]
    cancelled = client.post(f"{location}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert (
        client.post("/v1/training-runs/00000000-0000-0000-0000-000000000000/cancel").status_code
        == 404
    )


def test_diagnoses_are_recorded_checked_and_replaced(
    lifecycle: Lifecycle, client: httpx.Client, photos: list[Photo]
) -> None:
    ids = []
    for photo in photos[:3]:
        response = submit(client, photo)
        ids.append(response.json()["id"])
    first = client.post(
        f"/v1/screenings/{ids[0]}/diagnosis",
        json={"diagnosis": "NEV", "confirmed_by": "clinical_consensus", "patient_id": "P1"},
    )
    assert first.status_code == 201, first.text
    replaced = client.post(
        f"/v1/screenings/{ids[0]}/diagnosis",
        json={"diagnosis": "BCC", "confirmed_by": "histopathology", "patient_id": "P1"},
    )
    assert replaced.status_code == 200
    assert client.get(f"/v1/screenings/{ids[0]}/diagnosis").json()["diagnosis"] == "BCC"
    second = client.post(
        f"/v1/screenings/{ids[1]}/diagnosis",
        json={"diagnosis": "SEK", "confirmed_by": "histopathology"},
    )
    assert second.json()["patient_id"] == ids[1]
    other = client.post(
        f"/v1/screenings/{ids[2]}/diagnosis",
        json={"diagnosis": "OTHER", "confirmed_by": "histopathology"},
    )
    assert other.status_code == 201

    bad = client.post(
        f"/v1/screenings/{ids[2]}/diagnosis",
        json={"diagnosis": "melanoma", "confirmed_by": "biopsy", "note": 1},
    )
    assert bad.status_code == 422
    fields = {tuple(problem["loc"]) for problem in bad.json()["detail"]}
    assert fields == {("body", "diagnosis"), ("body", "confirmed_by"), ("body", "note")}
    assert "'ACK', 'BCC', 'MEL', 'NEV', 'SCC', 'SEK' or 'OTHER'" in bad.text
    missing = client.post(
        "/v1/screenings/00000000-0000-0000-0000-000000000000/diagnosis",
        json={"diagnosis": "NEV", "confirmed_by": "histopathology"},
    )
    assert missing.status_code == 404
    assert lifecycle.database.value("SELECT count(*) FROM diagnoses") == 3


def test_a_run_trains_publishes_registers_and_is_gated(
    lifecycle: Lifecycle, client: httpx.Client, trainer: Process
) -> None:
    accepted = client.post("/v1/training-runs", json=SMALL_RUN, params={"requested_by": "test"})
    assert accepted.status_code == 202, accepted.text
    run = wait_for_run(client, accepted.headers["Location"], {"succeeded", "failed"}, 480)
    assert run["status"] == "succeeded", (run["failure_reason"], trainer.log.read_text()[-3000:])
    assert run["requested_by"] == "test"
    assert run["progress"] == {"stage": "done"}
    assert set(run["metrics"]) >= {"recall", "balanced_accuracy", "roc_auc"}

    version = client.get(f"/v1/models/skinscreen-fusion/versions/{run['candidate_version']}")
    assert version.status_code == 200
    assert version.json()["training_run_id"] == run["id"]
    card = lifecycle.database.value(
        "SELECT card FROM model_versions WHERE version = $1", run["candidate_version"]
    )
    assert "2 confirmed screenings, 1 left out (diagnosis OTHER)" in card

    active = client.get(f"/v1/models/skinscreen-fusion/versions/{lifecycle.shipped_version}").json()
    tolerance = 0.01
    expected = all(
        run["metrics"][metric]["mean"] >= active["cross_validation"][metric]["mean"] - tolerance
        for metric in ("recall", "balanced_accuracy")
    )
    assert run["promoted"] is expected
    assert version.json()["status"] == ("active" if expected else "candidate")
    assert ("kept as candidate" in run["promotion_reason"]) is not expected

    # The run cancelled while queued was skipped by the worker, not trained.
    statuses = lifecycle.database.fetch("SELECT status FROM training_runs")
    assert sorted(row["status"] for row in statuses) == ["cancelled", "succeeded"]


def test_a_running_run_stops_when_cancelled(
    lifecycle: Lifecycle, client: httpx.Client, trainer: Process
) -> None:
    accepted = client.post("/v1/training-runs", json={**SMALL_RUN, "epochs": 500, "folds": 5})
    location = accepted.headers["Location"]
    deadline = time.monotonic() + 120
    while "epoch" not in client.get(location).json()["progress"]:
        assert time.monotonic() < deadline, "the run never reached an epoch"
        time.sleep(0.3)
    assert client.post(f"{location}/cancel").json()["cancel_requested"] is True
    run = wait_for_run(client, location, {"cancelled", "failed", "succeeded"}, 60)
    assert run["status"] == "cancelled"
    assert run["candidate_version"] is None
    assert client.post(f"{location}/cancel").status_code == 200
