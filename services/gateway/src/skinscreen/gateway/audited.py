"""Write the audit trail for a route: who (`request.state.principal`), which request
(`request.state.request_id`), what (`skinscreen.runtime.audit.Action`).

Every audited action, reads included, is written synchronously: one INSERT, in the action's
own transaction where it has one (pass its connection), otherwise right after the action and
before the answer is sent. No event is queued in memory, so none is lost with a process; if
PostgreSQL fails the INSERT the request fails (503) rather than answer without a record.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from skinscreen.runtime import audit
from skinscreen.runtime.audit import Action, Connection

__all__ = ["Action", "record"]


async def record(
    request: Request,
    pool: Connection,
    action: Action,
    subject: object = None,
    **details: Any,
) -> None:
    principal = request.state.principal
    await audit.record(
        pool,
        action,
        key_id=principal.key_id,
        clinic_id=principal.clinic_id,
        subject=None if subject is None else str(subject),
        request_id=getattr(request.state, "request_id", None),
        details=details,
    )
