"""The worker's writes to PostgreSQL: claim a batch, record its results, record failures.

Every write is conditional on the screening not being finished, so a task
delivered twice (a worker died before acknowledging it) is written once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from uuid import UUID

import asyncpg
import numpy as np

from skinscreen.runtime.database import FINISHED_CHANNEL

from .model import Decision

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
# The card's decision rule is applied in Python (DecisionRule); each screening's
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


async def claim(pool: asyncpg.Pool, screening_ids: list[UUID]) -> dict[UUID, float]:
    """Mark the screenings running; return those not already finished, with their time queued.

    The time is measured on the database's clock, which stamped `created_at`.
    """
    rows = await pool.fetch(CLAIM, screening_ids)
    return {row["id"]: row["waited_s"] for row in rows}


@dataclass(frozen=True)
class BatchRecord:
    batch_id: int
    written: int
    # False: the version was retired meanwhile; nothing was written, score the batch again.
    version_active: bool
    # The screenings this write finished (not those a redelivery had finished before).
    written_ids: frozenset[UUID] = frozenset()


async def record_batch(
    pool: asyncpg.Pool,
    screening_ids: list[UUID],
    probabilities: np.ndarray,
    decisions: Sequence[Decision],
    *,
    threshold: float,
    melanoma_threshold: float | None,
    model_name: str,
    model_version: str,
    provider: str,
    inference_ms: float,
    keep_serving: bool = False,
) -> BatchRecord:
    """Write a batch's results if `model_version` is still active (or `keep_serving`).

    `decisions` are the card's rule applied to each screening; `threshold` and
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
        [decision.suspicious for decision in decisions],
        [json.dumps(decision.reasons) for decision in decisions],
        [None if d.diagnoses is None else json.dumps(d.diagnoses) for d in decisions],
        melanoma_threshold,
    )
    assert row is not None
    return BatchRecord(
        int(row["batch_id"]),
        int(row["written"]),
        bool(row["version_active"]),
        frozenset(row["written_ids"]),
    )


async def fail(pool: asyncpg.Pool, screening_id: UUID, reason: str) -> bool:
    """Mark a screening failed with `reason`, unless it already finished."""
    return bool(await pool.fetchval(FAIL, screening_id, reason))
