"""The pre-start step: wait for PostgreSQL and Redis, apply migrations, check the model."""

from __future__ import annotations

import argparse
import asyncio
import logging
import time

from redis import Redis
from redis.exceptions import RedisError

from skinscreen.core.card import latest_version, verified_model
from skinscreen.runtime.database import apply_migrations, wait_for_database

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
    _, card = verified_model(latest_version(settings.MODEL_STORE, settings.MODEL_NAME))
    logger.info("active model: %s %s", card.name, card.version)


if __name__ == "__main__":
    main()
