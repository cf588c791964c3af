"""The reconciler: every accepted screening ends `done` or `failed`, whatever Redis lost.

A screening's row is written before its task is published, and Redis may lose a
task: its data on a restart without persistence, a worker killed between taking
a message and recording it as unacknowledged. Each worker sweeps every
`RECONCILE_INTERVAL_S` (one sweep at a time across workers, by an advisory lock)
for screenings of any model that sit `queued` or `running` with no activity for
`RECONCILE_AFTER_S`:
- no task for it in Redis (waiting or unacknowledged): queue it again, up to
  `RECONCILE_MAX_REQUEUES` times, then end it `failed` with the reason;
- accepted more than `RECONCILE_GIVE_UP_S` ago (e.g. no worker serves its
  model): end it `failed` with the reason, so the clinician is told, not kept waiting.
A task queued twice is harmless: every write is conditional on the screening not
being finished (`skinscreen.runtime.screenings`), so its result is written once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from typing import Any, Final
from uuid import UUID

import asyncpg
from celery import Celery
from redis.asyncio import Redis as AsyncRedis

from skinscreen.runtime import screenings
from skinscreen.runtime.database import create_pool
from skinscreen.runtime.queue import ScreeningTask, enqueue_screening, live_task_ids, queue_for

from . import metrics

logger = logging.getLogger(__name__)

# pg_try_advisory_xact_lock key: one sweep at a time, whichever worker runs it.
_SWEEP_LOCK: Final = 0x5C5C_0007
# Screenings looked at per sweep; the next sweep takes the rest.
SWEEP_LIMIT: Final = 500


@dataclass(frozen=True)
class ReconcilerSettings:
    interval_s: float
    after_s: float
    max_requeues: int
    give_up_s: float


@dataclass(frozen=True)
class SweepResult:
    requeued: list[UUID]
    failed: list[UUID]


class Reconciler:
    """Sweeps from a thread of its own with its own event loop, pool and broker client."""

    def __init__(
        self, database_url: str, redis_url: str, celery: Celery, settings: ReconcilerSettings
    ) -> None:
        self.database_url = database_url
        self.redis_url = redis_url
        self.celery = celery
        self.settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reconciler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        asyncio.run(self._loop())

    async def _loop(self) -> None:
        pool: asyncpg.Pool | None = None
        broker = AsyncRedis.from_url(self.redis_url)
        try:
            while not self._stop.is_set():
                try:
                    if pool is None:
                        pool = await create_pool(
                            self.database_url, max_size=1, command_timeout_s=30.0
                        )
                    await sweep(pool, broker, self.celery, self.settings)
                except Exception:
                    # The database or the broker is down: the next sweep tries again.
                    logger.exception("reconciler sweep failed; trying again")
                await asyncio.to_thread(self._stop.wait, self.settings.interval_s)
        finally:
            await broker.aclose()
            if pool is not None:
                await pool.close()


async def sweep(
    pool: asyncpg.Pool, broker: AsyncRedis, celery: Celery, settings: ReconcilerSettings
) -> SweepResult:
    """One pass over stale screenings; returns what it queued again and what it failed."""
    result = SweepResult([], [])
    async with pool.acquire() as connection, connection.transaction():
        if not await connection.fetchval("SELECT pg_try_advisory_xact_lock($1)", _SWEEP_LOCK):
            return result  # another worker is sweeping
        stale = await screenings.stale(connection, settings.after_s, SWEEP_LIMIT)
        if not stale:
            return result
        live = await live_task_ids(broker, {queue_for(row["model_name"]) for row in stale})
        for row in stale:
            reason = _give_up_reason(row, live, settings)
            if reason is not None:
                if await _fail(connection, row, reason):
                    result.failed.append(row["id"])
            elif str(row["id"]) not in live and await _requeue(connection, celery, row, settings):
                result.requeued.append(row["id"])
    return result


async def _fail(connection: screenings.Connection, row: Any, reason: str) -> bool:
    if not await screenings.fail(connection, row["id"], reason):
        return False  # finished meanwhile
    logger.error("screening %s failed: %s", row["id"], reason)
    metrics.reconciled(row["model_name"], "failed")
    return True


async def _requeue(
    connection: screenings.Connection, celery: Celery, row: Any, settings: ReconcilerSettings
) -> bool:
    if not await screenings.requeue(connection, row["id"], settings.after_s):
        return False  # claimed or finished meanwhile
    # Published before the commit: if publishing fails, the row stays as it was; if the
    # commit fails, the task is there twice, which is harmless.
    await asyncio.to_thread(enqueue_screening, celery, _task(row))
    logger.warning(
        "screening %s had no task in Redis after %.0f s; queued again (%d of %d)",
        row["id"],
        settings.after_s,
        row["requeues"] + 1,
        settings.max_requeues,
    )
    metrics.reconciled(row["model_name"], "requeued")
    return True


def _give_up_reason(row: Any, live: set[str], settings: ReconcilerSettings) -> str | None:
    if row["age_s"] > settings.give_up_s:
        return (
            f"not scored within {settings.give_up_s:.0f} s of acceptance: no worker took it "
            f"(is a worker serving model {row['model_name']}?); send the photo again"
        )
    if str(row["id"]) not in live and row["requeues"] >= settings.max_requeues:
        return (
            f"its task was lost {row['requeues'] + 1} times (queued again "
            f"{row['requeues']} times); send the photo again"
        )
    return None


def _task(row: Any) -> ScreeningTask:
    return ScreeningTask(screening_id=row["id"], model_name=row["model_name"])
