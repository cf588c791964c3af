"""Wakes `?wait=N` requests when PostgreSQL announces a finished screening (LISTEN/NOTIFY).

One listening connection per gateway process; waiters sleep on an event
instead of polling the database. The connection re-opens by itself: when it is
lost (PostgreSQL restarted, the network dropped it; a periodic check finds a
connection that died silently), it is opened again with backoff, and every
screening a request waits on is read once more, since a NOTIFY sent while
nobody listened is gone. Meanwhile `listening` is false, and /readyz says so.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Final
from uuid import UUID

import asyncpg

from skinscreen.runtime import screenings
from skinscreen.runtime.database import FINISHED_CHANNEL

logger = logging.getLogger(__name__)

# The first pause before re-opening; each failed attempt doubles it, up to `reconnect_max_s`.
RECONNECT_MIN_S: Final = 0.1
FINISHED: Final = frozenset({"done", "failed"})
# What a lost or unreachable server raises (TimeoutError is an OSError).
LOST: Final = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


class FinishedScreenings:
    """Routes `screening_finished` notifications to the requests waiting for those ids."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout_s: float = 10.0,
        check_s: float = 5.0,
        reconnect_max_s: float = 5.0,
    ) -> None:
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self.check_s = check_s
        self.reconnect_max_s = reconnect_max_s
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._connection: asyncpg.Connection | None = None
        self._supervisor: asyncio.Task[None] | None = None
        # How many times the connection was opened; the tests and logs read it.
        self.opened = 0

    async def start(self) -> None:
        """Listen now (a server that is down fails the caller), and keep listening."""
        connection = await self._open()
        self._supervisor = asyncio.create_task(self._supervise(connection), name="listen")

    async def stop(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        connection, self._connection = self._connection, None
        if connection is not None:
            with suppress(*LOST):
                await asyncio.wait_for(connection.close(), self.connect_timeout_s)
            connection.terminate()

    @property
    def listening(self) -> bool:
        return self._connection is not None and not self._connection.is_closed()

    async def _open(self) -> asyncpg.Connection:
        connection = await asyncpg.connect(
            self.url, timeout=self.connect_timeout_s, command_timeout=self.check_s
        )
        try:
            await connection.add_listener(FINISHED_CHANNEL, self._on_notify)
        except BaseException:
            connection.terminate()
            raise
        self._connection = connection
        self.opened += 1
        return connection

    async def _supervise(self, connection: asyncpg.Connection) -> None:
        """Hold the connection while it lives; re-open it whenever it is lost."""
        reopened = False
        while True:
            try:
                if reopened:
                    await self._recheck(connection)
                await self._hold(connection)
            except LOST as exc:
                logger.warning("LISTEN connection lost (%s); re-opening it", exc)
            finally:
                self._connection = None
                connection.terminate()
            connection = await self._reopen()
            reopened = True

    async def _hold(self, connection: asyncpg.Connection) -> None:
        """Return or raise once the connection is gone; check it every `check_s`."""
        lost = asyncio.Event()
        connection.add_termination_listener(lambda _connection: lost.set())
        while not lost.is_set() and not connection.is_closed():
            try:
                await asyncio.wait_for(lost.wait(), self.check_s)
            except TimeoutError:
                await connection.fetchval("SELECT 1", timeout=self.connect_timeout_s)
        logger.warning("LISTEN connection closed; re-opening it")

    async def _reopen(self) -> asyncpg.Connection:
        pause = RECONNECT_MIN_S
        while True:
            try:
                connection = await self._open()
            except LOST as exc:
                # Full jitter: gateways that lost the server together do not return together.
                logger.info("LISTEN connection not re-opened yet: %s", exc)
                await asyncio.sleep(random.uniform(0, pause))
                pause = min(pause * 2, self.reconnect_max_s)
                continue
            logger.warning("LISTEN connection re-opened")
            return connection

    async def _recheck(self, connection: asyncpg.Connection) -> None:
        """Wake the waiters whose screening finished while nobody listened.

        Listening again first, then reading: a screening that finishes in between
        is both read finished and notified, which wakes its waiters twice, harmlessly.
        """
        for key in list(self._waiters):
            # Lost again (raises): the next re-open reads them all again.
            row = await screenings.get(connection, UUID(key))
            if row is not None and row["status"] in FINISHED:
                self._wake(key)

    def _on_notify(self, _connection: object, _pid: int, _channel: str, payload: object) -> None:
        self._wake(str(payload))

    def _wake(self, key: str) -> None:
        for event in self._waiters.get(key, ()):
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
