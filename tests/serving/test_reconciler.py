"""The reconciler on real PostgreSQL and Redis: lost tasks come back, nothing stays unfinished.

The sweep tests run `sweep` on a database and a Redis database of their own (the
session's servers), so the worker's own reconciler never races them; the last
test goes through the running worker.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from skinscreen.inference.reconciler import ReconcilerSettings, SweepResult, sweep
from skinscreen.runtime.database import apply_migrations, create_pool
from skinscreen.runtime.queue import (
    QUEUE,
    ScreeningTask,
    enqueue_screening,
    live_task_ids,
    make_celery,
)
from tests.scrape import Scrape
from tests.serving.conftest import RECONCILE_AFTER_S, Keys, submit
from tests.waiting import wait_until

SWEEP_REDIS_DB = 3
SETTINGS = ReconcilerSettings(interval_s=1, after_s=60, max_requeues=2, give_up_s=3600)
CLINICAL = {
    "age": 61,
    "region": "FACE",
    "itch": False,
    "grew": True,
    "hurt": False,
    "changed": True,
    "bleed": False,
    "elevation": True,
}


@pytest.fixture(scope="module")
def sweep_database(servers) -> Iterator[str]:
    """A migrated database of its own on the session's PostgreSQL."""
    name = f"reconciler_{uuid.uuid4().hex[:8]}"
    admin_url = servers.database_url

    async def admin(sql: str) -> None:
        connection = await asyncpg.connect(admin_url)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(admin(f"CREATE DATABASE {name}"))
    url = urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
    asyncio.run(apply_migrations(url))
    yield url
    asyncio.run(admin(f"DROP DATABASE {name} WITH (FORCE)"))


@pytest.fixture
def sweep_redis_url(servers) -> Iterator[str]:
    url = servers.redis_url.rsplit("/", 1)[0] + f"/{SWEEP_REDIS_DB}"
    client = Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def in_sweep_stack(sweep_database: str, sweep_redis_url: str) -> Any:
    """Runs an async scenario against the sweep database (emptied first) and Redis database."""
    return functools.partial(_with_stack, sweep_database, sweep_redis_url)


class SweepStack:
    """What one sweep needs: a pool on the sweep database, a broker client, a Celery app."""

    def __init__(self, pool: asyncpg.Pool, redis_url: str) -> None:
        self.pool = pool
        self.broker = AsyncRedis.from_url(redis_url)
        self.celery = make_celery("reconciler-test", redis_url, 60)

    async def sweep(self, settings: ReconcilerSettings = SETTINGS) -> SweepResult:
        return await sweep(self.pool, self.broker, self.celery, settings)

    async def insert(
        self,
        *,
        idle_s: float,
        age_s: float | None = None,
        status: str = "queued",
        requeues: int = 0,
    ) -> uuid.UUID:
        """A screening as the gateway writes it, last touched `idle_s` ago."""
        screening_id = uuid.uuid4()
        await self.pool.execute(
            "INSERT INTO screenings (id, model_name, clinical, image_key, image_format,"
            " image_bytes, image_sha256, status, requeues, created_at, updated_at)"
            " VALUES ($1, 'skinscreen-fusion', $2, $3, 'JPEG', 1, 'x', $4, $5,"
            " now() - make_interval(secs => $6), now() - make_interval(secs => $7))",
            screening_id,
            CLINICAL,
            f"{screening_id}.jpg",
            status,
            requeues,
            age_s if age_s is not None else idle_s,
            idle_s,
        )
        return screening_id

    def enqueue(self, screening_id: uuid.UUID) -> None:
        enqueue_screening(self.celery, self.task(screening_id))

    @staticmethod
    def task(screening_id: uuid.UUID) -> ScreeningTask:
        return ScreeningTask(screening_id=screening_id)

    async def row(self, screening_id: uuid.UUID) -> Any:
        return await self.pool.fetchrow(
            "SELECT status, requeues, failure_reason,"
            " extract(epoch FROM now() - updated_at)::float8 AS idle_s"
            " FROM screenings WHERE id = $1",
            screening_id,
        )

    async def waiting(self) -> list[dict[str, Any]]:
        """The tasks waiting in the screenings queue, decoded."""
        raw = await self.broker.lrange(QUEUE, 0, -1)
        return [json.loads(message) for message in raw]

    async def close(self) -> None:
        await self.broker.aclose()
        self.celery.close()


def test_a_screening_whose_task_was_lost_is_queued_again_with_its_task(in_sweep_stack) -> None:
    async def scenario(stack: SweepStack) -> None:
        lost = await stack.insert(idle_s=120)
        assert await stack.sweep() == SweepResult(requeued=[lost], failed=[])
        row = await stack.row(lost)
        assert (row["status"], row["requeues"]) == ("queued", 1)
        assert row["idle_s"] < 30, "a requeue counts as activity: the next sweep waits again"
        assert await live_task_ids(stack.broker, [QUEUE]) == {str(lost)}
        # The task is the one the gateway would have sent, rebuilt from the row.
        (message,) = await stack.waiting()
        args, _, _ = json.loads(base64.b64decode(message["body"]))
        assert ScreeningTask.model_validate(args[0]) == stack.task(lost)
        # Ids only: the answers stay in the row.
        assert args == [stack.task(lost).message()]
        # A second sweep right away leaves it: it is live now, and recent.
        assert await stack.sweep() == SweepResult(requeued=[], failed=[])

    in_sweep_stack(scenario)


def test_a_running_screening_whose_worker_lost_the_task_is_queued_again(in_sweep_stack) -> None:
    async def scenario(stack: SweepStack) -> None:
        lost = await stack.insert(idle_s=120, status="running")
        assert (await stack.sweep()).requeued == [lost]
        assert (await stack.row(lost))["status"] == "queued"

    in_sweep_stack(scenario)


