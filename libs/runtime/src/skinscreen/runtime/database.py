"""PostgreSQL access shared by gateway and inference: pools, versioned migrations, channels."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from importlib import resources
from typing import Any, Final

import asyncpg

logger = logging.getLogger(__name__)

# NOTIFY channel: the payload is a screening id that reached `done` or `failed`.
FINISHED_CHANNEL: Final = "screening_finished"

# Serialises concurrent pre-start steps (several gateway pods starting at once).
_MIGRATION_LOCK: Final = 0x5C5C_0001


async def _init_connection(connection: asyncpg.Connection) -> None:
    await connection.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
    )


# asyncpg waits 60 s for a connection by default; a server that is down refuses at once, one
# that is unreachable would hold every caller that long.
CONNECT_TIMEOUT_S: Final = 10.0


class BoundedPool(asyncpg.Pool):
    """asyncpg's pool, whose `acquire` (and so `fetch`, `execute`, ...) waits at most
    `acquire_timeout_s` for a connection, connecting included, then raises TimeoutError."""

    def __init__(self, *args: Any, acquire_timeout_s: float | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acquire_timeout_s = acquire_timeout_s

    def acquire(self, *, timeout: float | None = None) -> Any:
        return super().acquire(timeout=self.acquire_timeout_s if timeout is None else timeout)


async def create_pool(
    url: str,
    *,
    max_size: int = 10,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    command_timeout_s: float | None = None,
    acquire_timeout_s: float | None = None,
) -> asyncpg.Pool:
    """A pool whose connections read and write jsonb as Python objects.

    Every wait on the server is bounded as asked: opening a connection
    (`connect_timeout_s`), any one statement (`command_timeout_s`), getting a
    connection from the pool, connecting included (`acquire_timeout_s`). A
    bound that is hit raises TimeoutError (an OSError), as does a refused
    connection. At least one connection is opened here: a server that is down
    fails the caller now.
    """
    pool = BoundedPool(
        url,
        min_size=1,
        max_size=max_size,
        max_queries=50_000,
        max_inactive_connection_lifetime=300.0,
        init=_init_connection,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        acquire_timeout_s=acquire_timeout_s,
        timeout=connect_timeout_s,
        command_timeout=command_timeout_s,
    )
    await pool
    return pool


async def wait_for_database(url: str, timeout_s: float) -> None:
    """Connect until PostgreSQL answers, or raise after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            connection = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_S)
        except (OSError, asyncpg.PostgresError) as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"PostgreSQL at DATABASE_URL did not answer: {exc}") from exc
            await asyncio.sleep(0.5)
            continue
        await connection.close()
        return


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration shipped with the package, in order."""
    found = []
    for entry in resources.files("skinscreen.runtime.migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text()))
    return sorted(found)


async def apply_migrations(url: str) -> list[str]:
    """Apply the migrations not yet applied, each in its own transaction; return their names."""
    connection = await asyncpg.connect(url)
    applied: list[str] = []
    try:
        await connection.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {
            row["version"]
            for row in await connection.fetch("SELECT version FROM schema_migrations")
        }
        for version, name, sql in migrations():
            if version in done:
                continue
            async with connection.transaction():
                await connection.execute(sql)
                await connection.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
            logger.info("applied migration %s", name)
            applied.append(name)
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
        await connection.close()
    return applied
