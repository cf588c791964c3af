"""Training runs and confirmed diagnoses through the API, carried out by a real trainer worker.

The runs are small (40 photos at 64 px, a couple of epochs) but real: PAD-UFES-20
photos plus screenings with a confirmed diagnosis, trained, exported,
published, registered and gated; and the image-only model, retrained on HAM10000
images by its own recipe through the same API, worker and gate.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from skinscreen.core.card import MODEL_FILE
from skinscreen.runtime import registry
from skinscreen.runtime.accounts import Scope
from skinscreen.runtime.commands import TRAINER_COMMAND
from skinscreen.runtime.queue import TRAINING_QUEUE
from tests.scrape import Scrape
from tests.serving.conftest import (
    MODEL_NAME,
    Launcher,
    Lifecycle,
    Photo,
    Process,
    _log_mentions,
    _wait_until,
    bearer,
    create_key,
    served_model,
    submit,
    wait_until_served,
)
from tests.serving.variants import run
from tests.test_training_cli import run_light_probe
from tests.waiting import wait_until

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
IMAGE_ONLY = "skinscreen-dermoscopy"
# The image-only model's recipe, as small: 100 HAM10000 images at 64 px, 2 epochs on the
# split, 2 lesion-grouped folds of 1 epoch (seconds on 2 cores).
SMALL_IMAGE_ONLY_RUN: dict[str, Any] = {
    "model_name": IMAGE_ONLY,
    "image_size": 64,
    "epochs": 2,
    "cv_epochs": 1,
    "folds": 2,
    "max_samples": 100,
    "data_sources": ["ham10000"],
}


@pytest.fixture(scope="module")
def client(lifecycle: Lifecycle) -> Iterator[httpx.Client]:
    """A key with both scopes: the tests screen, record diagnoses and start training runs."""
    key = create_key(
        lifecycle.env["DATABASE_URL"], lifecycle.keys.clinic_id, Scope.CLINICIAN, Scope.OPERATOR
    )
    with httpx.Client(base_url=lifecycle.url, headers=bearer(key), timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def trainer(lifecycle: Lifecycle, launcher: Launcher) -> Iterator[Process]:
    process = launcher.trainer(
        lifecycle.env, Path(lifecycle.env["RUNS_DIR"]).parent / "trainer.log"
    )
    process.start()
    _wait_until(lambda: _log_mentions(process.log, "ready."), 180, "trainer worker", process)
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
    seen: dict[str, Any] = {}

    def finished() -> dict[str, Any] | None:
        seen.update(client.get(location).json())
        return dict(seen) if seen["status"] in statuses else None

    body = wait_until(
        finished,
        lambda: f"run still {seen.get('status')}: {seen.get('progress')}",
        timeout_s,
        interval_s=0.5,
    )
    assert body is not None
    return body


def trainer_scrape(trainer: Process) -> Scrape:
    return Scrape(f"http://127.0.0.1:{trainer.env['METRICS_PORT']}/metrics")


def arrange_active(
    lifecycle: Lifecycle, version: str, recall: float, balanced: float, name: str = MODEL_NAME
) -> None:
    """Make `name`'s active version one whose card's cross-validated recall and balanced
    accuracy are the given ones: its active model under another version, its card's figures
    set. The gate reads them from the registry; promoted through the API, so it is announced."""
    model_path, card = served_model(lifecycle.database, name)
    source = model_path.parent
    figures = {"recall": recall, "balanced_accuracy": balanced}
    cross_validation = {
        metric: card.cross_validation[metric].model_copy(update={"mean": mean})
        for metric, mean in figures.items()
    }
    arranged = card.model_copy(update={"version": version, "cross_validation": cross_validation})
    uri = lifecycle.store.publish(source / MODEL_FILE, arranged)
    run(lifecycle, lambda pool: registry.register(pool, arranged, uri))
    promoted = httpx.post(
        f"{lifecycle.url}/v1/models/{name}/versions/{version}/promote",
        json={"reason": "the gate's reference", "requested_by": "test"},
        headers=lifecycle.keys.operator,
    )
    assert promoted.status_code == 200, promoted.text


def confirm_diagnoses(client: httpx.Client, photos: list[Photo]) -> None:
    """Confirmed diagnoses of the test's own, so the run's confirmed-screenings source is
    never empty, whichever tests ran before: one usable, one OTHER (left out)."""
    for photo, diagnosis in zip(photos, ("BCC", "OTHER"), strict=True):
        screening = submit(client, photo).json()["id"]
        recorded = client.post(
            f"/v1/screenings/{screening}/diagnosis",
            json={"diagnosis": diagnosis, "confirmed_by": "histopathology"},
        )
        assert recorded.status_code == 201, recorded.text


def train(
    lifecycle: Lifecycle,
    client: httpx.Client,
    trainer: Process,
    request: dict[str, Any] = SMALL_RUN,
) -> tuple[dict[str, Any], str]:
    """One small run (SMALL_RUN unless told) through the API to its end; the run and the
    card's data description."""
    accepted = client.post("/v1/training-runs", json=request, params={"requested_by": "test"})
    assert accepted.status_code == 202, accepted.text
    run_ = wait_for_run(client, accepted.headers["Location"], {"succeeded", "failed"}, 540)
    assert run_["status"] == "succeeded", (
        run_["failure_reason"],
        trainer.log.read_text()[-3000:],
    )
    assert run_["requested_by"] == "test"
    assert run_["progress"] == {"stage": "done"}
    assert set(run_["metrics"]) >= {"recall", "balanced_accuracy", "roc_auc"}
    card = lifecycle.database.value(
        "SELECT card FROM model_versions WHERE name = $1 AND version = $2",
        run_["model_name"],
        run_["candidate_version"],
    )
    return run_, card


