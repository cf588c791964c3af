"""/v1/audit: the audit trail, newest first, for operators (skinscreen.runtime.audit)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final
from uuid import UUID

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from skinscreen.runtime import audit
from skinscreen.runtime.accounts import Scope
from skinscreen.runtime.audit import Action

from ..auth import require_scope
from ..deps import ServicesDep
from ..schemas import ValidationProblem

PREFIX: Final = "/v1/audit"

router = APIRouter(tags=["audit"], dependencies=[require_scope(Scope.OPERATOR)])


class AuditEvent(BaseModel):
    id: int = Field(description="Increasing with time.")
    at: datetime
    key_id: UUID | None = Field(description="The API key that acted.")
    clinic_id: UUID | None = Field(description="The key's clinic; null: an operator key of none.")
    action: str = Field(description="What was done, e.g. screening.created.")
    subject: str | None = Field(
        description="What it was done to: a screening, key, clinic or training run id, or a "
        "model as name@version."
    )
    request_id: str | None = Field(description="The request's X-Request-ID.")
    details: dict[str, Any] = Field(description="Ids, names and counts; never health data.")


class AuditPage(BaseModel):
    items: list[AuditEvent]
    next_cursor: str | None = Field(description="Pass as ?cursor= for older events; null: none.")


def _invalid(field: str, message: str) -> HTTPException:
    return HTTPException(
        422, [{"loc": ["query", field], "msg": message, "type": f"{field}_invalid"}]
    )


@router.get(
    PREFIX,
    response_model=AuditPage,
    summary="The audit trail, newest first, paged: who did what, when, in which request",
    responses={422: {"model": ValidationProblem, "description": "Bad cursor, limit or action."}},
)
async def list_audit_events(
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=audit.MAX_PAGE, description="Page size.")] = 100,
    cursor: Annotated[
        str | None,
        Query(max_length=20, description="next_cursor of the previous page; omit for the first."),
    ] = None,
    clinic: Annotated[UUID | None, Query(description="Only this clinic's keys' events.")] = None,
    action: Annotated[
        str | None,
        Query(
            max_length=40,
            description="Only this action: " + ", ".join(a.value for a in Action) + ".",
        ),
    ] = None,
) -> AuditPage:
    before = None
    if cursor is not None:
        if not cursor.isdigit() or int(cursor) < 1:
            raise _invalid("cursor", "cursor is not one this API issued; pass next_cursor")
        before = int(cursor)
    if action is not None and action not in {a.value for a in Action}:
        allowed = ", ".join(a.value for a in Action)
        raise _invalid("action", f"unknown action {action!r}; allowed: {allowed}")
    events = await audit.page(
        services.pool, limit=limit, before=before, clinic_id=clinic, action=action
    )
    next_cursor = str(events[-1].id) if len(events) == limit else None
    return AuditPage(items=[AuditEvent(**vars(event)) for event in events], next_cursor=next_cursor)
