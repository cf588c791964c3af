"""Redis SIGKILLed under load and started again: the worker carries on by itself.

A Redis, a worker and a gateway of this test's own (the session's Redis stays up for the
other tests); PostgreSQL is the session's. Before kombu's channel was taught not to write
to a broker that is gone (`skinscreen.runtime.queue.RedisTransport`), the worker died
here with "Unrecoverable error: AttributeError" three times out of three.
"""

from __future__ import annotations

from pathlib import Path

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
)
from tests.serving.faults import Load, count_done
from tests.waiting import wait_until

pytestmark = pytest.mark.data  # real PAD-UFES-20 photos; skipped when absent


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

        wait_until(
            lambda: count_done(database, list(load.accepted)) >= 10,
            "screenings scored before the kill",
        )
        own_redis.kill()
        refused = len(load.refused)
        wait_until(lambda: len(load.refused) > refused, "a request refused while Redis is down")
        own_redis.start()
        restarted_at = len(load.accepted)
        wait_until(
            lambda: len(load.accepted) >= restarted_at + 10, "screenings accepted after the restart"
        )
        load.stop()

        accepted = list(load.accepted)

        def left() -> str:
            return f"{len(accepted) - count_done(database, accepted)} of {len(accepted)} not done"

        wait_until(lambda: count_done(database, accepted) == len(accepted), left, 180)
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