def expected_sources(lifecycle: Lifecycle) -> str:
    """How the card describes the confirmed screenings the run was given."""
    rows = lifecycle.database.fetch(
        "SELECT d.diagnosis = 'OTHER' AS other, count(*) FROM diagnoses d"
        " JOIN screenings s ON s.id = d.screening_id GROUP BY 1"
    )
    counts = {row["other"]: row["count"] for row in rows}
    other = f", {counts[True]} left out (diagnosis OTHER)" if counts.get(True) else ""
    return f"{counts.get(False, 0)} confirmed screenings{other}"


def check_trainer_metrics(
    lifecycle: Lifecycle, trainer: Process, before: Scrape, run_: dict[str, Any]
) -> None:
    """The trainer's /metrics after the real run: one more success, its duration, and the
    scores of its card, as the run reports them."""
    after = trainer_scrape(trainer)
    runs = "skinscreen_trainer_runs_total"
    assert after.value(runs, outcome="succeeded") == before.count(runs, outcome="succeeded") + 1
    duration = "skinscreen_trainer_run_duration_seconds"
    assert after.value(f"{duration}_count", outcome="succeeded") == (
        before.count(f"{duration}_count", outcome="succeeded") + 1
    )
    took = after.value(f"{duration}_sum", outcome="succeeded") - before.count(
        f"{duration}_sum", outcome="succeeded"
    )
    started, finished = lifecycle.database.fetch(
        "SELECT extract(epoch FROM started_at)::float8, extract(epoch FROM finished_at)::float8"
        " FROM training_runs WHERE id = $1::uuid",
        run_["id"],
    )[0]
    # Measured from the claim to the end, inside the span the run's row records (the row's
    # times are the database's; a second of slack for the two clocks).
    assert 0 < took <= finished - started + 1
    stamp = after.value(
        "skinscreen_trainer_last_run_finished_timestamp_seconds", outcome="succeeded"
    )
    assert started - 1 <= stamp <= finished + 1
    ratio = "skinscreen_trainer_last_run_metric_ratio"
    for metric, summary in run_["metrics"].items():
        assert after.value(ratio, metric=metric, statistic="mean") == pytest.approx(
            summary["mean"]
        ), metric
        assert after.value(ratio, metric=metric, statistic="std") == pytest.approx(
            summary["std"]
        ), metric


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
    tasks_before = queued_training_tasks(lifecycle)
    response = client.post("/v1/training-runs", json={**SMALL_RUN, **change})
    assert response.status_code == 422, response.text
    problems = response.json()["detail"]
    assert any(problem["loc"][:2] == ["body", field] for problem in problems), problems
    assert any(words in problem["msg"] for problem in problems), problems
    assert lifecycle.database.value("SELECT count(*) FROM training_runs") == runs_before
    assert queued_training_tasks(lifecycle) == tasks_before


def test_missing_data_source_names_what_exists(client: httpx.Client) -> None:
    response = client.post("/v1/training-runs", json={"data_sources": ["pad-ufes-20", "nope"]})
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["body", "data_sources", 1]
    assert "available: " in problem["msg"]
    assert "pad-ufes-20" in problem["msg"]
    assert "confirmed-screenings" in problem["msg"]


def test_diagnoses_are_recorded_checked_and_replaced(
    lifecycle: Lifecycle, client: httpx.Client, photos: list[Photo]
) -> None:
    diagnoses_before = lifecycle.database.value("SELECT count(*) FROM diagnoses")
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
    assert lifecycle.database.value("SELECT count(*) FROM diagnoses") == diagnoses_before + 3


