"""Kubernetes probes: /healthz (the process answers) and /readyz (it can do its job)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from skinscreen.core.card import MODEL_FILE, latest_version, read_card

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
    settings = services.settings
    try:
        folder = latest_version(settings.MODEL_STORE, settings.MODEL_NAME)
        card = read_card(folder)
        if not (folder / MODEL_FILE).is_file():
            raise FileNotFoundError(f"{folder / MODEL_FILE} is missing")
        checks["model"] = CheckResult(ok=True, detail=f"{card.name} {card.version}")
    except (OSError, ValueError) as exc:
        checks["model"] = CheckResult(ok=False, detail=str(exc))
    ready = all(check.ok for check in checks.values())
    body = Readiness(ready=ready, checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
