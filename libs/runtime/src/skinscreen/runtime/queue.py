"""The queue contract between gateway and inference: task name, queue, message, Celery config.

Both services import it, so a message the gateway sends is the one the worker
reads. `ScreeningTask` is the message `proto/skinscreen/v1/screening.proto`
describes; tests/serving/test_queue_contract.py pins that they agree.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any, Final
from uuid import UUID

from celery import Celery
from kombu import Queue
from kombu.transport import redis as kombu_redis
from pydantic import BaseModel, ConfigDict
from redis.asyncio import Redis as AsyncRedis

logger = logging.getLogger(__name__)

TASK_NAME: Final = "skinscreen.screen"
# The model a screening goes to when it names none, and whose queue is plain `screenings`.
DEFAULT_MODEL_NAME: Final = "skinscreen-fusion"
QUEUE: Final = "screenings"
# Training has its own queue, never shared with inference: a run takes minutes to hours
# and must not hold up screenings, nor be taken by an inference worker.
TRAINING_TASK_NAME: Final = "skinscreen.train"
TRAINING_QUEUE: Final = "training"
UNACKED_MUTEX_EXPIRE_S: Final = 10
# Bounds on every synchronous broker call (a publish, an ack): connecting, and any one
# command. Redis answers in well under a millisecond; a broker that is down or hung makes a
# publish fail within about BROKER_CONNECT_TIMEOUT_S (refused: at once), so the gateway
# answers 503 instead of holding the request. A consuming worker's BRPOP runs in Celery's
# event loop, where socket timeouts do not apply (kombu's health checks cover it).
BROKER_CONNECT_TIMEOUT_S: Final = 1.0
BROKER_SOCKET_TIMEOUT_S: Final = 1.0


def queue_for(model_name: str) -> str:
    """The queue of a model's screenings: each served model has workers of its own.

    The default model keeps the plain name, so its queue, its KEDA trigger and
    the messages already waiting in it stay as they were before other models.
    """
    return QUEUE if model_name == DEFAULT_MODEL_NAME else f"{QUEUE}.{model_name}"


class ScreeningTask(BaseModel):
    """One queued screening: its id, and the model it was sent to.

    Nothing else: the worker reads the photo's key and the clinical answers from the
    screening's row in PostgreSQL (`screenings.task_inputs`). Redis keeps its messages on
    disk (the append-only file) and Celery copies a message's arguments into its headers
    (`argsrepr`) and logs; health data stays where it must be, in PostgreSQL.
    """

    # Extra fields are ignored, not refused: a message from the release before (which also
    # carried `image_key` and `clinical`) may still wait in Redis during a rolling upgrade;
    # the worker reads both from the row instead.
    model_config = ConfigDict(extra="ignore", frozen=True)

    screening_id: UUID
    # The model asked for; a worker serving another one refuses the task without a database
    # round trip.
    model_name: str = DEFAULT_MODEL_NAME

    def message(self) -> dict[str, Any]:
        """The task's only argument, as JSON."""
        return self.model_dump(mode="json")


class _RedisQoS(kombu_redis.QoS):
    """kombu's, except on a channel whose broker connection is gone: nothing to write then.

    When Redis goes down, Celery's consumer closes the channel and kombu tries to
    push its unacknowledged messages back to their queue; tasks still running in
    worker threads then acknowledge on that closed channel. Both need the broker
    and fail with an AttributeError (kombu's connection is gone), not a connection
    error, so Celery's consumer stops the worker for good. Neither write is
    needed: the messages wait in Redis' unacked hash and come back after the
    visibility timeout, where a redelivered screening already done is only
    acknowledged (every result write is conditional); the reconciler covers a
    Redis that lost them.
    """

    def _broker_gone(self) -> bool:
        transport = self.channel.connection
        return transport is None or transport.client is None

    def restore_unacked(self, client: Any = None) -> None:
        if self._broker_gone():
            logger.warning(
                "broker connection lost: %d unacknowledged task(s) come back after the "
                "visibility timeout",
                len(self._delivered or ()),
            )
            return
        super().restore_unacked(client)

    def ack(self, delivery_tag: str) -> None:
        if self._broker_gone():
            logger.warning(
                "broker connection lost: task %s finished, its message comes back after the "
                "visibility timeout and is then only acknowledged",
                delivery_tag,
            )
            return
        super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if self._broker_gone():
            return  # as for ack: the message comes back after the visibility timeout
        super().reject(delivery_tag, requeue)


class _RedisChannel(kombu_redis.Channel):
    QoS = _RedisQoS


class RedisTransport(kombu_redis.Transport):
    """kombu's Redis transport with `_RedisQoS`: a worker outlives a Redis restart."""

    Channel = _RedisChannel


