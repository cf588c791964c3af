"""SIGTERM, as Kubernetes sends it, to real processes: nothing in flight is lost.

The gateway stops taking connections and finishes the requests it has; an
inference worker finishes the batches it holds and leaves every task it has
not started in the Redis queue, not stranded until the visibility timeout.
"""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import httpx
from redis import Redis

from skinscreen.runtime import screenings
from skinscreen.runtime.queue import QUEUE
from tests.serving.conftest import (
    Database,
    Launcher,
    create_keys,
    hold_long_poll,
    start_worker,
    with_application_name,
)
from tests.waiting import wait_until

from .conftest import start_gateway, submit

# As the gateway's Deployment runs it (deploy/k8s/base/gateway.yaml).
GATEWAY_OPTIONS = ("--workers", "2", "--timeout-graceful-shutdown", "35")
N_SCREENINGS = 48
# The draining gateway's connections, by name in pg_stat_activity.
DRAINING_GATEWAY = "skinscreen-draining-gateway"


def test_gateway_finishes_requests_in_flight_and_takes_no_new_ones(
    deploy_env: dict[str, str], launcher: Launcher, tmp_path: Path
) -> None:
    """SIGTERM while a long poll is held: the listener closes, and the held request is still
    answered, with the result written after the signal. No worker consumes this module's
    queue, so only the test's write can finish the screening."""
    database = Database(deploy_env["DATABASE_URL"])
    keys = create_keys(deploy_env["DATABASE_URL"])
    env = {
        **deploy_env,
        "DATABASE_URL": with_application_name(deploy_env["DATABASE_URL"], DRAINING_GATEWAY),
    }
    process, url = start_gateway(env, tmp_path / "gateway.log", *GATEWAY_OPTIONS, launcher=launcher)
    # Both uvicorn workers up (each listens on its own connection), so any later use of
    # this gateway's connections is the long poll's.
    wait_until(
        lambda: (
            database.value(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
                " AND query LIKE 'LISTEN %'",
                DRAINING_GATEWAY,
            )
            == 2
        ),
        "both uvicorn workers listen for finished screenings",
    )
    with httpx.Client(base_url=url, headers=keys.clinician, timeout=30) as client:
        accepted = submit(client, 1)
    assert accepted.status_code == 202, accepted.text
    screening_id = accepted.json()["id"]
    try:
        held = hold_long_poll(
            url, accepted.headers["location"], database, DRAINING_GATEWAY, keys.clinician
        )
        poller, in_flight = held.thread, held.answer
        assert process.popen is not None
        process.popen.send_signal(signal.SIGTERM)

        def refused() -> bool:
            try:
                httpx.get(f"{url}/healthz", headers={"Connection": "close"}, timeout=5)
            except httpx.TransportError:
                return True
            return False

        wait_until(refused, "the gateway stops taking new connections", timeout_s=20)
        # The long poll outlived the listener: it was not cut short.
        assert poller.is_alive(), f"the request in flight ended: {in_flight}"
        # Its result arrives after SIGTERM, as a worker writes one (the NOTIFY included).
        assert (
            database.value(screenings.FAIL, uuid.UUID(screening_id), "written after SIGTERM") == 1
        )
        poller.join(60)
        response = in_flight["response"]
        assert isinstance(response, httpx.Response), f"the request in flight was cut: {response!r}"
        assert response.status_code == 200
        assert (response.json()["status"], response.json()["failure_reason"]) == (
            "failed",
            "written after SIGTERM",
        )
        assert process.popen.wait(60) == 0
    finally:
        process.stop()
        # The module's queue and table as they were: the other test counts every screening.
        database.value("DELETE FROM screenings WHERE id = $1::uuid", screening_id)
        broker = Redis.from_url(deploy_env["REDIS_URL"])
        broker.delete(QUEUE)
        broker.close()


def test_inference_worker_finishes_its_batches_and_leaves_the_rest_queued(
    deploy_env: dict[str, str], launcher: Launcher, tmp_path: Path
) -> None:
    database = Database(deploy_env["DATABASE_URL"])
    keys = create_keys(deploy_env["DATABASE_URL"])
    broker = Redis.from_url(deploy_env["REDIS_URL"])
    gateway, url = start_gateway(deploy_env, tmp_path / "gateway.log", launcher=launcher)
    try:
        with httpx.Client(base_url=url, headers=keys.clinician, timeout=30) as client:
            for seed in range(N_SCREENINGS):
                assert submit(client, seed).status_code == 202
        # The module's database and queue hold this test's screenings alone.
        total = database.value("SELECT count(*) FROM screenings")
        worker = launcher.worker(deploy_env, tmp_path / "worker.log")
        worker.start()
        start_worker(worker)

        def counts() -> dict[str, int]:
            rows = database.fetch("SELECT status, count(*) FROM screenings GROUP BY status")
            return {row["status"]: row["count"] for row in rows}

        # SIGTERM in the middle: some screenings done, a batch running, others not started.
        wait_until(
            lambda: counts().get("done", 0) > 0 and counts().get("running", 0) > 0,
            "the worker holds a batch mid-way, after finishing some",
            interval_s=0.01,
        )
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
        wait_until(
            lambda: counts().get("done", 0) == total,
            lambda: f"all scored after the restart: {counts()}",
        )
        assert database.value("SELECT sum(written) FROM inference_batches") == total
        assert database.value("SELECT max(attempts) FROM screenings") == 1, (
            "a task was delivered twice: its worker did not acknowledge it before exiting"
        )
        worker.stop()
    finally:
        gateway.stop()
        broker.close()
