"""503 with Retry-After, never a bare 500, when PostgreSQL or Redis is down.

Every call on either server is bounded (the pool's connect, acquire and
command timeouts; the broker's socket timeouts), so a request during an outage
ends within about a second with an error; the handlers here turn that error
into `503 {"detail": ...}` with a Retry-After header. Nothing is stored: the
screening route removes what it stored before the failing step.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any, Final

import asyncpg
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .schemas import Problem

logger = logging.getLogger(__name__)

# What a server that is down, restarting or unreachable raises. TimeoutError (a bound was
# hit) and ConnectionRefusedError are OSErrors.
DATABASE_ERRORS: Final = (
    asyncpg.PostgresConnectionError,  # class 08: connection exceptions
    asyncpg.exceptions.OperatorInterventionError,  # 57: shutting down, starting up
    asyncpg.exceptions.InsufficientResourcesError,  # 53: too many connections, disk full
    asyncpg.exceptions.ConnectionDoesNotExistError,  # closed in the middle of a statement
    # The server died mid-statement: giving the connection back to the pool, asyncpg finds it
    # still mid-operation (the pool then drops it). Seen as a bare 500 in a PostgreSQL kill.
    asyncpg.InternalClientError,
)
BROKER_ERRORS: Final = (BrokerError, RedisConnectionError, RedisTimeoutError)
UNAVAILABLE_ERRORS: Final = (OSError, *DATABASE_ERRORS, *BROKER_ERRORS)

DATABASE_DOWN: Final = "the database is unavailable; try again later"
BROKER_DOWN: Final = "the screening queue is unavailable; try again later"
STORAGE_DOWN: Final = "a server this request needs is unavailable; try again later"


def _modules(traceback: TracebackType | None) -> set[str]:
    modules = set()
    while traceback is not None:
        modules.add(str(traceback.tb_frame.f_globals.get("__name__", "")).split(".")[0])
        traceback = traceback.tb_next
    return modules


def detail_for(exc: BaseException) -> str:
    """Which server failed, from the error or, for an OSError, from where it was raised."""
    if isinstance(exc, DATABASE_ERRORS):
        return DATABASE_DOWN
    if isinstance(exc, BROKER_ERRORS):
        return BROKER_DOWN
    modules = _modules(exc.__traceback__)
    if "asyncpg" in modules:
        return DATABASE_DOWN
    if modules & {"redis", "kombu", "celery"}:
        return BROKER_DOWN
    return STORAGE_DOWN


def responses(retry_after_s: int) -> dict[int | str, dict[str, Any]]:
    """The 503 every operation that reads or writes a server may answer, for OpenAPI."""
    return {
        503: {
            "model": Problem,
            "description": "PostgreSQL or Redis is down or did not answer in time; nothing "
            "was stored. Try again after Retry-After seconds.",
            "headers": {
                "Retry-After": {
                    "description": f"Seconds to wait before trying again ({retry_after_s}).",
                    "schema": {"type": "integer", "minimum": 1},
                }
            },
        }
    }


def document(router: APIRouter, retry_after_s: int) -> APIRouter:
    """Add the 503 to each of the router's operations in OpenAPI; one that documents its own
    503 (a queue that refused the work) keeps its description and gains Retry-After."""
    outage = responses(retry_after_s)[503]
    for route in router.routes:
        if isinstance(route, APIRoute):
            own = route.responses.get(503, {})
            route.responses[503] = {**outage, **own, "headers": outage["headers"]}
    return router


def install(app: FastAPI, retry_after_s: int) -> None:
    """Answer every unavailable-server error with 503, its detail and Retry-After."""

    async def unavailable(request: Request, exc: Exception) -> Response:
        detail = detail_for(exc)
        logger.warning(
            "%s %s: 503, %s (%s: %s)",
            request.method,
            request.url.path,
            detail,
            type(exc).__name__,
            exc,
        )
        return JSONResponse(
            {"detail": detail},
            status_code=503,
            headers={"Retry-After": str(retry_after_s)},
        )

    for error in UNAVAILABLE_ERRORS:
        app.add_exception_handler(error, unavailable)
