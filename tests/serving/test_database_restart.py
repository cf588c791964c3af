"""PostgreSQL SIGKILLed under load and started again: the gateway fails fast and comes back.

A PostgreSQL, a Redis, a worker and a gateway of this test's own (the session's servers
stay up for the other tests). While PostgreSQL is down, every refused screening is a 503
with Retry-After, answered at once (before, 274 of them were bare 500s), and /readyz is
503; once it is back, /readyz is 200 again, the gateway's LISTEN connection has re-opened
by itself (a long poll is woken by the worker's NOTIFY), the worker has carried on, and
every screening that was accepted ends done, or failed with a reason.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from skinscreen.dev.embedded import EmbeddedPostgres, EmbeddedRedis
from skinscreen.inference.inputs import InputReader
from skinscreen.inference.retries import TRANSIENT_ERRORS
from skinscreen.runtime.commands import PRESTART_COMMAND, WORKER_COMMAND
from skinscreen.runtime.database import apply_migrations
from tests.serving.conftest import (
    Database,
    Photo,
    Process,
    create_keys,
    hold_long_poll,
    start_gateway,
    start_worker,
    submit,
    with_application_name,
)
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

GATEWAY = "skinscreen-db-restart-gateway"


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    postgres = EmbeddedPostgres(tmp_path / "postgres", delete_on_stop=True)
    postgres.start()
    yield postgres
    postgres.stop()


def _down(ready: tuple[int, dict[str, bool]], *checks: str) -> bool:
    status, ok = ready
    return status == 503 and all(ok.get(check) is False for check in checks)


def test_a_postgresql_restart_under_load(
    stack_env: dict[str, str],
    own_postgres: EmbeddedPostgres,
    own_redis: EmbeddedRedis,
    photos: list[Photo],
    tmp_path: Path,
) -> None:
    database_url = own_postgres.start()
    env = {
        **stack_env,
        "DATABASE_URL": database_url,
        "REDIS_URL": f"redis://127.0.0.1:{own_redis.port}/0",
        "BLOB_DIR": str(tmp_path / "blobs"),
    }
    subprocess.run(PRESTART_COMMAND, env=env, check=True, timeout=120)
    database = Database(database_url)
    keys = create_keys(database_url)
    worker = Process(WORKER_COMMAND, env, tmp_path / "worker.log")
    gateway: Process | None = None
    load: Load | None = None
    try:
        start_worker(worker)
        gateway_env = {**env, "DATABASE_URL": with_application_name(database_url, GATEWAY)}
        gateway, url = start_gateway(gateway_env, tmp_path / "gateway.log")
        assert readiness(url)[0] == 200
        load = Load(url, photos[:40], keys.clinician)
        load.start()
        wait_until(lambda: count_done(database, list(load.accepted)) >= 10, "scored before")

        own_postgres.kill()
        down_since = len(load.refused)
        # Refused, and out of the Service: database and LISTEN both down.
        wait_until(
            lambda: _down(readiness(url), "database", "notifications"),
            lambda: f"/readyz during the outage: {readiness(url)}",
        )
        wait_until(lambda: len(load.refused) >= down_since + 20, "requests refused while down")
        during = list(load.refused)[down_since:]
        assert_failed_fast(during)
        assert {answer.body for answer in during} <= {
            '{"detail":"the database is unavailable; try again later"}'
        }, during[:3]

        restarted_url = own_postgres.start()
        assert restarted_url == database_url
        wait_until(
            lambda: readiness(url)[0] == 200,
            lambda: (
                f"/readyz after the restart: {readiness(url)}; gateway log:\n"
                + (tmp_path / "gateway.log").read_text()[-3000:]
            ),
            60,
        )
        restarted_at = len(load.accepted)
        wait_until(
            lambda: len(load.accepted) >= restarted_at + 10,
            lambda: f"accepted after the restart; refused: {list(load.refused)[-3:]}",
        )
        load.stop()
        assert not load.refused_with(500), load.refused_with(500)[:3]

        # The LISTEN connection re-opened by itself: a long poll held before the screening
        # is scored is answered done, woken by the worker's NOTIFY (were it not woken, it
        # would answer the queued row it read, after the whole wait).
        assert worker.popen is not None
        os.kill(worker.popen.pid, signal.SIGSTOP)
        try:
            with httpx.Client(base_url=url, headers=keys.clinician, timeout=30) as client:
                response = submit(client, photos[0])
            assert response.status_code == 202, response.text
            held = hold_long_poll(
                url, response.headers["Location"], database, GATEWAY, keys.clinician
            )
        finally:
            os.kill(worker.popen.pid, signal.SIGCONT)
        held.thread.join(60)
        answer = held.answer["response"]
        assert not isinstance(answer, BaseException), answer
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "done", answer.json()

        accepted = [*load.accepted, response.json()["id"]]
        assert len(set(accepted)) == len(accepted)
        wait_until(
            lambda: unfinished(database, accepted) == 0,
            lambda: (
                f"{unfinished(database, accepted)} of {len(accepted)} not finished; worker "
                "log:\n" + worker.log.read_text()[-3000:]
            ),
            180,
        )
        # The worker outlived the restart (no restart by anyone) and scored the later ones.
        assert worker.popen.poll() is None, worker.log.read_text()[-4000:]
        assert count_done(database, accepted[restarted_at:]) == len(accepted) - restarted_at
        assert gateway.popen is not None
        assert gateway.popen.poll() is None
        refused_503 = load.refused_with(503)
        logger.warning(
            "PostgreSQL restart: %d accepted (%d done), %d answered 503 (slowest %.2f s), "
            "other refusals %s",
            len(accepted),
            count_done(database, accepted),
            len(refused_503),
            max(answer.seconds for answer in refused_503),
            [answer for answer in load.refused if answer.status != 503][:3],
        )
    finally:
        if load is not None:
            load.stop()
        if gateway is not None:
            gateway.stop()
        worker.stop()


def test_the_task_input_reader_reads_again_after_a_postgresql_restart(
    own_postgres: EmbeddedPostgres,
) -> None:
    """The worker's reader of task inputs (one connection, shared statements) is refused while
    PostgreSQL is down and reads again once it is back, on a new connection: the one the
    server's death left behind is never used again."""
    url = own_postgres.start()  # running already: its address
    asyncio.run(apply_migrations(url))
    reader = InputReader(url)
    reader.start()
    try:
        assert reader.read(uuid.uuid4()) is None  # no such screening: no row, no error
        own_postgres.kill()
        with pytest.raises(TRANSIENT_ERRORS):  # refused as the task retries it: not a hang
            reader.read(uuid.uuid4())
        own_postgres.start()

        def reads() -> bool:
            try:
                return reader.read(uuid.uuid4()) is None
            except TRANSIENT_ERRORS:  # still starting up
                return False

        wait_until(reads, "the reader reads after the restart", 60)
    finally:
        reader.stop()
