"""Screenings and their confirmed diagnoses in PostgreSQL: every statement on both tables.

The gateway creates (once per idempotency key and clinic), reads and lists
screenings and records diagnoses, each within one clinic's screenings when
given a `clinic_id` (a clinician's key) or across all of them when not (an
operator's); the inference worker reads a task's inputs (the queue message
carries only the id), claims screenings, records a
batch's results and marks failures, and its reconciler finds screenings left
idle and queues them again; the gateway's queue metrics read how long a queued screening has
waited; the trainer reads the confirmed diagnoses it learns from. All of them
do it through here.

Every worker write is conditional on the screening not being finished, so a
task delivered twice (a worker died before acknowledging it) is written once.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Protocol
from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from .database import FINISHED_CHANNEL

# What a screening reads as, through the API.
COLUMNS: Final = (
    "id, status, model_name, clinical, created_at, updated_at, completed_at, cancer_probability,"
    " suspicious, reasons, threshold, melanoma_threshold, diagnosis_probabilities,"
    " model_version, failure_reason, erased_at"
)
DIAGNOSIS_COLUMNS: Final = (
    "screening_id, diagnosis, confirmed_by, patient_id, recorded_at, updated_at"
)

# A pool, or one connection (a transaction's, or one taken from a pool).
Connection = asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy


# --- The gateway: create, read, list -------------------------------------------------------


async def create(
    pool: Connection,
    screening_id: UUID,
    *,
    model_name: str,
    clinical: dict[str, Any] | None,
    image_key: str,
    image_format: str,
    image_bytes: int,
    image_sha256: str,
    clinic_id: UUID,
    idempotency_key: str | None = None,
    request_sha256: str | None = None,
) -> bool:
    """Record a screening of `clinic_id` as queued (the table's default status).

    With an `idempotency_key` (and the `request_sha256` of what was asked), nothing is
    written when a screening of the same clinic already holds that key: returns False, and
    `by_idempotency_key` says which one. The unique constraint decides between concurrent
    requests.
    """
    inserted = await pool.fetchval(
        "INSERT INTO screenings (id, model_name, clinical, image_key, image_format,"
        " image_bytes, image_sha256, idempotency_key, request_sha256, clinic_id)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        " ON CONFLICT (clinic_id, idempotency_key) DO NOTHING RETURNING true",
        screening_id,
        model_name,
        clinical,
        image_key,
        image_format,
        image_bytes,
        image_sha256,
        idempotency_key,
        request_sha256,
        clinic_id,
    )
    return bool(inserted)


@dataclass(frozen=True)
class Keyed:
    """The screening that holds an idempotency key, and the sha256 of the request that set it."""

    screening_id: UUID
    request_sha256: str


async def by_idempotency_key(pool: Connection, key: str, clinic_id: UUID) -> Keyed | None:
    """The screening of `clinic_id` that holds `key` (another clinic's keys are its own)."""
    row = await pool.fetchrow(
        "SELECT id, request_sha256 FROM screenings WHERE clinic_id = $1 AND idempotency_key = $2",
        clinic_id,
        key,
    )
    return None if row is None else Keyed(row["id"], row["request_sha256"])


async def delete(pool: Connection, screening_id: UUID) -> None:
    """Remove a screening that was never queued (the queue refused its task)."""
    await pool.execute("DELETE FROM screenings WHERE id = $1", screening_id)


# `clinic_id` in the statements below: $n::uuid IS NULL (an operator: every clinic's
# screenings, and those made before clinics existed) or that clinic's alone.
VISIBLE: Final = "(${n}::uuid IS NULL OR clinic_id = ${n})"


async def get(
    pool: Connection, screening_id: UUID, clinic_id: UUID | None = None
) -> asyncpg.Record | None:
    """The screening's `COLUMNS`, or None if there is no such screening (in `clinic_id`,
    when given: another clinic's screening reads as absent)."""
    row: asyncpg.Record | None = await pool.fetchrow(
        f"SELECT {COLUMNS} FROM screenings WHERE id = $1 AND {VISIBLE.format(n=2)}",
        screening_id,
        clinic_id,
    )
    return row


class InvalidCursorError(ValueError):
    """A list cursor that `list_page` did not issue."""


def encode_cursor(created_at: datetime, screening_id: UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(screening_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# An issued cursor is about 100 characters; anything much longer was not issued here.
MAX_CURSOR_CHARS: Final = 200


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    """The (created_at, id) an `encode_cursor` cursor holds; InvalidCursorError for anything
    else (not base64, not JSON, not a list of an aware ISO timestamp and a UUID string)."""
    if len(cursor) > MAX_CURSOR_CHARS:
        raise InvalidCursorError(cursor)
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, RecursionError) as exc:
        raise InvalidCursorError(cursor) from exc
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
        raise InvalidCursorError(cursor)
    try:
        created_at, screening_id = datetime.fromisoformat(value[0]), UUID(value[1])
    except ValueError as exc:
        raise InvalidCursorError(cursor) from exc
    if created_at.tzinfo is None:
        raise InvalidCursorError(cursor)
    return created_at, screening_id


@dataclass(frozen=True)
class Page:
    rows: list[asyncpg.Record]
    # Where the next page starts; None on the last page.
    next_cursor: str | None


async def list_page(
    pool: Connection,
    limit: int,
    cursor: str | None = None,
    model_name: str | None = None,
    clinic_id: UUID | None = None,
) -> Page:
    """Newest first (created_at, then id), `limit` at most, after `cursor` if given; only
    `model_name`'s and `clinic_id`'s screenings when given.

    Raises InvalidCursorError, before reading anything, for a cursor this did not issue.
    """
    arguments: list[Any] = [limit + 1]
    # Erased screenings (tombstones) are left out of lists; reading one says it was erased.
    conditions = ["erased_at IS NULL"]
    if cursor is not None:
        arguments.extend(decode_cursor(cursor))
        conditions.append("(created_at, id) < ($2, $3)")
    if model_name is not None:
        arguments.append(model_name)
        conditions.append(f"model_name = ${len(arguments)}")
    if clinic_id is not None:
        arguments.append(clinic_id)
        conditions.append(f"clinic_id = ${len(arguments)}")
    where = "WHERE " + " AND ".join(conditions)
    rows = await pool.fetch(
        f"SELECT {COLUMNS} FROM screenings {where} ORDER BY created_at DESC, id DESC LIMIT $1",
        *arguments,
    )
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor(last["created_at"], last["id"])
    return Page(rows[:limit], next_cursor)


# --- The gateway's queue metrics -----------------------------------------------------------


async def waited_s(pool: Connection, screening_ids: list[UUID]) -> dict[UUID, float]:
    """Seconds since each screening was accepted, on the database's clock (which stamped it)."""
    rows = await pool.fetch(
        "SELECT id, extract(epoch FROM now() - created_at)::float8 AS waited_s"
        " FROM screenings WHERE id = ANY($1::uuid[])",
        screening_ids,
    )
    return {row["id"]: row["waited_s"] for row in rows}


# --- The inference worker: claim, record a batch, fail -------------------------------------


@dataclass(frozen=True)
class TaskInputs:
    """What a worker needs of a screening besides its queue message (`ScreeningTask`)."""

    model_name: str
    image_key: str
    # The clinical answers as the gateway stored them; None for an image-only screening.
    clinical: dict[str, Any] | None
    # False once the screening is done or failed (a task delivered again).
    unfinished: bool


async def task_inputs(pool: Connection, screening_ids: Sequence[UUID]) -> dict[UUID, TaskInputs]:
    """The inputs of each screening, in one statement; a screening with no row is left out."""
    rows = await pool.fetch(
        "SELECT id, model_name, image_key, clinical, status IN ('queued', 'running') AS unfinished"
        " FROM screenings WHERE id = ANY($1::uuid[])",
        list(screening_ids),
    )
    return {
        row["id"]: TaskInputs(
            row["model_name"], row["image_key"], row["clinical"], bool(row["unfinished"])
        )
        for row in rows
    }


CLAIM: Final = """
UPDATE screenings
SET status = 'running', attempts = attempts + 1,
    started_at = coalesce(started_at, now()), updated_at = now()
WHERE id = ANY($1::uuid[]) AND status IN ('queued', 'running')
RETURNING id, extract(epoch FROM clock_timestamp() - created_at)::float8 AS waited_s
"""

# One statement, so one round trip per batch: the batch row, every result and
# the notifications that wake long-polling clients (sent on commit). Results are
# written only while the version that scored them is the active one ($8: or
# when the worker is told to keep serving it); the FOR SHARE lock makes a
# promotion wait for this write, so a result never postdates its version's retirement.
# The card's decision rule is applied by the caller (DecisionRule); each screening's
# verdict ($10), the rules that fired ($11, a JSON array each) and the diagnosis
# probabilities ($12, a JSON object each, or null) arrive as arrays beside its id
# (JSON text: a list of lists would travel as a two-dimensional array).
RECORD_BATCH: Final = f"""
WITH serving AS (
    SELECT version FROM model_versions
    WHERE name = $7 AND version = $4 AND (status = 'active' OR $8)
    FOR SHARE
), batch AS (
    SELECT nextval(pg_get_serial_sequence('inference_batches', 'id')) AS id
), written AS (
    UPDATE screenings AS s
    SET status = 'done', cancer_probability = r.probability, suspicious = r.suspicious,
        reasons = ARRAY(SELECT jsonb_array_elements_text(r.reasons::jsonb)),
        diagnosis_probabilities = r.diagnoses::jsonb, threshold = $3, melanoma_threshold = $13,
        model_version = $4, batch_id = (SELECT id FROM batch), completed_at = now(),
        updated_at = now()
    FROM unnest($1::uuid[], $2::float8[], $10::boolean[], $11::text[], $12::text[])
         AS r (id, probability, suspicious, reasons, diagnoses)
    WHERE s.id = r.id AND s.status IN ('queued', 'running') AND EXISTS (SELECT FROM serving)
    RETURNING s.id
), recorded AS (
    INSERT INTO inference_batches (id, size, written, model_version, provider, inference_ms)
    SELECT batch.id, $5, (SELECT count(*) FROM written), $4, $6, $9 FROM batch
    WHERE EXISTS (SELECT FROM serving)
)
SELECT (SELECT id FROM batch) AS batch_id,
       EXISTS (SELECT FROM serving) AS version_active,
       count(pg_notify('{FINISHED_CHANNEL}', written.id::text)) AS written,
       coalesce(array_agg(written.id), '{{}}') AS written_ids
FROM written
"""

FAIL: Final = f"""
WITH failed AS (
    UPDATE screenings
    SET status = 'failed', failure_reason = $2, completed_at = now(), updated_at = now()
    WHERE id = $1 AND status IN ('queued', 'running')
    RETURNING id
)
SELECT count(pg_notify('{FINISHED_CHANNEL}', failed.id::text)) FROM failed
"""


async def claim(pool: Connection, screening_ids: list[UUID]) -> dict[UUID, float]:
    """Mark the screenings running; return those not already finished, with their time queued.

    The time is measured on the database's clock, which stamped `created_at`.
    """
    rows = await pool.fetch(CLAIM, screening_ids)
    return {row["id"]: row["waited_s"] for row in rows}


class Verdict(Protocol):
    """The card's decision rule applied to one screening (the worker's `Decision`)."""

    @property
    def suspicious(self) -> bool: ...

    # The rules that fired, in the rule's order; empty when not suspicious.
    @property
    def reasons(self) -> Sequence[str]: ...

    # {diagnosis: probability}; None for a model without that output.
    @property
    def diagnoses(self) -> Mapping[str, float] | None: ...


@dataclass(frozen=True)
class BatchRecord:
    batch_id: int
    written: int
    # False: the version was retired meanwhile; nothing was written, score the batch again.
    version_active: bool
    # The screenings this write finished (not those a redelivery had finished before).
    written_ids: frozenset[UUID] = frozenset()


async def record_batch(
    pool: Connection,
    screening_ids: list[UUID],
    probabilities: Iterable[float],
    verdicts: Sequence[Verdict],
    *,
    threshold: float,
    melanoma_threshold: float | None,
    model_name: str,
    model_version: str,
    provider: str,
    inference_ms: float,
    keep_serving: bool = False,
) -> BatchRecord:
    """Write a batch's results, in one statement, if `model_version` is still active
    (or `keep_serving`).

    `verdicts` are the card's rule applied to each screening; `threshold` and
    `melanoma_threshold` the rule's thresholds, recorded beside each result.
    """
    row = await pool.fetchrow(
        RECORD_BATCH,
        screening_ids,
        [float(value) for value in probabilities],
        threshold,
        model_version,
        len(screening_ids),
        provider,
        model_name,
        keep_serving,
        inference_ms,
        [verdict.suspicious for verdict in verdicts],
        [json.dumps(list(verdict.reasons)) for verdict in verdicts],
        [None if v.diagnoses is None else json.dumps(dict(v.diagnoses)) for v in verdicts],
        melanoma_threshold,
    )
    assert row is not None
    return BatchRecord(
        int(row["batch_id"]),
        int(row["written"]),
        bool(row["version_active"]),
        frozenset(row["written_ids"]),
    )


async def fail(pool: Connection, screening_id: UUID, reason: str) -> bool:
    """Mark a screening failed with `reason`, unless it already finished."""
    return bool(await pool.fetchval(FAIL, screening_id, reason))


# --- The reconciler: unfinished screenings left idle -----------------------------------------


STALE: Final = """
SELECT id, model_name, requeues,
       extract(epoch FROM now() - created_at)::float8 AS age_s
FROM screenings
WHERE status IN ('queued', 'running') AND updated_at < now() - make_interval(secs => $1)
ORDER BY updated_at
LIMIT $2
"""

# Conditional on the row still being idle: a worker that claimed it meanwhile wins.
REQUEUE: Final = """
UPDATE screenings
SET status = 'queued', requeues = requeues + 1, updated_at = now()
WHERE id = $1 AND status IN ('queued', 'running')
  AND updated_at < now() - make_interval(secs => $2)
RETURNING id
"""


async def stale(pool: Connection, idle_s: float, limit: int) -> list[asyncpg.Record]:
    """Queued or running screenings untouched for `idle_s` seconds, longest idle first."""
    return list(await pool.fetch(STALE, idle_s, limit))


async def requeue(pool: Connection, screening_id: UUID, idle_s: float) -> bool:
    """Count one more requeue and mark the screening queued, if it is still idle that long."""
    return bool(await pool.fetchval(REQUEUE, screening_id, idle_s))


# --- Confirmed diagnoses: the gateway records them, the trainer learns from them -----------


async def record_diagnosis(
    pool: Connection,
    screening_id: UUID,
    *,
    diagnosis: str,
    confirmed_by: str,
    patient_id: str | None,
    clinic_id: UUID | None = None,
) -> tuple[dict[str, Any], bool] | None:
    """Record (or replace) a screening's confirmed diagnosis.

    Returns its `DIAGNOSIS_COLUMNS` and whether one was replaced; None if there is no
    such screening (in `clinic_id`, when given). Without a `patient_id`, the screening is its
    own patient.
    """
    row = await pool.fetchrow(
        "INSERT INTO diagnoses (screening_id, diagnosis, confirmed_by, patient_id)"
        " SELECT id, $2, $3, coalesce($4, id::text) FROM screenings"
        f" WHERE id = $1 AND erased_at IS NULL AND {VISIBLE.format(n=5)}"
        " ON CONFLICT (screening_id) DO UPDATE SET diagnosis = excluded.diagnosis,"
        " confirmed_by = excluded.confirmed_by, patient_id = excluded.patient_id,"
        " updated_at = now()"
        f" RETURNING {DIAGNOSIS_COLUMNS}, (xmax <> 0) AS replaced",
        screening_id,
        diagnosis,
        confirmed_by,
        patient_id,
        clinic_id,
    )
    if row is None:
        return None
    recorded = dict(row)
    replaced = bool(recorded.pop("replaced"))
    return recorded, replaced


async def get_diagnosis(
    pool: Connection, screening_id: UUID, clinic_id: UUID | None = None
) -> dict[str, Any] | None:
    """The screening's confirmed diagnosis (`DIAGNOSIS_COLUMNS`), or None if none is recorded
    (or the screening is not `clinic_id`'s, when given)."""
    row = await pool.fetchrow(
        f"SELECT {DIAGNOSIS_COLUMNS} FROM diagnoses WHERE screening_id = $1 AND screening_id IN"
        f" (SELECT id FROM screenings WHERE id = $1 AND {VISIBLE.format(n=2)})",
        screening_id,
        clinic_id,
    )
    return None if row is None else dict(row)


async def confirmed(pool: Connection) -> list[asyncpg.Record]:
    """Every screening with a confirmed diagnosis, by id: id, clinical, image_key, diagnosis,
    patient_id."""
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT s.id, s.clinical, s.image_key, d.diagnosis, d.patient_id"
        " FROM diagnoses AS d JOIN screenings AS s ON s.id = d.screening_id ORDER BY s.id"
    )
    return rows


# --- Erasure -------------------------------------------------------------------------------

# The published versions (promoted at least once) whose training run started after the
# screening's diagnosis was recorded: the run could have trained on it (runs do not record the
# screenings they read), so their cards and validation numbers derive from it.
TRAINED_ON: Final = """
SELECT v.name || '@' || v.version AS version
FROM diagnoses AS d
JOIN training_runs AS r ON r.started_at >= d.recorded_at
JOIN model_versions AS v ON v.training_run_id = r.id AND v.promoted_at IS NOT NULL
WHERE d.screening_id = $1
ORDER BY 1
"""

# The tombstone: no answers, no photo, no diagnosis; an unfinished screening fails, so a
# worker that gets its task still queued skips it (task_inputs: not unfinished).
ERASE: Final = f"""
WITH erased AS (
    UPDATE screenings
    SET clinical = NULL, image_key = NULL, erased_at = now(), updated_at = now(),
        failure_reason = CASE WHEN status IN ('queued', 'running')
                              THEN 'erased before it was screened' ELSE failure_reason END,
        completed_at = CASE WHEN status IN ('queued', 'running')
                            THEN now() ELSE completed_at END,
        status = CASE WHEN status IN ('queued', 'running') THEN 'failed' ELSE status END
    WHERE id = $1
    RETURNING id, erased_at
), diagnosis AS (
    DELETE FROM diagnoses WHERE screening_id = $1
)
SELECT erased_at, pg_notify('{FINISHED_CHANNEL}', id::text) FROM erased
"""


@dataclass(frozen=True)
class Erasure:
    """What `erase` found and did. `found` False: no such screening (in the clinic).
    `erased_before`: it was erased already (nothing done). `trained_on`: published versions
    that could have trained on it (not erased unless forced). `image_key`: the photo to
    remove once the transaction commits."""

    found: bool
    erased_at: datetime | None = None
    erased_before: bool = False
    trained_on: tuple[str, ...] = ()
    image_key: str | None = None

    @property
    def done(self) -> bool:
        return self.found and not self.erased_before and self.image_key is not None


async def erase(
    connection: Connection, screening_id: UUID, clinic_id: UUID | None, *, force: bool
) -> Erasure:
    """Erase a screening's photo reference, clinical answers and diagnosis, in the caller's
    transaction; the caller removes the photo (`image_key`) after commit."""
    row = await connection.fetchrow(
        f"SELECT image_key, erased_at FROM screenings WHERE id = $1 AND {VISIBLE.format(n=2)}"
        " FOR UPDATE",
        screening_id,
        clinic_id,
    )
    if row is None:
        return Erasure(found=False)
    if row["erased_at"] is not None:
        return Erasure(found=True, erased_at=row["erased_at"], erased_before=True)
    trained_on = tuple(r["version"] for r in await connection.fetch(TRAINED_ON, screening_id))
    if trained_on and not force:
        return Erasure(found=True, trained_on=trained_on)
    erased = await connection.fetchrow(ERASE, screening_id)
    assert erased is not None
    return Erasure(
        found=True,
        erased_at=erased["erased_at"],
        trained_on=trained_on,
        image_key=row["image_key"],
    )
