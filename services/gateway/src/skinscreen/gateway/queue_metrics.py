"""Prometheus metrics of the Celery queues on Redis, read when they are scraped.

The gateway exposes them on its /metrics: it is always running, while the
workers that drain the queues may be scaled down. Kombu keeps each queue as a
Redis list of the same name; producers push on the left and workers pop on
the right, so the message at index -1 is the next one a worker takes.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from uuid import UUID

import asyncpg
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.asyncio import Redis
from redis.exceptions import RedisError

from skinscreen.runtime import screenings
from skinscreen.runtime.queue import QUEUE, TRAINING_QUEUE, queue_for

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueueState:
    """What one scrape read: tasks waiting per queue, and how long the next one has waited."""

    depths: dict[str, int] = field(default_factory=dict)
    # Only for queues whose messages name a screening; empty queues read 0.
    oldest_age_s: dict[str, float] = field(default_factory=dict)


def screening_id_of(raw: bytes | str) -> UUID | None:
    """The screening a queued kombu message is about, or None if it is not a screening task."""
    try:
        message = json.loads(raw)
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return UUID(str(args[0]["screening_id"]))
    except (ValueError, KeyError, IndexError, TypeError, binascii.Error):
        return None


async def served_queues(pool: asyncpg.Pool) -> list[str]:
    """The screening queues of every model with an active version (the default's always)."""
    try:
        names = await pool.fetch("SELECT name FROM model_versions WHERE status = 'active'")
    except (asyncpg.PostgresError, OSError) as exc:
        logger.warning("queue metrics: PostgreSQL did not answer: %s", exc)
        names = []
    return sorted({QUEUE, *(queue_for(row["name"]) for row in names)})


async def read_queue_state(
    redis: Redis,
    pool: asyncpg.Pool,
    screening_queues: Sequence[str] = (QUEUE,),
    other_queues: Sequence[str] = (TRAINING_QUEUE,),
) -> QueueState:
    """Read depths from Redis and, per screening queue, the next screening's age.

    A server that does not answer leaves its series out of this scrape rather
    than failing the whole /metrics response (the gateway's own series stay).
    """
    state = QueueState()
    heads: dict[str, UUID] = {}
    try:
        for queue in [*screening_queues, *other_queues]:
            state.depths[queue] = int(await redis.llen(queue))
        for queue in screening_queues:
            head = await redis.lindex(queue, -1)
            if head is None:
                state.oldest_age_s[queue] = 0.0
            elif (screening_id := screening_id_of(head)) is not None:
                heads[queue] = screening_id
    except (RedisError, OSError) as exc:
        logger.warning("queue metrics: Redis did not answer: %s", exc)
        return QueueState()
    if not heads:
        return state
    try:
        # Measured on the database's clock, the one that stamped created_at.
        waited = await screenings.waited_s(pool, list(heads.values()))
    except (asyncpg.PostgresError, OSError) as exc:
        logger.warning("queue metrics: PostgreSQL did not answer: %s", exc)
        return state
    for queue, screening_id in heads.items():
        if screening_id in waited:
            state.oldest_age_s[queue] = max(0.0, float(waited[screening_id]))
    return state


class QueueCollector(Collector):
    """Exposes one `QueueState` as gauges; made anew for every scrape."""

    def __init__(self, state: QueueState) -> None:
        self.state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "skinscreen_queue_depth_tasks",
            "Tasks waiting in a Celery queue on Redis (not yet taken by any worker).",
            labels=["queue"],
        )
        for queue, tasks in sorted(self.state.depths.items()):
            depth.add_metric([queue], tasks)
        yield depth
        age = GaugeMetricFamily(
            "skinscreen_queue_oldest_task_age_seconds",
            "How long the next task a worker will take has waited since its screening was "
            "accepted; 0 when the queue is empty.",
            labels=["queue"],
        )
        for queue, seconds in sorted(self.state.oldest_age_s.items()):
            age.add_metric([queue], seconds)
        yield age
