"""Keeps a worker on the registry's active model version, switching between batches.

A worker learns of a new active version at once from Redis pub/sub, and by
re-reading the registry every MODEL_POLL_S in case a message was missed. It
loads the new version in the background while the old one keeps scoring, then
swaps: the batcher reads `current` once per batch. A version that fails to
load is reported (log, `load_failures`) and the old one keeps serving.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
from collections.abc import Callable

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from skinscreen.runtime import registry

from . import metrics
from .model import LoadedModel, load_version

logger = logging.getLogger(__name__)


class NoActiveModelError(RuntimeError):
    """The registry has no active version of the model this worker serves."""


class ActiveModel:
    """The model a worker serves; all its methods run on the batcher's event loop."""

    def __init__(
        self,
        name: str,
        redis_url: str,
        poll_s: float,
        intra_op_threads: int,
        on_load_failure: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self.name = name
        self.redis_url = redis_url
        self.poll_s = poll_s
        self.intra_op_threads = intra_op_threads
        self.on_load_failure = on_load_failure
        self.load_failures = 0
        self._current: LoadedModel | None = None
        self._pool: asyncpg.Pool | None = None
        # Loading runs beside the inference thread, so batches go on during a load.
        self._loader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="model-loader")
        self._refreshing: asyncio.Task[None] | None = None
        self._watchers: list[asyncio.Task[None]] = []

    @property
    def current(self) -> LoadedModel:
        if self._current is None:
            raise NoActiveModelError(f"no version of {self.name} is loaded yet")
        return self._current

    async def start(self, pool: asyncpg.Pool) -> None:
        """Load the active version (a worker without one cannot start), then follow changes."""
        self._pool = pool
        await self.refresh()
        if self._current is None:
            raise NoActiveModelError(
                f"the registry has no active version of {self.name}; publish one and promote "
                "it (skinscreen-trainer models promote), or run the pre-start step"
            )
        self._watchers = [
            asyncio.create_task(self._listen(), name="model-activations"),
            asyncio.create_task(self._poll(), name="model-poll"),
        ]

    async def stop(self) -> None:
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        self._loader.shutdown(wait=False, cancel_futures=True)

    async def refresh(self) -> LoadedModel | None:
        """Load the registry's active version if it is not the one serving; one load at a time."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._refresh())
        await asyncio.shield(self._refreshing)
        return self._current

    async def _refresh(self) -> None:
        assert self._pool is not None
        active = await registry.get_active(self._pool, self.name)
        if active is None:
            logger.warning("the registry has no active version of %s", self.name)
            return
        if self._current is not None and self._current.version == active.version:
            return
        try:
            loaded = await asyncio.get_running_loop().run_in_executor(
                self._loader, load_version, active, self.intra_op_threads
            )
        except Exception as exc:  # whatever broke the load, the old version keeps serving
            self.load_failures += 1
            serving = self._current.version if self._current is not None else "nothing"
            logger.error(
                "could not load %s %s from %s: %s; still serving %s",
                self.name,
                active.version,
                active.artifact_uri,
                exc,
                serving,
            )
            if self.on_load_failure is not None:
                self.on_load_failure(active.version, exc)
            return
        previous = self._current.version if self._current is not None else None
        self._current = loaded
        metrics.model_loaded(name=self.name, version=loaded.version, provider=loaded.provider)
        logger.info(
            "serving %s %s on %s (was %s)", self.name, loaded.version, loaded.provider, previous
        )

    async def _listen(self) -> None:
        """Refresh on every activation message for this model; reconnect if Redis goes away."""
        while True:
            client = Redis.from_url(self.redis_url)
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(registry.ACTIVATIONS_CHANNEL)
                    # A switch announced while (re)connecting would be missed: look now.
                    await self.refresh()
                    async for message in pubsub.listen():
                        if message["type"] != "message":
                            continue
                        if json.loads(message["data"]).get("name") == self.name:
                            await self.refresh()
            except (RedisError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                logger.warning("model activations channel: %s; reconnecting", exc)
                await asyncio.sleep(1.0)
            finally:
                await client.aclose()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.refresh()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                logger.warning("could not read the model registry: %s", exc)
