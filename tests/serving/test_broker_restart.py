"""Redis SIGKILLed under load and started again: the worker carries on by itself.

A Redis, a worker and a gateway of this test's own (the session's Redis stays up for the
other tests); PostgreSQL is the session's. Before kombu's channel was taught not to write
to a broker that is gone (`skinscreen.runtime.queue.RedisTransport`), the worker died
here with "Unrecoverable error: AttributeError" three times out of three.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from skinscreen.dev.embedded import EmbeddedRedis
from skinscreen.runtime.commands import WORKER_COMMAND
from tests.serving.conftest import (
    Database,
    Keys,
    Photo,
    Process,
    start_gateway,
    start_worker,
    submit,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.data  # real PAD-UFES-20 photos; skipped when absent


class Load:
    """One client posting real photos back to back, from a thread, until stopped."""

    def __init__(self, url: str, photos: list[Photo], headers: dict[str, str]) -> None:
        self.url = url
        # The API key it sends.
        self.headers = headers
        self.photos = photos
        # Ids answered 202, in order, and how many requests were answered otherwise.
        self.accepted: list[str] = []
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=10) as client:
            index = 0
            while not self._stop.is_set():
                photo = self.photos[index % len(self.photos)]
                index += 1
                try:
                    response = submit(client, photo)
                except httpx.HTTPError:
                    self.refused += 1
                    continue
                if response.status_code == 202:
                    self.accepted.append(response.json()["id"])
                else:
                    self.refused += 1


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    redis = EmbeddedRedis(tmp_path / "redis")
    redis.start()
    yield redis
    redis.stop()


def test_the_worker_survives_a_redis_restart_under_load(
    stack_env: dict[str, str],
    own_redis: EmbeddedRedis,
    photos: list[Photo],
    database: Database,
    tmp_path: Path,
    keys: Keys,
) -> None:
    env = {**stack_env, "REDIS_URL": f"redis://127.0.0.1:{own_redis.port}/0"}
    worker = Process(WORKER_COMMAND, env, tmp_path / "worker.log")
    gateway: Process | None = None
    load: Load | None = None
    try:
        start_worker(worker)
        gateway, url = start_gateway(env, tmp_path / "gateway.log")
        load = Load(url, photos[:40], keys.clinician)
        load.start()

        def done(ids: list[str]) -> int:
            count: int = database.value(
                "SELECT count(*) FROM screenings WHERE id = ANY($1::uuid[]) AND status = 'done'",
                ids,
            )
            return count

        wait_until(lambda: done(list(load.accepted)) >= 10, "screenings scored before the kill")
        own_redis.kill()
        refused = load.refused
        wait_until(lambda: load.refused > refused, "a request refused while Redis is down")
        own_redis.start()
        restarted_at = len(load.accepted)
        wait_until(
            lambda: len(load.accepted) >= restarted_at + 10, "screenings accepted after the restart"
        )
        load.stop()

        accepted = list(load.accepted)
        wait_until(
            lambda: done(accepted) == len(accepted),
            lambda: f"{len(accepted) - done(accepted)} of {len(accepted)} still not done",
            180,
        )
        assert worker.popen is not None
        assert worker.popen.poll() is None, worker.log.read_text()[-4000:]
        # Scored by this worker, over its new connection, not queued again by the session
        # worker's reconciler (which would count a requeue).
        after = accepted[restarted_at:]
        assert not database.value(
            "SELECT count(*) FROM screenings WHERE id = ANY($1::uuid[]) AND requeues > 0", after
        )
    finally:
        if load is not None:
            load.stop()
        if gateway is not None:
            gateway.stop()
        worker.stop()
