"""Every /metrics endpoint, scraped after real traffic through real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from redis import Redis

from skinscreen.runtime.embedded import free_port
from skinscreen.runtime.stack import WORKER_COMMAND
from tests.conftest import DESIGN_EXAMPLE, REPO
from tests.serving.conftest import Database, Process, start_worker

from .conftest import Scrape, photo, start_gateway, submit

ACCEPTED = 3


@dataclass
class Stack:
    env: dict[str, str]
    gateway: str
    multiproc_dir: Path
    database: Database
    folder: Path


@pytest.fixture(scope="module")
def stack(deploy_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A gateway as its Deployment runs it: two uvicorn workers sharing a metrics folder."""
    folder = tmp_path_factory.mktemp("metrics")
    multiproc_dir = folder / "prometheus"
    multiproc_dir.mkdir()
    env = {**deploy_env, "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)}
    gateway, url = start_gateway(env, folder / "gateway.log", "--workers", "2")
    yield Stack(env, url, multiproc_dir, Database(env["DATABASE_URL"]), folder)
    gateway.stop()


def _fresh_connection_get(url: str) -> int:
    # A new connection each time, so the two uvicorn workers both get some requests.
    return httpx.get(url, headers={"Connection": "close"}, timeout=10).status_code


def _worker_pids(folder: Path) -> set[str]:
    return {path.stem.rsplit("_", 1)[-1] for path in folder.glob("*.db")}


def test_gateway_metrics_add_up_over_both_workers_and_show_the_queue(stack: Stack) -> None:
    client = httpx.Client(base_url=stack.gateway, timeout=30, headers={"Connection": "close"})
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
    while len(_worker_pids(stack.multiproc_dir)) < 2:
        assert _fresh_connection_get(f"{stack.gateway}/healthz") == 200
        health_checks += 1
        assert health_checks < 500, "one uvicorn worker took every connection"
    assert client.get("/v1/screenings", params={"limit": 2}).status_code == 200
    time.sleep(1.0)  # the queued screenings age

    # Whichever worker answers, it reports the sum over both.
    scrapes = [Scrape(f"{stack.gateway}/metrics") for _ in range(4)]
    for scrape in scrapes:
        requests = "skinscreen_gateway_requests_total"
        post = {"route": "/v1/screenings", "method": "POST"}
        assert scrape.value(requests, **post, status="202") == ACCEPTED
        assert scrape.value(requests, **post, status="422") == 2
        assert scrape.value(requests, **post, status="415") == 1
        assert scrape.value(requests, route="/healthz", method="GET") == health_checks
        assert scrape.value(requests, route="/v1/screenings", method="GET", status="200") == 1
        duration = "skinscreen_gateway_request_duration_seconds_count"
        assert scrape.value(duration, **post) == ACCEPTED + len(rejected)
        rejections = "skinscreen_gateway_rejected_inputs_total"
        assert scrape.value(rejections, reason="less_than_equal", field="clinical.age") == 1
        assert scrape.value(rejections, reason="enum", field="clinical.region") == 1
        assert scrape.value(rejections, reason="extra_forbidden", field="clinical.*") == 1
        assert scrape.value(rejections, reason="unsupported_type", field="image") == 1
        assert scrape.value(rejections, reason="extra_forbidden", field="*") == 1
        assert scrape.value(rejections) == 5
        assert scrape.value("skinscreen_gateway_upload_size_bytes_count") == 6
        assert scrape.value("skinscreen_gateway_upload_size_bytes_sum") >= uploaded
        # Nothing consumes the queue yet: the accepted screenings wait in Redis.
        assert scrape.value("skinscreen_queue_depth_tasks", queue="screenings") == ACCEPTED
        assert scrape.value("skinscreen_queue_depth_tasks", queue="training") == 0
        age = scrape.value("skinscreen_queue_oldest_task_age_seconds", queue="screenings")
        assert 1.0 <= age < 120
    assert not [labels for labels in scrapes[0].labels(requests) if "smoker" in str(labels)]


def test_the_queue_drains_once_a_worker_runs(stack: Stack) -> None:
    worker = Process(WORKER_COMMAND, stack.env, stack.folder / "worker.log")
    worker.start()
    try:
        start_worker(worker)
        deadline = time.monotonic() + 60
        while stack.database.value("SELECT count(*) FROM screenings WHERE status = 'done'") < 3:
            assert time.monotonic() < deadline, "the worker did not score the queued screenings"
            time.sleep(0.2)
        scrape = Scrape(f"{stack.gateway}/metrics")
        assert scrape.value("skinscreen_queue_depth_tasks", queue="screenings") == 0
        assert scrape.value("skinscreen_queue_oldest_task_age_seconds", queue="screenings") == 0
        assert Redis.from_url(stack.env["REDIS_URL"]).llen("screenings") == 0
    finally:
        worker.stop()


def test_inference_metrics_after_real_batches(stack: Stack) -> None:
    port = free_port()
    env = {**stack.env, "METRICS_PORT": str(port)}
    worker = Process(WORKER_COMMAND, env, stack.folder / "worker-metrics.log")
    worker.start()
    try:
        start_worker(worker)
        client = httpx.Client(base_url=stack.gateway, timeout=30)
        ids = [submit(client, 100 + seed).json()["id"] for seed in range(10)]
        for screening_id in ids:
            body = client.get(f"/v1/screenings/{screening_id}", params={"wait": 30}).json()
            assert body["status"] == "done"
        version = body["result"]["model_version"]
        scrape = Scrape(f"http://127.0.0.1:{port}/metrics")
        batches = scrape.value("skinscreen_inference_batch_size_count")
        assert 1 <= batches <= len(ids)
        assert scrape.value("skinscreen_inference_batch_size_sum") == len(ids)
        assert scrape.value("skinscreen_inference_model_duration_seconds_count") == batches
        assert scrape.value("skinscreen_inference_queue_wait_seconds_count") == len(ids)
        scored = "skinscreen_inference_screenings_scored_total"
        assert scrape.value(scored, model_version=version) == len(ids)
        (info,) = scrape.labels("skinscreen_inference_model_info")
        assert info["model_version"] == version
        assert info["provider"] == "CPUExecutionProvider"
        assert scrape.value("skinscreen_inference_model_load_failures_total") == 0
    finally:
        worker.stop()


# The trainer's helpers in the layout its Deployment uses: a prefork Celery worker trains in
# a child process, the parent serves /metrics from PROMETHEUS_MULTIPROC_DIR.
TRAINER_PROCESSES = """
import multiprocessing, sys, time
from skinscreen.core.card import MetricSummary
from skinscreen.trainer import metrics

def run():
    metrics.observe_run("succeeded", 1800.0, {"roc_auc": MetricSummary(mean=0.889, std=0.024)})
    metrics.observe_run("failed", 30.0)

metrics.serve(int(sys.argv[1]))
child = multiprocessing.get_context("fork").Process(target=run)
child.start()
child.join()
print("observed", flush=True)
time.sleep(60)
"""

INFERENCE_PROCESS = """
import sys, time
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
time.sleep(60)
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


def test_trainer_metrics_reach_the_parent_from_a_training_child(tmp_path: Path) -> None:
    multiproc_dir = tmp_path / "trainer-metrics"
    multiproc_dir.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)}
    with _serving(TRAINER_PROCESSES, env) as port:
        scrape = Scrape(f"http://127.0.0.1:{port}/metrics")
        assert scrape.value("skinscreen_trainer_runs_total", outcome="succeeded") == 1
        assert scrape.value("skinscreen_trainer_runs_total", outcome="failed") == 1
        duration = "skinscreen_trainer_run_duration_seconds"
        assert scrape.value(f"{duration}_sum", outcome="succeeded") == 1800.0
        assert scrape.value(f"{duration}_count", outcome="failed") == 1
        assert scrape.value(f"{duration}_bucket", outcome="succeeded", le="1800.0") == 1
        assert scrape.value(f"{duration}_bucket", outcome="succeeded", le="1200.0") == 0
        metric = "skinscreen_trainer_last_run_metric_ratio"
        assert scrape.value(metric, metric="roc_auc", statistic="mean") == pytest.approx(0.889)
        assert scrape.value(metric, metric="roc_auc", statistic="std") == pytest.approx(0.024)
        finished = "skinscreen_trainer_last_run_finished_timestamp_seconds"
        assert abs(scrape.value(finished, outcome="failed") - time.time()) < 120


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