def test_a_waiting_task_and_a_delivered_unacknowledged_one_are_left_alone(in_sweep_stack) -> None:
    async def scenario(stack: SweepStack) -> None:
        waiting = await stack.insert(idle_s=120)
        delivered = await stack.insert(idle_s=120, status="running")
        stack.enqueue(delivered)
        # Delivered to a consumer that has not acknowledged it: it waits in kombu's unacked
        # hash, as a busy (or killed) worker's tasks do until the visibility timeout.
        with stack.celery.connection_for_read() as connection:
            queue = connection.SimpleQueue(QUEUE)
            message = queue.get(timeout=10)
            assert message.headers["id"] == str(delivered)
            stack.enqueue(waiting)
            assert await live_task_ids(stack.broker, [QUEUE]) == {str(waiting), str(delivered)}
            assert await stack.sweep() == SweepResult(requeued=[], failed=[])
            queue.close()
        for screening_id, status in ((waiting, "queued"), (delivered, "running")):
            row = await stack.row(screening_id)
            assert (row["status"], row["requeues"]) == (status, 0)

    in_sweep_stack(scenario)


def test_a_recently_active_screening_is_left_alone(in_sweep_stack) -> None:
    async def scenario(stack: SweepStack) -> None:
        recent = await stack.insert(idle_s=5)
        assert await stack.sweep() == SweepResult(requeued=[], failed=[])
        assert (await stack.row(recent))["requeues"] == 0
        assert await stack.waiting() == []

    in_sweep_stack(scenario)


def test_a_task_lost_too_often_fails_its_screening_with_the_reason(in_sweep_stack) -> None:
    async def scenario(stack: SweepStack) -> None:
        doomed = await stack.insert(idle_s=120, requeues=SETTINGS.max_requeues)
        assert await stack.sweep() == SweepResult(requeued=[], failed=[doomed])
        row = await stack.row(doomed)
        assert row["status"] == "failed"
        assert "lost 3 times" in row["failure_reason"]
        assert "send the photo again" in row["failure_reason"]
        assert await stack.waiting() == []

    in_sweep_stack(scenario)


def test_a_screening_no_worker_takes_fails_after_the_give_up_time(in_sweep_stack) -> None:
    async def scenario(stack: SweepStack) -> None:
        untaken = await stack.insert(idle_s=4000, age_s=4000)
        stack.enqueue(untaken)  # its task waits, but no worker serves the model
        assert await stack.sweep() == SweepResult(requeued=[], failed=[untaken])
        row = await stack.row(untaken)
        assert row["status"] == "failed"
        assert "not scored within 3600 s" in row["failure_reason"]
        assert "skinscreen-fusion" in row["failure_reason"]

    in_sweep_stack(scenario)


def test_finished_screenings_are_never_touched(in_sweep_stack) -> None:
    async def scenario(stack: SweepStack) -> None:
        failed = await stack.insert(idle_s=4000, age_s=4000)
        await stack.pool.execute(
            "UPDATE screenings SET status = 'failed', failure_reason = 'before' WHERE id = $1",
            failed,
        )
        assert await stack.sweep() == SweepResult(requeued=[], failed=[])
        assert (await stack.row(failed))["failure_reason"] == "before"

    in_sweep_stack(scenario)


def test_concurrent_sweeps_queue_a_lost_task_once(in_sweep_stack) -> None:
    async def scenario(stack: SweepStack) -> None:
        lost = [await stack.insert(idle_s=120) for _ in range(20)]
        results = await asyncio.gather(*(stack.sweep() for _ in range(4)))
        requeued = [screening_id for result in results for screening_id in result.requeued]
        assert sorted(requeued) == sorted(lost)
        assert len(await stack.waiting()) == len(lost)

    in_sweep_stack(scenario)


def _with_stack(database_url: str, redis_url: str, scenario: Any) -> None:
    """Run `scenario` against the sweep database (emptied first) and Redis database."""

    async def main() -> None:
        pool = await create_pool(database_url, max_size=4)
        try:
            await pool.execute("TRUNCATE screenings CASCADE")
            stack = SweepStack(pool, redis_url)
            try:
                await scenario(stack)
            finally:
                await stack.close()
        finally:
            await pool.close()

    asyncio.run(main())


def test_the_worker_queues_again_a_screening_whose_task_was_lost(
    keys: Keys, idle_gateway: str, photos, database, worker, idle_redis
) -> None:
    """Accepted through a gateway whose Redis database no worker reads, then the task is
    dropped from it: to the worker's Redis the task is lost, as after a broker that lost
    its data. The worker's reconciler queues it again and the screening is scored."""
    scrape = Scrape(f"http://127.0.0.1:{worker.env['METRICS_PORT']}/metrics")
    before = scrape.value("skinscreen_inference_reconciled_total", action="requeued")
    with httpx.Client(base_url=idle_gateway, headers=keys.clinician, timeout=60) as client:
        accepted = submit(client, photos[1])
        assert accepted.status_code == 202, accepted.text
        screening_id = accepted.json()["id"]
        assert idle_redis.delete(QUEUE) == 1

        def finished() -> dict[str, Any]:
            body: dict[str, Any] = client.get(f"/v1/screenings/{screening_id}").json()
            return body if body["status"] in ("done", "failed") else {}

        body = wait_until(finished, "the lost screening is scored", RECONCILE_AFTER_S + 90)
    assert body["status"] == "done", body
    assert database.value("SELECT requeues FROM screenings WHERE id = $1::uuid", screening_id) == 1
    after = Scrape(f"http://127.0.0.1:{worker.env['METRICS_PORT']}/metrics")
    assert after.value("skinscreen_inference_reconciled_total", action="requeued") > before
