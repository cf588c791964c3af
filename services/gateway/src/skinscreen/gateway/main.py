"""The gateway's FastAPI app: `uvicorn --factory skinscreen.gateway.main:create_app`."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from redis.asyncio import Redis
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles

from skinscreen.runtime.blobs import BlobStore
from skinscreen.runtime.database import create_pool
from skinscreen.runtime.queue import make_celery

from . import auth, security, unavailable
from .deps import Services
from .methods import AllowedMethods
from .metrics import MetricsListener, MetricsMiddleware, record_rejection
from .notifications import FinishedScreenings
from .ratelimit import RateLimiter
from .requestid import RequestId
from .routes import audit, clinics, diagnoses, health, models, screenings, training_runs
from .served_models import ServedModels
from .settings import Settings, get_settings

logger = logging.getLogger(__name__)

# Room for the multipart framing and the clinical JSON around the image itself.
FORM_OVERHEAD_BYTES: Final = 64 * 1024
APP_DIR: Final = Path(__file__).parent / "app"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    if "OPERATOR_TOKEN" in os.environ:
        logger.warning(
            "OPERATOR_TOKEN is set but no longer read: operators use API keys with the operator "
            "scope (skinscreen-gateway-admin create-key --operator); remove it (docs/deploy.md)"
        )
    pool = await create_pool(
        settings.DATABASE_URL,
        max_size=settings.DB_POOL_SIZE,
        connect_timeout_s=settings.DB_CONNECT_TIMEOUT_S,
        command_timeout_s=settings.DB_COMMAND_TIMEOUT_S,
        acquire_timeout_s=settings.DB_ACQUIRE_TIMEOUT_S,
    )
    finished = FinishedScreenings(
        settings.DATABASE_URL,
        connect_timeout_s=settings.DB_CONNECT_TIMEOUT_S,
        check_s=settings.LISTEN_CHECK_S,
        reconnect_max_s=settings.LISTEN_RECONNECT_MAX_S,
    )
    await finished.start()
    # For /readyz and the queue metrics; publishing goes through Celery (its own bounds).
    redis = Redis.from_url(
        settings.REDIS_URL,
        socket_connect_timeout=settings.REDIS_TIMEOUT_S,
        socket_timeout=settings.REDIS_TIMEOUT_S,
    )
    celery = make_celery(
        "skinscreen-gateway", settings.REDIS_URL, settings.CELERY_VISIBILITY_TIMEOUT_S
    )
    services = app.state.services = Services(
        settings=settings,
        pool=pool,
        celery=celery,
        redis=redis,
        blobs=BlobStore(settings.BLOB_DIR),
        finished=finished,
        models=ServedModels(pool),
        limiter=RateLimiter(settings.REDIS_URL, settings.REDIS_TIMEOUT_S),
    )
    metrics_listener = MetricsListener(
        settings.METRICS_HOST, settings.METRICS_PORT, lambda: services
    )
    await metrics_listener.start()
    try:
        yield
    finally:
        await metrics_listener.stop()
        await finished.stop()
        await pool.close()
        await redis.aclose()
        celery.close()


async def to_the_app() -> RedirectResponse:
    """`/` leads to the clinician's app."""
    return RedirectResponse("/app/")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="skinscreen",
        summary="Skin-cancer screening from a phone photo and 22 clinical variables.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    upload_limit = settings.MAX_UPLOAD_BYTES
    retry_after_s = settings.RETRY_AFTER_S

    async def too_large_or_default(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        record_rejection(exc.status_code, exc.detail)
        # Starlette's body limit stops reading at the limit and says only "Content Too Large".
        if exc.status_code == 413 and exc.detail == "Content Too Large":
            detail = f"request body too large: the image may be at most {upload_limit} bytes"
            return JSONResponse({"detail": detail}, status_code=413)
        if exc.status_code == 503 and "Retry-After" not in (exc.headers or {}):
            # A route's own 503 (the queue refused a screening) says when to come back, too.
            exc.headers = {**(exc.headers or {}), "Retry-After": str(retry_after_s)}
        return await http_exception_handler(request, exc)

    async def invalid_request(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        record_rejection(422, exc.errors())
        return await request_validation_exception_handler(request, exc)

    app.add_exception_handler(StarletteHTTPException, too_large_or_default)
    app.add_exception_handler(RequestValidationError, invalid_request)
    # A server that is down: 503 with Retry-After, never a bare 500.
    unavailable.install(app, retry_after_s)
    # Inside the metrics middleware, which then counts its OPTIONS and 405 answers too.
    app.add_middleware(AllowedMethods)
    app.add_middleware(MetricsMiddleware)
    # Each request's id (X-Request-ID), for the audit trail; on every answer.
    app.add_middleware(RequestId)
    # Outermost: security headers on every answer; CORS only for CORS_ALLOW_ORIGINS.
    security.install(app, settings.CORS_ALLOW_ORIGINS, settings.HSTS_MAX_AGE_S)
    app.include_router(health.router)
    # The clinician's web app: static files (app/), no build step; it calls the public API only.
    app.mount("/app", StaticFiles(directory=APP_DIR, html=True), name="app")
    app.add_api_route("/", to_the_app, include_in_schema=False)
    # Every /v1 operation needs an API key (auth); /healthz, /readyz and the docs don't. /metrics
    # is not on this port at all: MetricsListener serves it on METRICS_PORT.
    app.include_router(
        unavailable.document(auth.document(screenings.router), retry_after_s),
        max_body_size=upload_limit + FORM_OVERHEAD_BYTES,
    )
    for router in (
        diagnoses.router,
        training_runs.router,
        models.router,
        clinics.router,
        audit.router,
    ):
        app.include_router(unavailable.document(auth.document(router), retry_after_s))
    return app
