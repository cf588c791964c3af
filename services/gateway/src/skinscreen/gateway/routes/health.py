"""Kubernetes probes: /healthz (the process answers) and /readyz (it can do its job)."""

from __future__ import annotations

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


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Database, broker and an active model are reachable",
    responses={503: {"model": Readiness, "description": "A dependency is not reachable."}},
)
async def readyz(services: ServicesDep) -> JSONResponse:
    checks: dict[str, CheckResult] = {}
    try:
        await services.pool.fetchval("SELECT 1")
        checks["database"] = CheckResult(ok=True, detail="PostgreSQL answers")
    except Exception as exc:  # any failure means not ready; the detail says which
        checks["database"] = CheckResult(ok=False, detail=f"PostgreSQL: {exc}")
    try:
        await services.redis.ping()
        checks["broker"] = CheckResult(ok=True, detail="Redis answers")
    except Exception as exc:
        checks["broker"] = CheckResult(ok=False, detail=f"Redis: {exc}")
    name = services.settings.MODEL_NAME
    try:
        active = await registry.get_active(services.pool, name)
        if active is None:
            raise LookupError(f"the registry has no active version of {name}")
        # The card, not the whole model: a probe must stay cheap. Workers check the sha256.
        await run_in_threadpool(read_card, active.artifact_uri)
        checks["model"] = CheckResult(ok=True, detail=f"{name} {active.version} is active")
    except Exception as exc:
        checks["model"] = CheckResult(ok=False, detail=f"model: {exc}")
    ready = all(check.ok for check in checks.values())
    body = Readiness(ready=ready, checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
