"""Clinics and their API keys in PostgreSQL: every statement on the clinics and api_keys tables.

The gateway authenticates each request here (`authenticate`: one indexed query by the key's
SHA-256) and manages clinics and keys for operators; `skinscreen-gateway-admin` and
`skinscreen-stack` create the first keys through the same functions.

A key is `sk_live_` followed by 43 URL-safe characters (`secrets.token_urlsafe(32)`, 256
random bits). It is returned once, by `create_key`; the table keeps only its SHA-256 and its
first `PREFIX_CHARS` characters, to tell keys apart in lists.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final
from uuid import UUID, uuid4

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# A pool, or one connection (a transaction's, or one taken from a pool).
Connection = asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy


class Scope(StrEnum):
    """What a key may do (the `scopes` of api_keys; the gateway's `require_scope`)."""

    # Screen, read and list its clinic's screenings (?wait too), record their diagnoses.
    CLINICIAN = "clinician"
    # Models (promote, rollback), training runs, clinics and keys; reads every clinic's
    # screenings.
    OPERATOR = "operator"


KEY_PREFIX: Final = "sk_live_"
PREFIX_CHARS: Final = len(KEY_PREFIX) + 4  # e.g. sk_live_AbCd
# secrets.token_urlsafe(32): 43 characters of [A-Za-z0-9_-].
KEY_CHARS: Final = len(KEY_PREFIX) + 43
KEY_PATTERN: Final = rf"^{KEY_PREFIX}[A-Za-z0-9_-]{{43}}$"
MAX_NAME_CHARS: Final = 200
# A clinic's rate limit: requests per period (a CHECK on clinics, migration 0010).
RATE_LIMIT_PATTERN: Final = r"^[1-9][0-9]{0,8}/(second|minute|hour|day)$"
RATE_LIMIT_ALLOWED: Final = (
    "'<requests>/<period>': 1 to 999999999 requests per second, minute, hour or day, "
    "e.g. '60/minute'; null: the gateway's default"
)

CLINIC_COLUMNS: Final = "id, name, created_at, rate_limit_screenings, rate_limit_reads"
KEY_COLUMNS: Final = (
    "id, clinic_id, name, scopes, prefix, created_at, expires_at, revoked_at, last_used_at"
)

# last_used_at is written at most this often per key, so authentication stays a read for
# almost every request.
LAST_USED_EVERY_S: Final = 60


class ClinicNameTakenError(ValueError):
    """Another clinic already has this name."""


class ClinicNotFoundError(LookupError):
    """No clinic with this id."""


class ClinicianKeyNeedsClinicError(ValueError):
    """A key with the clinician scope was asked for without a clinic."""


@dataclass(frozen=True)
class Clinic:
    id: UUID
    name: str
    created_at: datetime
    # None: the gateway's default (RATE_LIMIT_SCREENINGS, RATE_LIMIT_READS).
    rate_limit_screenings: str | None = None
    rate_limit_reads: str | None = None


@dataclass(frozen=True)
class ApiKey:
    """A key as stored: never the secret."""

    id: UUID
    clinic_id: UUID | None
    name: str | None
    scopes: tuple[Scope, ...]
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


@dataclass(frozen=True)
class CreatedKey:
    """A key just created: `secret` is the key itself, shown this once and kept nowhere."""

    key: ApiKey
    secret: str


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_sha256(secret: str) -> bytes:
    """What api_keys.key_sha256 holds for a key."""
    return hashlib.sha256(secret.encode()).digest()


def _clinic(row: asyncpg.Record) -> Clinic:
    return Clinic(
        row["id"],
        row["name"],
        row["created_at"],
        row["rate_limit_screenings"],
        row["rate_limit_reads"],
    )


def _key(row: asyncpg.Record) -> ApiKey:
    return ApiKey(
        id=row["id"],
        clinic_id=row["clinic_id"],
        name=row["name"],
        scopes=tuple(Scope(scope) for scope in row["scopes"]),
        prefix=row["prefix"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        last_used_at=row["last_used_at"],
    )


# --- Clinics ---------------------------------------------------------------------------------


async def create_clinic(
    pool: Connection,
    name: str,
    *,
    rate_limit_screenings: str | None = None,
    rate_limit_reads: str | None = None,
) -> Clinic:
    """A new clinic; ClinicNameTakenError when the name is taken."""
    try:
        row = await pool.fetchrow(
            "INSERT INTO clinics (id, name, rate_limit_screenings, rate_limit_reads)"
            f" VALUES ($1, $2, $3, $4) RETURNING {CLINIC_COLUMNS}",
            uuid4(),
            name,
            rate_limit_screenings,
            rate_limit_reads,
        )
    except asyncpg.UniqueViolationError as exc:
        raise ClinicNameTakenError(f"a clinic named {name!r} exists already") from exc
    assert row is not None
    return _clinic(row)


async def get_clinic(pool: Connection, clinic_id: UUID) -> Clinic | None:
    row = await pool.fetchrow(f"SELECT {CLINIC_COLUMNS} FROM clinics WHERE id = $1", clinic_id)
    return None if row is None else _clinic(row)


async def clinic_by_name(pool: Connection, name: str) -> Clinic | None:
    row = await pool.fetchrow(f"SELECT {CLINIC_COLUMNS} FROM clinics WHERE name = $1", name)
    return None if row is None else _clinic(row)


async def update_clinic(
    pool: Connection, clinic_id: UUID, changes: dict[str, str | None]
) -> Clinic | None:
    """Set a clinic's name or rate limits (`changes`: column name to new value; a limit of None
    is the gateway's default again). None if there is no such clinic; ClinicNameTakenError."""
    allowed = {"name", "rate_limit_screenings", "rate_limit_reads"}
    assert set(changes) <= allowed, f"only {sorted(allowed)} can change"
    if not changes:
        return await get_clinic(pool, clinic_id)
    names = sorted(changes)
    assignments = ", ".join(f"{name} = ${index}" for index, name in enumerate(names, start=2))
    try:
        row = await pool.fetchrow(
            f"UPDATE clinics SET {assignments} WHERE id = $1 RETURNING {CLINIC_COLUMNS}",
            clinic_id,
            *(changes[name] for name in names),
        )
    except asyncpg.UniqueViolationError as exc:
        raise ClinicNameTakenError(f"a clinic named {changes['name']!r} exists already") from exc
    return None if row is None else _clinic(row)


async def list_clinics(pool: Connection) -> list[Clinic]:
    """Every clinic, by name."""
    rows = await pool.fetch(f"SELECT {CLINIC_COLUMNS} FROM clinics ORDER BY name, id")
    return [_clinic(row) for row in rows]


# --- Keys ------------------------------------------------------------------------------------


async def create_key(
    pool: Connection,
    *,
    scopes: Iterable[Scope],
    clinic_id: UUID | None,
    name: str | None = None,
    expires_at: datetime | None = None,
) -> CreatedKey:
    """A new key; its secret is in the answer and nowhere else.

    ClinicNotFoundError for a clinic that does not exist; ClinicianKeyNeedsClinicError for
    the clinician scope without a clinic.
    """
    chosen = sorted({Scope(scope) for scope in scopes})
    if not chosen:
        raise ValueError("a key needs at least one scope")
    if Scope.CLINICIAN in chosen and clinic_id is None:
        raise ClinicianKeyNeedsClinicError(
            "a key with the clinician scope belongs to a clinic: name one"
        )
    secret = new_secret()
    try:
        row = await pool.fetchrow(
            "INSERT INTO api_keys (id, clinic_id, name, scopes, prefix, key_sha256, expires_at)"
            f" VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {KEY_COLUMNS}",
            uuid4(),
            clinic_id,
            name,
            [scope.value for scope in chosen],
            secret[:PREFIX_CHARS],
            key_sha256(secret),
            expires_at,
        )
    except asyncpg.ForeignKeyViolationError as exc:
        raise ClinicNotFoundError(f"no clinic with id {clinic_id}") from exc
    assert row is not None
    return CreatedKey(_key(row), secret)


async def list_keys(pool: Connection, clinic_id: UUID | None) -> list[ApiKey]:
    """A clinic's keys (None: the keys that belong to no clinic), oldest first."""
    rows = await pool.fetch(
        f"SELECT {KEY_COLUMNS} FROM api_keys WHERE clinic_id IS NOT DISTINCT FROM $1"
        " ORDER BY created_at, id",
        clinic_id,
    )
    return [_key(row) for row in rows]


async def get_key(pool: Connection, key_id: UUID) -> ApiKey | None:
    row = await pool.fetchrow(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1", key_id)
    return None if row is None else _key(row)


async def revoke_key(pool: Connection, key_id: UUID) -> ApiKey | None:
    """Revoke a key (from the next request on); a key revoked before keeps its first
    revocation time. None if there is no such key."""
    row = await pool.fetchrow(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1"
        f" RETURNING {KEY_COLUMNS}",
        key_id,
    )
    return None if row is None else _key(row)


# --- Authentication, once per request --------------------------------------------------------

# One round trip: the key by its hash (a unique index), whether it is revoked or expired on the
# database's clock, and, for a usable key last marked used over LAST_USED_EVERY_S ago, the mark.
AUTHENTICATE: Final = f"""
WITH found AS (
    SELECT api_keys.id, clinic_id, scopes, revoked_at, expires_at,
           clinics.rate_limit_screenings, clinics.rate_limit_reads,
           revoked_at IS NOT NULL AS revoked,
           expires_at IS NOT NULL AND expires_at <= now() AS expired,
           last_used_at IS NULL
             OR last_used_at < now() - make_interval(secs => {LAST_USED_EVERY_S}) AS stale
    FROM api_keys LEFT JOIN clinics ON clinics.id = api_keys.clinic_id
    WHERE key_sha256 = $1
), touched AS (
    UPDATE api_keys SET last_used_at = now()
    WHERE id = (SELECT id FROM found WHERE NOT revoked AND NOT expired AND stale)
)
SELECT id, clinic_id, scopes, revoked_at, expires_at, revoked, expired,
       rate_limit_screenings, rate_limit_reads
FROM found
"""


@dataclass(frozen=True)
class KeyCheck:
    """What the database says of a presented key: found, and if so whether it may be used."""

    key_id: UUID
    clinic_id: UUID | None
    scopes: frozenset[Scope]
    revoked_at: datetime | None
    expires_at: datetime | None
    revoked: bool
    expired: bool
    # The key's clinic's rate limits; None: the gateway's defaults.
    rate_limit_screenings: str | None = None
    rate_limit_reads: str | None = None

    @property
    def usable(self) -> bool:
        return not (self.revoked or self.expired)


async def authenticate(pool: Connection, secret: str) -> KeyCheck | None:
    """The key whose secret this is, or None when there is none. Revoked and expired keys are
    returned too (`usable` is False), so the caller can say why it refuses them."""
    row = await pool.fetchrow(AUTHENTICATE, key_sha256(secret))
    if row is None:
        return None
    return KeyCheck(
        key_id=row["id"],
        clinic_id=row["clinic_id"],
        scopes=frozenset(Scope(scope) for scope in row["scopes"]),
        revoked_at=row["revoked_at"],
        expires_at=row["expires_at"],
        revoked=row["revoked"],
        expired=row["expired"],
        rate_limit_screenings=row["rate_limit_screenings"],
        rate_limit_reads=row["rate_limit_reads"],
    )