class CeleryConfig:
    """Celery settings, all under the CELERY_ namespace (`config_from_object(namespace=...)`)."""

    def __init__(
        self, redis_url: str, visibility_timeout_s: int, models: Sequence[str] = ()
    ) -> None:
        self.CELERY_BROKER_URL = redis_url
        self.CELERY_BROKER_TRANSPORT = f"{__name__}:RedisTransport"
        self.CELERY_RESULT_BACKEND = redis_url
        # Results live in PostgreSQL; Redis holds only what can be lost.
        self.CELERY_TASK_IGNORE_RESULT = True
        names = dict.fromkeys([QUEUE, *(queue_for(model) for model in models), TRAINING_QUEUE])
        self.CELERY_TASK_QUEUES = tuple(Queue(name, routing_key=name) for name in names)
        self.CELERY_TASK_DEFAULT_QUEUE = QUEUE
        self.CELERY_TASK_ROUTES = {
            TASK_NAME: {"queue": QUEUE},
            TRAINING_TASK_NAME: {"queue": TRAINING_QUEUE},
        }
        self.CELERY_TASK_CREATE_MISSING_QUEUES = False
        # Acknowledge after the result is in PostgreSQL: a killed worker's tasks come back.
        self.CELERY_TASK_ACKS_LATE = True
        self.CELERY_TASK_REJECT_ON_WORKER_LOST = True
        self.CELERY_WORKER_PREFETCH_MULTIPLIER = 1
        self.CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
        self.CELERY_BROKER_CONNECTION_TIMEOUT = BROKER_CONNECT_TIMEOUT_S
        # One immediate second try (a pooled connection gone stale across a Redis restart is
        # replaced), then the publish fails: a publisher never waits on a broker that is down.
        self.CELERY_TASK_PUBLISH_RETRY_POLICY = {
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.2,
        }
        # A killed worker's unacknowledged tasks return after the visibility timeout; sweep for
        # them ten times per timeout instead of kombu's default of every 100 s.
        self.CELERY_BROKER_TRANSPORT_OPTIONS = {
            "visibility_timeout": visibility_timeout_s,
            "unacked_restore_interval": max(1, visibility_timeout_s // 10),
            "unacked_restore_throttle": 1,
            # The sweep's lock: kombu keeps it 300 s, so a worker killed while sweeping (a
            # sweep takes milliseconds) would hold back every redelivery for five minutes.
            "unacked_mutex_expire": UNACKED_MUTEX_EXPIRE_S,
            "socket_connect_timeout": BROKER_CONNECT_TIMEOUT_S,
            "socket_timeout": BROKER_SOCKET_TIMEOUT_S,
        }
        self.CELERY_WORKER_HIJACK_ROOT_LOGGER = False


def enqueue_screening(app: Celery, task: ScreeningTask) -> None:
    """Publish a screening's task on its model's queue (declared on `app` if new).

    The task id is the screening id, so the reconciler can tell a screening whose
    task waits in Redis from one whose task was lost (`live_task_ids`).
    """
    message = task.message()
    app.send_task(
        TASK_NAME,
        args=[message],
        # Celery puts repr(args) in the message's headers and the worker's log lines; say
        # it explicitly (ids only), so a field added to the message later is not copied there
        # without a thought.
        argsrepr=task_repr(task),
        kwargsrepr="{}",
        queue=declare_model_queue(app, task.model_name),
        task_id=str(task.screening_id),
        # The result is in PostgreSQL: without this, Celery subscribes the publisher to the
        # task's result on Redis (one subscription per task, kept for good), and a publish
        # during a Redis outage waits ~19 s for that subscription to give up.
        ignore_result=True,
    )


def task_repr(task: ScreeningTask) -> str:
    """What Celery shows of a task's arguments (headers `argsrepr`, log lines): ids only."""
    return f"[screening_id={task.screening_id}, model_name={task.model_name}]"


async def live_task_ids(broker: AsyncRedis, queues: Iterable[str]) -> set[str]:
    """The ids of the tasks Redis holds for `queues`: waiting, or delivered and unacknowledged.

    Reads kombu's Redis layout: a list per queue and priority, and the `unacked`
    hash of delivered messages (each `[message, exchange, routing_key]`).
    """
    keys = [
        queue if priority == 0 else f"{queue}{kombu_redis.Channel.sep}{priority}"
        for queue in queues
        for priority in kombu_redis.Channel.priority_steps
    ]
    messages = [json.loads(raw) for key in keys for raw in await broker.lrange(key, 0, -1)]
    unacked = await broker.hvals(kombu_redis.Channel.unacked_key)
    messages += [json.loads(held)[0] for held in unacked]
    return {str(message["headers"]["id"]) for message in messages}


def declare_model_queue(app: Celery, model_name: str) -> str:
    """Declare a model's queue on a running app (the gateway learns models as it goes)."""
    queue = queue_for(model_name)
    if queue not in app.amqp.queues:
        app.amqp.queues.add(Queue(queue, routing_key=queue))
    return queue


def make_celery(
    name: str, redis_url: str, visibility_timeout_s: int, models: Sequence[str] = ()
) -> Celery:
    """A Celery app with the screenings, training and `models`' queues declared."""
    app = Celery(name)
    config = CeleryConfig(redis_url, visibility_timeout_s, models)
    app.config_from_object(config, namespace="CELERY")
    return app
