"""The pre-start step: wait for PostgreSQL and Redis, apply migrations, register the models.

Models shipped with the project (SHIPPED_MODELS) are copied into the artifact
store when missing; every version in the store is registered, and a model
name without an active version gets its newest one, so a fresh database serves.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time

from redis import Redis
from redis.exceptions import RedisError

from skinscreen.runtime import registry
from skinscreen.runtime.artifacts import ArtifactStore, import_published
from skinscreen.runtime.database import apply_migrations, create_pool, wait_for_database

from .settings import get_settings

logger = logging.getLogger("skinscreen.gateway.prestart")


def wait_for_redis(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    client = Redis.from_url(url)
    while True:
        try:
            client.ping()
            return
        except RedisError as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"Redis at REDIS_URL did not answer: {exc}") from exc
            time.sleep(0.5)
        finally:
            client.close()


async def register_models(database_url: str, store: ArtifactStore, name: str) -> None:
    pool = await create_pool(database_url, max_size=2)
    try:
        for active in await registry.register_store(pool, store, actor="pre-start"):
            logger.info(
                "active model: %s %s (%s)", active.name, active.version, active.artifact_uri
            )
        if await registry.get_active(pool, name) is None:
            raise SystemExit(
                f"no version of model {name} is published in MODEL_STORE={store.root_uri}"
                " or registered active; publish one (skinscreen-trainer publish) or set "
                "SHIPPED_MODELS to the project's models/ folder"
            )
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait per server")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    asyncio.run(wait_for_database(settings.DATABASE_URL, args.timeout))
    applied = asyncio.run(apply_migrations(settings.DATABASE_URL))
    logger.info("migrations applied: %s", ", ".join(applied) or "none (schema up to date)")
    wait_for_redis(settings.REDIS_URL, args.timeout)
    store = ArtifactStore(settings.MODEL_STORE)
    if settings.SHIPPED_MODELS is not None:
        for uri in import_published(store, settings.SHIPPED_MODELS):
            logger.info("shipped model published at %s", uri)
    asyncio.run(register_models(settings.DATABASE_URL, store, settings.MODEL_NAME))


if __name__ == "__main__":
    main()
