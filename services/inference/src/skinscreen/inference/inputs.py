"""A task's inputs (photo key, clinical answers) read from PostgreSQL, many tasks per statement.

The queue message carries only the screening id and the model name
(`skinscreen.runtime.queue.ScreeningTask`): health data stays out of Redis. Each
worker thread asks for its screening's row here; the reader runs one statement at a
time on one connection, and every request that arrived meanwhile shares the next
statement, so a full batch of tasks costs a few round trips, not one each.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from uuid import UUID

import asyncpg

from skinscreen.runtime import screenings
from skinscreen.runtime.database import create_pool

# Longest wait for the statement or the connection: a hung PostgreSQL fails the read (the
# task retries) instead of holding its thread.
DATABASE_TIMEOUT_S = 30.0
# Most screenings read by one statement.
MAX_READ = 256

_Request = tuple[UUID, concurrent.futures.Future[screenings.TaskInputs | None]]


class InputReader:
    """Owns an event loop thread and a one-connection pool; `read` is called from any thread."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="task-inputs", daemon=True
        )
        self._queue: asyncio.Queue[_Request] | None = None
        self._pool: asyncpg.Pool | None = None
        self._task: asyncio.Task[None] | None = None
        # Statements run so far (tests read it to see that reads share statements).
        self.statements = 0

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._open(), self._loop).result()

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def read(self, screening_id: UUID) -> screenings.TaskInputs | None:
        """The screening's inputs; None when it has no row. Raises what the database raised."""
        assert self._queue is not None, "InputReader.start() first"
        future: concurrent.futures.Future[screenings.TaskInputs | None] = (
            concurrent.futures.Future()
        )
        self._loop.call_soon_threadsafe(self._queue.put_nowait, (screening_id, future))
        return future.result(DATABASE_TIMEOUT_S * 2)

    async def _open(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run())

    async def _close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._pool is not None:
            await self._pool.close()

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_READ and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                found = await asyncio.wait_for(
                    self._read([id_ for id_, _ in batch]), DATABASE_TIMEOUT_S
                )
            except Exception as exc:  # each task decides whether to retry
                # The connection is not used again: after a server restart or a statement
                # cut short it can be left mid-operation ("another operation is in
                # progress"), and giving it back to the pool can wait for ever.
                self._discard_pool()
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for screening_id, future in batch:
                future.set_result(found.get(screening_id))

    async def _read(self, ids: list[UUID]) -> dict[UUID, screenings.TaskInputs]:
        if self._pool is None:
            self._pool = await create_pool(
                self.database_url,
                max_size=1,
                command_timeout_s=DATABASE_TIMEOUT_S,
                acquire_timeout_s=DATABASE_TIMEOUT_S,
            )
        self.statements += 1
        return await screenings.task_inputs(self._pool, ids)

    def _discard_pool(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None
