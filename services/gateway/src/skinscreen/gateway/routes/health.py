"""Kubernetes probes: /healthz (the process answers) and /readyz (it can do its job)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Final

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from skinscreen.runtime import registry
from skinscreen.runtime.artifacts import read_card

from ..deps import ServicesDep
from ..schemas import CheckResult, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


# Each check's bound: the whole probe answers within it, under the pods' 3 s probe timeout.
CHECK_TIMEOUT_S: Final = 2.0
PREFIXES: Final = {
    "database": "PostgreSQL: ",
    "broker": "Redis: ",
    "model": "model: ",
    "notifications": "LISTEN: ",
}


async def _check(name: str, check: Awaitable[str]) -> tuple[str, CheckResult]:
    try:
        detail = await asyncio.wait_for(check, CHECK_TIMEOUT_S)
    except TimeoutError:
        return name, CheckResult(ok=False, detail=f"{name}: no answer within {CHECK_TIMEOUT_S} s")
    except Exception as exc:  # any failure means not ready; the detail says which
        return name, CheckResult(ok=False, detail=f"{PREFIXES[name]}{exc}")
    return name, CheckResult(ok=True, detail=detail)


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Database, broker, the database's notifications and an active model are reachable",
    responses={503: {"model": Readiness, "description": "A dependency is not reachable."}},
)
async def readyz(services: ServicesDep) -> JSONResponse:
    async def database() -> str:
        await services.pool.fetchval("SELECT 1")
        return "PostgreSQL answers"

    async def broker() -> str:
        await services.redis.ping()
        return "Redis answers"

    async def model() -> str:
        name = services.settings.MODEL_NAME
        active = await registry.get_active(services.pool, name)
        if active is None:
            raise LookupError(f"the registry has no active version of {name}")
        # The card, not the whole model: a probe must stay cheap. Workers check the sha256.
        await run_in_threadpool(read_card, active.artifact_uri)
        return f"{name} {active.version} is active"

    async def notifications() -> str:
        # Without it, ?wait long polls would sleep through finished screenings.
        if not services.finished.listening:
            raise ConnectionError("the connection that wakes ?wait long polls is being re-opened")
        return "listening for finished screenings"

    results = await asyncio.gather(
        _check("database", database()),
        _check("broker", broker()),
        _check("model", model()),
        _check("notifications", notifications()),
    )
    checks = dict(results)
    ready = all(check.ok for check in checks.values())
    body = Readiness(ready=ready, checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
