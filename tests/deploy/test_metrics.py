"""Every /metrics endpoint, scraped after real traffic through real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from redis import Redis

from skinscreen.dev.embedded import free_port
from skinscreen.gateway.queue_metrics import screening_id_of
from skinscreen.runtime.commands import WORKER_COMMAND
from skinscreen.runtime.queue import QUEUE
from tests.conftest import DESIGN_EXAMPLE, REPO
from tests.serving.conftest import Database, Process, create_keys, start_worker
from tests.waiting import wait_until

from .conftest import Scrape, photo, start_gateway, submit

ACCEPTED = 3


@dataclass
class Stack:
    env: dict[str, str]
    gateway: str
    # The gateway's /metrics, on its own port (METRICS_PORT), apart from the API's.
    gateway_metrics: str
    multiproc_dir: Path
    database: Database
    folder: Path
    # A clinician's API key, as headers.
    headers: dict[str, str]


@pytest.fixture(scope="module")
def stack(deploy_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A gateway as its Deployment runs it: two uvicorn workers sharing a metrics folder."""
    folder = tmp_path_factory.mktemp("metrics")
    multiproc_dir = folder / "prometheus"
    multiproc_dir.mkdir()
    env = {**deploy_env, "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)}
    gateway, url = start_gateway(env, folder / "gateway.log", "--workers", "2")
    keys = create_keys(env["DATABASE_URL"])
    metrics = f"http://127.0.0.1:{gateway.env['METRICS_PORT']}/metrics"
    yield Stack(
        env, url, metrics, multiproc_dir, Database(env["DATABASE_URL"]), folder, keys.clinician
    )
    gateway.stop()


def _fresh_connection_get(url: str) -> int:
    # A new connection each time, so the two uvicorn workers both get some requests.
    return httpx.get(url, headers={"Connection": "close"}, timeout=10).status_code


def _worker_pids(folder: Path) -> set[str]:
    return {path.stem.rsplit("_", 1)[-1] for path in folder.glob("*.db")}


REQUESTS = "skinscreen_gateway_requests_total"
POST = {"route": "/v1/screenings", "method": "POST"}
DURATION = "skinscreen_gateway_request_duration_seconds_count"
REJECTIONS = "skinscreen_gateway_rejected_inputs_total"
# (name, labels) of every counter the first test reads, before and after its traffic.
GATEWAY_COUNTERS: list[tuple[str, dict[str, str]]] = [
    (REQUESTS, {**POST, "status": "202"}),
    (REQUESTS, {**POST, "status": "422"}),
    (REQUESTS, {**POST, "status": "415"}),
    (REQUESTS, {"route": "/healthz", "method": "GET"}),
    (REQUESTS, {"route": "/v1/screenings", "method": "GET", "status": "200"}),
    (DURATION, POST),
    (REJECTIONS, {"reason": "less_than_equal", "field": "clinical.age"}),
    (REJECTIONS, {"reason": "enum", "field": "clinical.region"}),
    (REJECTIONS, {"reason": "extra_forbidden", "field": "clinical.*"}),
    (REJECTIONS, {"reason": "unsupported_type", "field": "image"}),
    (REJECTIONS, {"reason": "extra_forbidden", "field": "*"}),
    (REJECTIONS, {}),
    ("skinscreen_gateway_upload_size_bytes_count", {}),
    ("skinscreen_gateway_upload_size_bytes_sum", {}),
    ("skinscreen_queue_depth_tasks", {"queue": "screenings"}),
]


def _head_age_s(stack: Stack) -> float:
    """How long the next screening a worker takes has waited, on the database's clock."""
    broker = Redis.from_url(stack.env["REDIS_URL"])
    try:
        head = broker.lindex(QUEUE, -1)
    finally:
        broker.close()
    assert head is not None, "the queue is empty"
    screening_id = screening_id_of(head)
    assert screening_id is not None
    waited: float = stack.database.value(
        "SELECT extract(epoch FROM clock_timestamp() - created_at)::float8 FROM screenings"
        " WHERE id = $1",
        screening_id,
    )
    return waited


def test_gateway_metrics_add_up_over_both_workers_and_show_the_queue(
    stack: Stack, request: pytest.FixtureRequest
) -> None:
    """Counted over both uvicorn workers: what this test sent, on top of whatever the
    module's other tests sent before it (read first, so any order works)."""
    before = Scrape(stack.gateway_metrics)
    counted = {(name, tuple(labels.items())): before.count(name, **labels)
               for name, labels in GATEWAY_COUNTERS}  # fmt: skip

    def added(scrape: Scrape, name: str, **labels: str) -> float:
        return scrape.value(name, **labels) - counted[(name, tuple(labels.items()))]

    client = httpx.Client(
        base_url=stack.gateway, timeout=30, headers={**stack.headers, "Connection": "close"}
    )
    request.addfinalizer(client.close)
    uploaded = 0
    for seed in range(ACCEPTED):
        response = submit(client, seed)
        assert response.status_code == 202, response.text
        uploaded += int(response.request.headers["content-length"])
    bad_clinical = {**DESIGN_EXAMPLE, "age": 130, "region": "ELBOW", "smoker": True}
    rejected = [
        client.post(
            "/v1/screenings",
            files={"image": ("a.jpg", photo(7), "image/jpeg")},
            data={"clinical": json.dumps(bad_clinical)},
        ),
        client.post(
            "/v1/screenings",
            files={"image": ("notes.txt", b"not a photo at all", "text/plain")},
            data={"clinical": json.dumps(DESIGN_EXAMPLE)},
        ),
        client.post(
            "/v1/screenings",
            files={"image": ("a.jpg", photo(8), "image/jpeg")},
            data={"clinical": json.dumps(DESIGN_EXAMPLE), "comment": "hi"},
        ),
    ]
    assert [response.status_code for response in rejected] == [422, 415, 422]
    # Until both uvicorn workers have answered something, the sum proves nothing.
    health_checks = 0
    while health_checks == 0 or len(_worker_pids(stack.multiproc_dir)) < 2:
        assert _fresh_connection_get(f"{stack.gateway}/healthz") == 200
        health_checks += 1
        assert health_checks < 500, "one uvicorn worker took every connection"
    assert client.get("/v1/screenings", params={"limit": 2}).status_code == 200

    # Whichever worker answers, it reports the sum over both. Nothing consumes the queue
    # while this test runs: the accepted screenings wait in Redis, the oldest at its head.
    for _ in range(4):
        waited_before = _head_age_s(stack)
        scrape = Scrape(stack.gateway_metrics)
        waited_after = _head_age_s(stack)
        assert added(scrape, REQUESTS, **POST, status="202") == ACCEPTED
        assert added(scrape, REQUESTS, **POST, status="422") == 2
        assert added(scrape, REQUESTS, **POST, status="415") == 1
        assert added(scrape, REQUESTS, route="/healthz", method="GET") == health_checks
        assert added(scrape, REQUESTS, route="/v1/screenings", method="GET", status="200") == 1
        assert added(scrape, DURATION, **POST) == ACCEPTED + len(rejected)
        assert added(scrape, REJECTIONS, reason="less_than_equal", field="clinical.age") == 1
        assert added(scrape, REJECTIONS, reason="enum", field="clinical.region") == 1
        assert added(scrape, REJECTIONS, reason="extra_forbidden", field="clinical.*") == 1
        assert added(scrape, REJECTIONS, reason="unsupported_type", field="image") == 1
        assert added(scrape, REJECTIONS, reason="extra_forbidden", field="*") == 1
        assert added(scrape, REJECTIONS) == 5
        assert added(scrape, "skinscreen_gateway_upload_size_bytes_count") == 6
        assert added(scrape, "skinscreen_gateway_upload_size_bytes_sum") >= uploaded
        assert added(scrape, "skinscreen_queue_depth_tasks", queue="screenings") == ACCEPTED
        assert scrape.value("skinscreen_queue_depth_tasks", queue="training") == 0
        # The head's age as the database saw it just before and just after this scrape.
        age = scrape.value("skinscreen_queue_oldest_task_age_seconds", queue="screenings")
        assert 0 < waited_before <= age <= waited_after
    assert not [labels for labels in scrape.labels(REQUESTS) if "smoker" in str(labels)]


def test_the_queue_drains_once_a_worker_runs(stack: Stack) -> None:
    with httpx.Client(base_url=stack.gateway, headers=stack.headers, timeout=30) as client:
        ids = [submit(client, 20 + seed).json()["id"] for seed in range(3)]
    worker = Process(WORKER_COMMAND, stack.env, stack.folder / "worker.log")
    worker.start()
    try:
        start_worker(worker)
        wait_until(
            lambda: (
                stack.database.value(
                    "SELECT count(*) FROM screenings"
                    " WHERE status = 'done' AND id = ANY($1::uuid[])",
                    ids,
                )
                == len(ids)
            ),
            "the worker scored the queued screenings",
        )
        # Everything queued before is taken too (a worker was running all along).
        broker = Redis.from_url(stack.env["REDIS_URL"])
        try:
            wait_until(lambda: broker.llen(QUEUE) == 0, "the queue is empty")
        finally:
            broker.close()
        scrape = Scrape(stack.gateway_metrics)
        assert scrape.value("skinscreen_queue_depth_tasks", queue="screenings") == 0
        assert scrape.value("skinscreen_queue_oldest_task_age_seconds", queue="screenings") == 0
    finally:
        worker.stop()


def test_inference_metrics_after_real_batches(stack: Stack) -> None:
    port = free_port()
    env = {**stack.env, "METRICS_PORT": str(port)}
    worker = Process(WORKER_COMMAND, env, stack.folder / "worker-metrics.log")
    first_batch = stack.database.value("SELECT coalesce(max(id), 0) FROM inference_batches")
    worker.start()
    try:
        start_worker(worker)
        with httpx.Client(base_url=stack.gateway, headers=stack.headers, timeout=30) as client:
            ids = [submit(client, 100 + seed).json()["id"] for seed in range(10)]
            for screening_id in ids:
                body = client.get(f"/v1/screenings/{screening_id}", params={"wait": 30}).json()
                assert body["status"] == "done"
        version = body["result"]["model_version"]
        # Every batch since this worker started is its own (it is the only one running):
        # this test's screenings, and any an earlier test left queued.
        batches, scored_in_batches, written = stack.database.fetch(
            "SELECT count(*), coalesce(sum(size), 0), coalesce(sum(written), 0)"
            " FROM inference_batches WHERE id > $1",
            first_batch,
        )[0]
        assert written >= len(ids)
        scrape = Scrape(f"http://127.0.0.1:{port}/metrics")
        assert scrape.value("skinscreen_inference_batch_size_count") == batches
        assert scrape.value("skinscreen_inference_batch_size_sum") == scored_in_batches
        assert scrape.value("skinscreen_inference_model_duration_seconds_count") == batches
        assert scrape.value("skinscreen_inference_queue_wait_seconds_count") == scored_in_batches
        scored = "skinscreen_inference_screenings_scored_total"
        assert scrape.value(scored, model_version=version) == written
        (info,) = scrape.labels("skinscreen_inference_model_info")
        assert info["model_version"] == version
        assert info["provider"] == "CPUExecutionProvider"
        assert scrape.value("skinscreen_inference_model_load_failures_total") == 0
    finally:
        worker.stop()


INFERENCE_PROCESS = """
import sys, threading
from skinscreen.inference import metrics

metrics.serve(int(sys.argv[1]))
metrics.model_loaded(name="skinscreen-fusion", version="v1", provider="CUDAExecutionProvider")
metrics.observe_batch(size=3, queue_wait_s=[0.2, 0.3, 0.4], model_s=0.05, model_version="v1",
                      written=3)
metrics.observe_decisions(model_version="v1", reasons=[
    ("cancer_probability",), (), ("cancer_probability", "melanoma_probability"),
    ("melanoma_probability",), ("melanoma_probability",),
])
metrics.model_load_failed()
metrics.model_loaded(name="skinscreen-fusion", version="v2", provider="CUDAExecutionProvider")
print("observed", flush=True)
threading.Event().wait()  # serve until killed
"""


@contextmanager
def _serving(script: str, env: dict[str, str]) -> Iterator[int]:
    """Run `script` with a free port; yield the port once it has observed its values."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(port)],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.strip() == "observed", line + process.stdout.read()
        yield port
    finally:
        process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()


def test_inference_metric_helpers_serve_what_they_observed() -> None:
    env = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    with _serving(INFERENCE_PROCESS, env) as port:
        scrape = Scrape(f"http://127.0.0.1:{port}/metrics")
        assert scrape.value("skinscreen_inference_batch_size_count") == 1
        assert scrape.value("skinscreen_inference_batch_size_bucket", le="4.0") == 1
        assert scrape.value("skinscreen_inference_batch_size_bucket", le="2.0") == 0
        assert scrape.value("skinscreen_inference_queue_wait_seconds_count") == 3
        assert scrape.value("skinscreen_inference_queue_wait_seconds_sum") == pytest.approx(0.9)
        assert scrape.value("skinscreen_inference_model_duration_seconds_count") == 1
        scored = "skinscreen_inference_screenings_scored_total"
        assert scrape.value(scored, model_version="v1") == 3
        # Suspicious results by the rules that fired; the one not suspicious is not counted.
        suspicious = "skinscreen_inference_suspicious_total"
        assert scrape.value(suspicious, model_version="v1", reasons="cancer_probability") == 1
        assert scrape.value(suspicious, model_version="v1", reasons="melanoma_probability") == 2
        both = "cancer_probability+melanoma_probability"
        assert scrape.value(suspicious, model_version="v1", reasons=both) == 1
        assert scrape.value(suspicious) == 4
        assert scrape.value("skinscreen_inference_model_load_failures_total") == 1
        # After a hot swap only the new version is announced.
        (info,) = scrape.labels("skinscreen_inference_model_info")
        assert info == {
            "model_name": "skinscreen-fusion",
            "model_version": "v2",
            "provider": "CUDAExecutionProvider",
        }
