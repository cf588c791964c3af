"""The audit trail in PostgreSQL: every statement on the audit_events table (migration 0011).

One row per action taken through the API: who (the key and its clinic), what (`Action`, on
which subject), when, and the request id. The table is append-only: a trigger refuses UPDATE,
DELETE and TRUNCATE (the owner role cannot be denied them by REVOKE). `details` carries ids,
names and counts, never health data.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Final
from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy

Connection = asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy

MAX_PAGE: Final = 500


class Action(StrEnum):
    SCREENING_CREATED = "screening.created"
    SCREENING_READ = "screening.read"
    SCREENING_WAITED = "screening.waited"
    SCREENINGS_LISTED = "screenings.listed"
    SCREENING_ERASED = "screening.erased"
    DIAGNOSIS_RECORDED = "diagnosis.recorded"
    DIAGNOSIS_READ = "diagnosis.read"
    MODEL_PROMOTED = "model.promoted"
    MODEL_ROLLED_BACK = "model.rolled_back"
    TRAINING_RUN_REQUESTED = "training_run.requested"
    TRAINING_RUN_CANCELLED = "training_run.cancelled"
    CLINIC_CREATED = "clinic.created"
    CLINIC_UPDATED = "clinic.updated"
    KEY_CREATED = "key.created"
    KEY_REVOKED = "key.revoked"


@dataclass(frozen=True)
class Event:
    id: int
    at: datetime
    key_id: UUID | None
    clinic_id: UUID | None
    action: str
    subject: str | None
    request_id: str | None
    details: dict[str, Any]


COLUMNS: Final = "id, at, key_id, clinic_id, action, subject, request_id, details"


async def record(
    pool: Connection,
    action: Action,
    *,
    key_id: UUID | None,
    clinic_id: UUID | None,
    subject: str | None = None,
    request_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Append one event: a single INSERT (pass a transaction's connection to make it part of
    the action's transaction)."""
    await pool.execute(
        "INSERT INTO audit_events (key_id, clinic_id, action, subject, request_id, details)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        key_id,
        clinic_id,
        action.value,
        subject,
        request_id,
        details or {},
    )


async def page(
    pool: Connection,
    *,
    limit: int,
    before: int | None = None,
    clinic_id: UUID | None = None,
    action: str | None = None,
) -> list[Event]:
    """Newest first: events with an id below `before` (None: the newest), of `clinic_id` and
    `action` when given."""
    rows = await pool.fetch(
        f"SELECT {COLUMNS} FROM audit_events"
        " WHERE ($1::bigint IS NULL OR id < $1)"
        " AND ($2::uuid IS NULL OR clinic_id = $2)"
        " AND ($3::text IS NULL OR action = $3)"
        " ORDER BY id DESC LIMIT $4",
        before,
        clinic_id,
        action,
        min(limit, MAX_PAGE),
    )
    return [Event(**dict(row)) for row in rows]
