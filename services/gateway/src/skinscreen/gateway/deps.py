"""What routes need from the process (pool, queue, blob store, settings), as `Annotated` deps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import asyncpg
from celery import Celery
from fastapi import Depends, Request
from redis.asyncio import Redis

from skinscreen.runtime.blobs import BlobStore

from .notifications import FinishedScreenings
from .ratelimit import RateLimiter
from .served_models import ServedModels
from .settings import Settings


@dataclass
class Services:
    """Connections that live as long as the process, opened in the app's lifespan."""

    settings: Settings
    pool: asyncpg.Pool
    celery: Celery
    redis: Redis
    blobs: BlobStore
    finished: FinishedScreenings
    models: ServedModels
    limiter: RateLimiter


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