def test_a_run_that_must_be_promoted_is_promoted_and_served(
    lifecycle: Lifecycle, client: httpx.Client, trainer: Process, photos: list[Photo]
) -> None:
    """The active version's card claims recall 0 and balanced accuracy 0: any candidate is
    at least as good, so the gate must promote it, announce it, and workers serve it."""
    arrange_active(lifecycle, "20000101.000010", recall=0.0, balanced=0.0)
    confirm_diagnoses(client, photos[3:5])
    sources = expected_sources(lifecycle)
    before = trainer_scrape(trainer)

    run_, card = train(lifecycle, client, trainer)
    assert sources in card
    candidate = run_["candidate_version"]
    assert run_["promoted"] is True
    assert run_["promotion_reason"].startswith("not worse than version 20000101.000010 beyond")
    version = client.get(f"/v1/models/{MODEL_NAME}/versions/{candidate}").json()
    assert version["training_run_id"] == run_["id"]
    assert version["status"] == "active"
    history = client.get(f"/v1/models/{MODEL_NAME}/activations").json()["items"]
    assert (history[-1]["version"], history[-1]["previous_version"]) == (
        candidate,
        "20000101.000010",
    )
    assert history[-1]["actor"] == f"promotion-gate (training run {run_['id']})"
    # Announced by the trainer: the worker (which does not poll) switches and scores with it.
    wait_until_served(lifecycle.worker, candidate)
    screening = submit(client, photos[0])
    result = client.get(screening.headers["Location"], params={"wait": 30}).json()
    assert result["status"] == "done", result
    assert result["result"]["model_version"] == candidate
    check_trainer_metrics(lifecycle, trainer, before, run_)


def test_a_run_that_must_not_be_promoted_is_kept_as_candidate(
    lifecycle: Lifecycle, client: httpx.Client, trainer: Process
) -> None:
    """The active version's card claims perfect recall and balanced accuracy: a 40-photo,
    2-epoch run falls short by more than the tolerance, so it must stay a candidate."""
    arrange_active(lifecycle, "20000101.000020", recall=1.0, balanced=1.0)
    before = trainer_scrape(trainer)

    run_, _ = train(lifecycle, client, trainer)
    candidate = run_["candidate_version"]
    assert run_["promoted"] is False
    assert run_["promotion_reason"].startswith(
        "kept as candidate: worse than active version 20000101.000020 by more than the tolerance: "
    )
    version = client.get(f"/v1/models/{MODEL_NAME}/versions/{candidate}").json()
    assert version["training_run_id"] == run_["id"]
    assert version["status"] == "candidate"
    active = client.get(f"/v1/models/{MODEL_NAME}/versions/20000101.000020").json()
    assert active["status"] == "active"
    check_trainer_metrics(lifecycle, trainer, before, run_)


