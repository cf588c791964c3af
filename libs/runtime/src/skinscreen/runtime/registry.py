"""The model registry in PostgreSQL: versions, the one active version per name, promotion.

Gateway (operators' API), trainer (candidates, the promotion gate, the CLI) and
inference (which version to serve) all read and write it through here. After
a switch, the caller announces it on Redis (`ACTIVATIONS_CHANNEL`) so workers
load the new version at once; workers also re-read the registry periodically.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal
from uuid import UUID

import asyncpg

from skinscreen.core.card import ModelCard

from .artifacts import ArtifactStore, fetch_model, read_card

# Redis pub/sub channel; the message is {"name": ..., "version": ...} of the new active version.
ACTIVATIONS_CHANNEL: Final = "skinscreen:model-activations"

# The metrics the promotion gate compares, each the card's cross-validated figure of its
# decision rule (both thresholds) on patients that did not choose the thresholds: recall
# first (a missed cancer is the worst error), then balanced accuracy.
GATED_METRICS: Final = ("recall", "balanced_accuracy")
# Compared too once the active version's card carries it: the share of melanomas the rule
# flags. A candidate without it cannot show that it finds melanomas as well.
MELANOMA_RECALL: Final = "melanoma_recall"

VersionStatus = Literal["candidate", "active", "retired"]
Action = Literal["promote", "rollback"]

COLUMNS: Final = (
    "name, version, artifact_uri, sha256, card, status, training_run_id, created_at,"
    " promoted_by, promoted_at"
)


class RegistryError(ValueError):
    """A registry request that cannot be carried out; the message says why and what exists."""


class VersionNotFoundError(RegistryError):
    pass


class NothingToRollBackError(RegistryError):
    pass


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    artifact_uri: str
    sha256: str
    card: dict[str, Any]
    status: VersionStatus
    training_run_id: UUID | None
    created_at: datetime
    promoted_by: str | None
    promoted_at: datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> ModelVersion:
        card = row["card"]
        return cls(**{**dict(row), "card": json.loads(card) if isinstance(card, str) else card})

    def metric(self, name: str) -> float | None:
        summary = self.card.get("cross_validation", {}).get(name)
        return None if summary is None else float(summary["mean"])


@dataclass(frozen=True)
class Activation:
    name: str
    version: str
    previous_version: str | None
    action: Action
    actor: str
    reason: str
    activated_at: datetime


async def verify_artifact(version: ModelVersion) -> None:
    """The check before any switch: the artifact is there and matches its recorded sha256."""
    await asyncio.to_thread(fetch_model, version.artifact_uri, version.sha256)


Verify = Callable[[ModelVersion], Awaitable[None]]


async def register(
    connection: asyncpg.Pool | asyncpg.Connection,
    card: ModelCard,
    artifact_uri: str,
    *,
    training_run_id: UUID | None = None,
) -> ModelVersion:
    """Add a published version as a candidate; registering it again changes nothing.

    A name's inputs are fixed: the gateway decides by them whether clinical
    answers are required, so a version taking other inputs needs a name of its own.
    """
    known = await model_inputs(connection, card.name)
    if known is not None and known != card.inputs:
        raise RegistryError(
            f"model {card.name} takes inputs {list(known)}; version {card.version} takes "
            f"{list(card.inputs)}; a model with other inputs needs another name"
        )
    row = await connection.fetchrow(
        "INSERT INTO model_versions (name, version, artifact_uri, sha256, card, training_run_id)"
        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name, version) DO NOTHING"
        f" RETURNING {COLUMNS}",
        card.name,
        card.version,
        artifact_uri,
        card.sha256,
        json.loads(card.model_dump_json()),
        training_run_id,
    )
    if row is None:
        existing = await get_version(connection, card.name, card.version)
        assert existing is not None
        if existing.sha256 != card.sha256:
            raise RegistryError(
                f"model {card.name} version {card.version} is registered with sha256 "
                f"{existing.sha256}, not {card.sha256}; versions are immutable"
            )
        return existing
    return ModelVersion.from_row(row)


async def model_inputs(
    connection: asyncpg.Pool | asyncpg.Connection, name: str
) -> tuple[str, ...] | None:
    """The inputs every version of `name` takes, or None if no version is registered."""
    # Cards written before the field existed were all fusion models.
    inputs = await connection.fetchval(
        "SELECT coalesce(card -> 'inputs', '[\"image\", \"clinical\"]')"
        " FROM model_versions WHERE name = $1 LIMIT 1",
        name,
    )
    if inputs is None:
        return None
    # Without the pool's jsonb codec (a bare connection), jsonb arrives as text.
    return tuple(json.loads(inputs) if isinstance(inputs, str) else inputs)


async def get_version(
    connection: asyncpg.Pool | asyncpg.Connection, name: str, version: str
) -> ModelVersion | None:
    row = await connection.fetchrow(
        f"SELECT {COLUMNS} FROM model_versions WHERE name = $1 AND version = $2", name, version
    )
    return None if row is None else ModelVersion.from_row(row)


async def get_active(
    connection: asyncpg.Pool | asyncpg.Connection, name: str
) -> ModelVersion | None:
    row = await connection.fetchrow(
        f"SELECT {COLUMNS} FROM model_versions WHERE name = $1 AND status = 'active'", name
    )
    return None if row is None else ModelVersion.from_row(row)


async def list_versions(
    connection: asyncpg.Pool | asyncpg.Connection, name: str | None = None
) -> list[ModelVersion]:
    """Every registered version (of `name`, when given), newest first."""
    rows = await connection.fetch(
        f"SELECT {COLUMNS} FROM model_versions WHERE $1::text IS NULL OR name = $1"
        " ORDER BY name, version DESC",
        name,
    )
    return [ModelVersion.from_row(row) for row in rows]


async def activations(connection: asyncpg.Pool | asyncpg.Connection, name: str) -> list[Activation]:
    """The history of switches of `name`, oldest first."""
    rows = await connection.fetch(
        "SELECT name, version, previous_version, action, actor, reason, activated_at"
        " FROM model_activations WHERE name = $1 ORDER BY id",
        name,
    )
    return [Activation(**dict(row)) for row in rows]


async def _known(connection: asyncpg.Pool | asyncpg.Connection, name: str) -> str:
    versions = [row["version"] for row in await connection.fetch(
        "SELECT version FROM model_versions WHERE name = $1 ORDER BY version DESC LIMIT 10", name
    )]  # fmt: skip
    return ", ".join(versions) if versions else "none"


async def _activate(
    pool: asyncpg.Pool,
    name: str,
    version: str,
    *,
    action: Action,
    actor: str,
    reason: str,
    verify: Verify,
) -> ModelVersion:
    target = await get_version(pool, name, version)
    if target is None:
        raise VersionNotFoundError(
            f"model {name} has no version {version!r}; registered: {await _known(pool, name)}"
        )
    # Outside the transaction: reading and hashing an artifact may take seconds.
    await verify(target)
    async with pool.acquire() as connection, connection.transaction():
        current = await connection.fetchrow(
            "SELECT version FROM model_versions WHERE name = $1 AND status = 'active' FOR UPDATE",
            name,
        )
        previous = None if current is None else current["version"]
        if previous == version:
            return target
        await connection.execute(
            "UPDATE model_versions SET status = 'retired' WHERE name = $1 AND status = 'active'",
            name,
        )
        # clock_timestamp(), not now(): taken after the row locks are held, so a result
        # written by the old version while it held them is stamped before this switch.
        row = await connection.fetchrow(
            "UPDATE model_versions SET status = 'active', promoted_by = $3,"
            " promoted_at = clock_timestamp() WHERE name = $1 AND version = $2"
            f" RETURNING {COLUMNS}",
            name,
            version,
            actor,
        )
        assert row is not None
        await connection.execute(
            "INSERT INTO model_activations"
            " (name, version, previous_version, action, actor, reason, activated_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, clock_timestamp())",
            name,
            version,
            previous,
            action,
            actor,
            reason,
        )
    return ModelVersion.from_row(row)


async def promote(
    pool: asyncpg.Pool,
    name: str,
    version: str,
    *,
    actor: str,
    reason: str,
    verify: Verify = verify_artifact,
) -> ModelVersion:
    """Make `version` the active one, after `verify` (the artifact's checksum) passes.

    A version that does not exist, or whose artifact fails `verify`, raises and
    leaves the active version as it was.
    """
    return await _activate(
        pool, name, version, action="promote", actor=actor, reason=reason, verify=verify
    )


async def rollback(
    pool: asyncpg.Pool,
    name: str,
    *,
    actor: str,
    reason: str,
    verify: Verify = verify_artifact,
) -> ModelVersion:
    """Re-activate the version that was active before the current one was promoted.

    Rolling back twice goes two promotions back, not back and forth.
    """
    current = await get_active(pool, name)
    if current is None:
        raise NothingToRollBackError(f"model {name} has no active version to roll back")
    previous = await pool.fetchval(
        "SELECT previous_version FROM model_activations"
        " WHERE name = $1 AND version = $2 AND action = 'promote' ORDER BY id DESC LIMIT 1",
        name,
        current.version,
    )
    if previous is None:
        raise NothingToRollBackError(
            f"model {name} version {current.version} was not promoted over another version; "
            "there is nothing to roll back to (promote a version by name instead)"
        )
    return await _activate(
        pool, name, previous, action="rollback", actor=actor, reason=reason, verify=verify
    )


def promotion_decision(
    candidate: ModelVersion, active: ModelVersion | None, tolerance: float
) -> tuple[bool, str]:
    """The promotion gate: (promote?, why) for a candidate against the active version.

    Promote only when neither cross-validated recall nor balanced accuracy (of
    each card's decision rule) is worse than the active version's by more than
    `tolerance`; nor melanoma recall, when the active version's card has it. A
    candidate without melanoma recall is kept when the active version has it.
    """
    if active is None:
        return True, "no version was active"
    gated = list(GATED_METRICS)
    if active.metric(MELANOMA_RECALL) is not None:
        if candidate.metric(MELANOMA_RECALL) is None:
            return False, (
                f"kept as candidate: active version {active.version} has a cross-validated "
                f"{MELANOMA_RECALL} and the candidate's card has none, so it cannot show that "
                "it flags melanomas as well"
            )
        gated.append(MELANOMA_RECALL)
    worse = []
    for metric in gated:
        new, old = candidate.metric(metric), active.metric(metric)
        if new is None:
            return False, f"the candidate's card has no cross-validated {metric}"
        if old is not None and new < old - tolerance:
            worse.append(f"{metric} {new:.3f} < {old:.3f} - {tolerance:g}")
    if worse:
        return False, (
            f"kept as candidate: worse than active version {active.version} by more than the "
            "tolerance: " + "; ".join(worse)
        )
    summary = ", ".join(
        f"{metric} {candidate.metric(metric):.3f} vs {active.metric(metric) or float('nan'):.3f}"
        for metric in gated
    )
    return True, f"not worse than version {active.version} beyond {tolerance:g}: {summary}"


async def register_store(
    pool: asyncpg.Pool, store: ArtifactStore, *, actor: str, verify: Verify = verify_artifact
) -> list[ModelVersion]:
    """Register every version published in `store`; activate the newest of a name with none.

    What the pre-start step runs, so a fresh database serves the shipped model.
    Returns the active version of each name.
    """
    active_versions = []
    for name in store.names():
        for version in store.versions(name):
            uri = store.uri(name, version)
            await register(pool, read_card(uri), uri)
        active = await get_active(pool, name)
        if active is None:
            newest = await pool.fetchval(
                "SELECT max(version) FROM model_versions WHERE name = $1", name
            )
            active = await promote(
                pool,
                name,
                newest,
                actor=actor,
                reason="no version was active: the newest published one",
                verify=verify,
            )
        active_versions.append(active)
    return active_versions


def activation_message(version: ModelVersion) -> str:
    """What is published on ACTIVATIONS_CHANNEL after a switch."""
    return json.dumps({"name": version.name, "version": version.version})
