"""SIGTERM, as Kubernetes sends it, to real processes: nothing in flight is lost.

The gateway stops taking connections and finishes the requests it has; an
inference worker finishes the batches it holds and leaves every task it has
not started in the Redis queue, not stranded until the visibility timeout.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from redis import Redis

from skinscreen.runtime.queue import QUEUE
from skinscreen.runtime.stack import WORKER_COMMAND
from tests.serving.conftest import Database, Process, start_worker

from .conftest import start_gateway, submit

# As the gateway's Deployment runs it (deploy/k8s/base/gateway.yaml).
GATEWAY_OPTIONS = ("--workers", "2", "--timeout-graceful-shutdown", "35")
LONG_POLL_S = 3
N_SCREENINGS = 48


def test_gateway_finishes_requests_in_flight_and_takes_no_new_ones(
    deploy_env: dict[str, str], tmp_path: Path
) -> None:
    # No worker consumes this module's queue: the screening stays queued and the long poll
    # lasts its full LONG_POLL_S.
    process, url = start_gateway(deploy_env, tmp_path / "gateway.log", *GATEWAY_OPTIONS)
    with httpx.Client(base_url=url, timeout=30) as client:
        location = submit(client, 1).headers["location"]
    in_flight: dict[str, httpx.Response | BaseException] = {}

    def long_poll() -> None:
        try:
            in_flight["response"] = httpx.get(
                f"{url}{location}", params={"wait": LONG_POLL_S}, timeout=30
            )
        except httpx.HTTPError as exc:
            in_flight["response"] = exc

    poller = threading.Thread(target=long_poll)
    poller.start()
    time.sleep(1.0)  # the request is being held by the gateway
    assert process.popen is not None
    terminated = time.monotonic()
    process.popen.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/healthz", headers={"Connection": "close"}, timeout=5)
    poller.join(30)
    response = in_flight["response"]
    assert isinstance(response, httpx.Response), f"the request in flight was cut: {response!r}"
    assert response.status_code == 200
    assert response.json()["status"] == "queued"
    assert process.popen.wait(30) == 0
    # It waited for the long poll instead of cutting it short.
    assert time.monotonic() - terminated >= LONG_POLL_S - 1.5


def test_inference_worker_finishes_its_batches_and_leaves_the_rest_queued(
    deploy_env: dict[str, str], tmp_path: Path
) -> None:
    database = Database(deploy_env["DATABASE_URL"])
    broker = Redis.from_url(deploy_env["REDIS_URL"])
    gateway, url = start_gateway(deploy_env, tmp_path / "gateway.log")
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            for seed in range(N_SCREENINGS):
                assert submit(client, seed).status_code == 202
        # The module's database and queue: this test's screenings, and any an earlier test
        # of the module left queued.
        total = database.value("SELECT count(*) FROM screenings")
        worker = Process(WORKER_COMMAND, deploy_env, tmp_path / "worker.log")
        worker.start()
        start_worker(worker)

        def counts() -> dict[str, int]:
            rows = database.fetch("SELECT status, count(*) FROM screenings GROUP BY status")
            return {row["status"]: row["count"] for row in rows}

        # SIGTERM in the middle: some screenings done, a batch running, others not started.
        deadline = time.monotonic() + 60
        while not (counts().get("done", 0) > 0 and counts().get("running", 0) > 0):
            assert time.monotonic() < deadline, "the worker never held a batch mid-way"
            time.sleep(0.01)
        assert worker.popen is not None
        worker.popen.send_signal(signal.SIGTERM)
        assert worker.popen.wait(60) == 0, worker.log.read_text()[-4000:]

        after = counts()
        assert "running" not in after, f"a batch was abandoned mid-way: {after}"
        assert after.get("done", 0) < total, "the worker finished everything first"
        # What it had not started is back in (or never left) the queue, ready for the next
        # worker now, not after the visibility timeout.
        assert broker.hlen("unacked") == 0
        assert broker.llen(QUEUE) == after.get("queued", 0)

        start_worker(worker)
        deadline = time.monotonic() + 120
        while counts().get("done", 0) < total:
            assert time.monotonic() < deadline, f"not all scored after restart: {counts()}"
            time.sleep(0.2)
        assert database.value("SELECT sum(written) FROM inference_batches") == total
        assert database.value("SELECT max(attempts) FROM screenings") == 1, (
            "a task was delivered twice: its worker did not acknowledge it before exiting"
        )
        worker.stop()
    finally:
        gateway.stop()
        broker.close()