def test_running_and_queued_runs_stop_when_cancelled(
    lifecycle: Lifecycle, client: httpx.Client, trainer: Process
) -> None:
    """A run cancelled while it trains stops at its next epoch; one cancelled while queued
    behind it is skipped by the worker when its turn comes, never trained."""
    accepted = client.post("/v1/training-runs", json={**SMALL_RUN, "epochs": 500, "folds": 5})
    location = accepted.headers["Location"]
    wait_until(
        lambda: "epoch" in client.get(location).json()["progress"],
        "the run reaches an epoch",
    )
    # The worker runs one at a time: this one waits in the queue behind the running one.
    queued = client.post("/v1/training-runs", json=SMALL_RUN)
    assert queued.status_code == 202
    cancelled = client.post(f"{queued.headers['Location']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"

    assert client.post(f"{location}/cancel").json()["cancel_requested"] is True
    run_ = wait_for_run(client, location, {"cancelled", "failed", "succeeded"}, 120)
    assert run_["status"] == "cancelled"
    assert run_["candidate_version"] is None
    assert client.post(f"{location}/cancel").status_code == 200

    queued_id = queued.json()["id"]
    wait_until(
        lambda: (
            f"run {queued_id} is not queued (cancelled, or taken); skipped"
            in trainer.log.read_text()
        ),
        "the worker skips the run cancelled while queued",
    )
    skipped = lifecycle.database.fetch(
        "SELECT status, started_at FROM training_runs WHERE id = $1::uuid", queued_id
    )[0]
    assert (skipped["status"], skipped["started_at"]) == ("cancelled", None)
    assert (
        client.post("/v1/training-runs/00000000-0000-0000-0000-000000000000/cancel").status_code
        == 404
    )
    # The audit trail: the queued run was requested and cancelled, once each, by this key.
    events = lifecycle.database.fetch(
        "SELECT action, key_id FROM audit_events WHERE subject = $1 ORDER BY id", queued_id
    )
    assert [event["action"] for event in events] == [
        "training_run.requested",
        "training_run.cancelled",
    ]
    assert len({event["key_id"] for event in events}) == 1
    assert events[0]["key_id"] is not None


def test_runs_left_running_by_a_dead_worker_fail_when_a_trainer_starts(
    lifecycle: Lifecycle, client: httpx.Client
) -> None:
    """Rows 'running' whose heartbeat stopped longer ago than STALE_RUN_S are failed by the
    next trainer worker to start, with the reason; a run whose heartbeat is fresh is not."""
    stale, fresh = uuid.uuid4(), uuid.uuid4()
    for run_id, silent_s in ((stale, 3600), (fresh, 0)):
        lifecycle.database.fetch(
            "INSERT INTO training_runs (id, status, config, requested_by, model_name,"
            " started_at, heartbeat_at) VALUES ($1, 'running', $2::jsonb, 'test', $3,"
            " now() - make_interval(secs => $4), now() - make_interval(secs => $4))",
            run_id,
            json.dumps(SMALL_RUN),
            MODEL_NAME,
            float(silent_s),
        )
    env = {**lifecycle.env, "STALE_RUN_S": "600"}
    folder = Path(lifecycle.env["RUNS_DIR"]).parent
    process = Process(TRAINER_COMMAND, env, folder / f"trainer-{stale}.log")
    process.start()
    try:
        _wait_until(lambda: _log_mentions(process.log, "ready."), 180, "trainer worker", process)
        wait_until(
            lambda: client.get(f"/v1/training-runs/{stale}").json()["status"] == "failed",
            "the stale run is failed",
        )
        failed = client.get(f"/v1/training-runs/{stale}").json()
        assert failed["failure_reason"] == (
            "the trainer worker running it stopped (no heartbeat for 600 s)"
        )
        assert failed["finished_at"] is not None
        # One statement failed every stale run at once: the fresh one was left running.
        assert client.get(f"/v1/training-runs/{fresh}").json()["status"] == "running"
        assert _log_mentions(process.log, "1 orphaned training run(s) marked failed")
    finally:
        process.stop()
        lifecycle.database.fetch(
            "DELETE FROM training_runs WHERE id = ANY($1::uuid[])", [stale, fresh]
        )


def test_both_served_models_are_retrained_through_the_api_and_promoted(
    lifecycle: Lifecycle, client: httpx.Client, trainer: Process
) -> None:
    """Each served model, named in the request, is trained by its own recipe in the worker,
    evaluated, published, registered and passed by the gate: the fusion model on PAD-UFES-20,
    the image-only model on HAM10000 (a card that takes the photo alone)."""
    fusion_request = {**SMALL_RUN, "repeats": 1, "data_sources": ["pad-ufes-20"]}
    for name, request, version in (
        (MODEL_NAME, fusion_request, "20000101.000030"),
        (IMAGE_ONLY, SMALL_IMAGE_ONLY_RUN, "20000101.000031"),
    ):
        arrange_active(lifecycle, version, recall=0.0, balanced=0.0, name=name)
        run_, card_json = train(lifecycle, client, trainer, request)
        card = json.loads(card_json) if isinstance(card_json, str) else card_json
        assert run_["model_name"] == card["name"] == name
        assert run_["promoted"] is True, run_["promotion_reason"]
        assert run_["promotion_reason"].startswith(f"not worse than version {version} beyond")
        candidate = run_["candidate_version"]
        registered = client.get(f"/v1/models/{name}/versions/{candidate}").json()
        assert (registered["status"], registered["training_run_id"]) == ("active", run_["id"])
        history = client.get(f"/v1/models/{name}/activations").json()["items"]
        assert (history[-1]["version"], history[-1]["previous_version"]) == (candidate, version)
        # The run's metrics are its card's cross-validated figures, which the gate compared.
        assert set(run_["metrics"]) >= {"recall", "balanced_accuracy", "roc_auc"}
        assert run_["metrics"]["recall"]["mean"] == card["cross_validation"]["recall"]["mean"]
        if name == IMAGE_ONLY:
            assert card["inputs"] == ["image"]
            assert card["input_size"] == 64
            assert card["backbone"] == "dermoscopy-cnn-3-blocks"
            assert card["data_description"].startswith("HAM10000 at ")
        else:
            assert card["inputs"] == ["image", "clinical"]


def test_the_registry_is_listed_without_loading_torch(lifecycle: Lifecycle) -> None:
    """`skinscreen-trainer models list` against the stack's real registry: both served models'
    shipped versions, and neither torch nor ONNX Runtime loaded."""
    result = run_light_probe(["models", "list"], env=lifecycle.env)
    assert result["code"] == 0, result
    assert result["loaded"] == []
    for name in (MODEL_NAME, IMAGE_ONLY):
        assert f"{name} " in result["stdout"], result["stdout"]
