"""Wakes `?wait=N` requests when PostgreSQL announces a finished screening (LISTEN/NOTIFY).

One listening connection per gateway process; waiters sleep on an event
instead of polling the database.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from uuid import UUID

import asyncpg

from skinscreen.runtime.database import FINISHED_CHANNEL

logger = logging.getLogger(__name__)


class FinishedScreenings:
    """Routes `screening_finished` notifications to the requests waiting for those ids."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._connection: asyncpg.Connection | None = None

    async def start(self, url: str) -> None:
        self._connection = await asyncpg.connect(url)
        await self._connection.add_listener(FINISHED_CHANNEL, self._on_notify)

    async def stop(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    @property
    def listening(self) -> bool:
        return self._connection is not None and not self._connection.is_closed()

    def _on_notify(self, _connection: object, _pid: int, _channel: str, payload: object) -> None:
        for event in self._waiters.get(str(payload), ()):
            event.set()

    @asynccontextmanager
    async def watch(self, screening_id: UUID) -> AsyncIterator[asyncio.Event]:
        """An event set when the screening finishes; subscribe before reading its row."""
        key = str(screening_id)
        event = asyncio.Event()
        self._waiters[key].add(event)
        try:
            yield event
        finally:
            self._waiters[key].discard(event)
            if not self._waiters[key]:
                del self._waiters[key]
