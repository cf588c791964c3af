"""The gateway under faults: its Redis SIGKILLed (it refuses at once, storing nothing, and
takes screenings again once Redis is back), and the gateway itself SIGKILLed under load
and started again (every screening it accepted ends done).

Gateways of these tests' own, on the session's PostgreSQL and worker (the Redis test has
its own Redis, so the session's stays up).
"""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from skinscreen.dev.embedded import EmbeddedRedis
from tests.serving.conftest import Database, Keys, Photo, Process, start_gateway, submit
from tests.serving.faults import (
    Load,
    assert_failed_fast,
    count_done,
    readiness,
    unfinished,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.data  # real PAD-UFES-20 photos; skipped when absent

logger = logging.getLogger(__name__)


def test_the_gateway_refuses_at_once_while_its_redis_is_down(
    stack_env: dict[str, str],
    own_redis: EmbeddedRedis,
    photos: list[Photo],
    database: Database,
    tmp_path: Path,
    keys: Keys,
) -> None:
    blobs = tmp_path / "blobs"
    env = {
        **stack_env,
        "REDIS_URL": f"redis://127.0.0.1:{own_redis.port}/0",
        "BLOB_DIR": str(blobs),
    }
    gateway, url = start_gateway(env, tmp_path / "gateway.log")
    try:
        with httpx.Client(base_url=url, headers=keys.clinician, timeout=30) as client:
            accepted = submit(client, photos[0])
            assert accepted.status_code == 202, accepted.text

            def stored() -> tuple[int, int]:
                rows = database.value("SELECT count(*) FROM screenings")
                return rows, sum(1 for path in blobs.rglob("*") if path.is_file())

            own_redis.kill()
            before = stored()
            load = Load(url, photos[:10], keys.clinician)
            load.start()
            try:
                wait_until(lambda: len(load.refused) >= 20, "requests refused while Redis is down")
            finally:
                load.stop()
            assert not load.accepted
            assert_failed_fast(load.refused)
            assert {answer.body for answer in load.refused} == {
                '{"detail":"the screening queue is unavailable; try again later"}'
            }
            # Nothing stored: each blob and row written before the publish was removed again.
            assert stored() == before
            status, ok = readiness(url)
            assert status == 503
            assert ok == {"database": True, "broker": False, "model": True, "notifications": True}

            own_redis.start()
            wait_until(lambda: readiness(url)[0] == 200, lambda: f"{readiness(url)}")
            again = submit(client, photos[1])
            assert again.status_code == 202, again.text
        slowest = max(answer.seconds for answer in load.refused)
        logger.warning("Redis down: %d answered 503, slowest %.2f s", len(load.refused), slowest)
    finally:
        gateway.stop()


def test_a_gateway_killed_under_load_loses_no_accepted_screening(
    stack_env: dict[str, str],
    worker: Process,
    photos: list[Photo],
    database: Database,
    tmp_path: Path,
    keys: Keys,
) -> None:
    gateway, url = start_gateway(stack_env, tmp_path / "gateway.log")
    load: Load | None = None
    try:
        load = Load(url, photos[:40], keys.clinician)
        load.start()
        wait_until(lambda: count_done(database, list(load.accepted)) >= 10, "scored before")
        gateway.kill()
        killed_at = len(load.accepted)
        # Started again on its address (the same command, so the same port), as a pod
        # restarted behind its Service.
        gateway.start()
        wait_until(
            lambda: len(load.accepted) >= killed_at + 10,
            lambda: (
                f"accepted after the restart; refused: {list(load.refused)[-3:]}; log:\n"
                + gateway.log.read_text()[-3000:]
            ),
        )
        load.stop()
        accepted = list(load.accepted)
        assert len(set(accepted)) == len(accepted)
        # Only requests cut by the kill, or sent while nothing listened, went unanswered.
        assert {answer.status for answer in load.refused} <= {0}, load.refused[:3]
        wait_until(
            lambda: unfinished(database, accepted) == 0,
            lambda: f"{unfinished(database, accepted)} of {len(accepted)} not finished",
            180,
        )
        assert count_done(database, accepted) == len(accepted)
        logger.warning(
            "gateway SIGKILL: %d accepted, all done; %d requests cut or refused by the kill",
            len(accepted),
            len(load.refused),
        )
    finally:
        if load is not None:
            load.stop()
        gateway.stop()
