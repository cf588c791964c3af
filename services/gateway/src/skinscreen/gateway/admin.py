"""`skinscreen-gateway-admin`: clinics and API keys, straight in the database (DATABASE_URL).

For what the API cannot do before any key exists: the first operator key.

    skinscreen-gateway-admin create-key --operator            # an operator key, no clinic
    skinscreen-gateway-admin create-clinic "Clinica Vitoria"  # prints the clinic's id
    skinscreen-gateway-admin create-key --clinic "Clinica Vitoria" --clinician
    skinscreen-gateway-admin list-clinics | list-keys [--clinic C] | revoke-key KEY_ID

A key is printed once, on the line `API key (<what>): <key>`; only its SHA-256 is stored.
Everything else is also in the API, for operators (`/v1/clinics`, `/v1/keys`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg

from skinscreen.runtime import accounts
from skinscreen.runtime.accounts import Scope


class AdminError(Exception):
    """A mistake in what was asked; the message says what to do instead."""


async def _clinic(connection: asyncpg.Connection, given: str) -> accounts.Clinic:
    """A clinic by id or by name."""
    try:
        found = await accounts.get_clinic(connection, UUID(given))
    except ValueError:
        found = await accounts.clinic_by_name(connection, given)
    if found is None:
        raise AdminError(f"--clinic: no clinic with id or name {given!r}; see list-clinics")
    return found


def _describe(key: accounts.ApiKey) -> str:
    state = (
        f"revoked {key.revoked_at:%Y-%m-%d %H:%M}"
        if key.revoked_at
        else f"expires {key.expires_at:%Y-%m-%d %H:%M}"
        if key.expires_at
        else "active"
    )
    scopes = ",".join(scope.value for scope in key.scopes)
    return f"{key.id}  {key.prefix}...  {scopes:<18}  {state:<24}  {key.name or ''}".rstrip()


async def create_clinic(connection: asyncpg.Connection, args: argparse.Namespace) -> None:
    try:
        clinic = await accounts.create_clinic(connection, args.name)
    except accounts.ClinicNameTakenError as exc:
        raise AdminError(str(exc)) from exc
    print(f"clinic {clinic.name!r}: {clinic.id}")


async def create_key(connection: asyncpg.Connection, args: argparse.Namespace) -> None:
    scopes = [scope for scope, wanted in ((Scope.CLINICIAN, args.clinician),
                                          (Scope.OPERATOR, args.operator)) if wanted]  # fmt: skip
    if not scopes:
        raise AdminError("name the key's scopes: --operator, --clinician or both")
    clinic = None if args.clinic is None else await _clinic(connection, args.clinic)
    if Scope.CLINICIAN in scopes and clinic is None:
        raise AdminError(
            "--clinician: a clinician key belongs to a clinic; add --clinic NAME_OR_ID"
        )
    expires_at = None
    if args.expires_in_days is not None:
        if args.expires_in_days <= 0:
            raise AdminError("--expires-in-days: a positive number of days")
        expires_at = datetime.now(UTC) + timedelta(days=args.expires_in_days)
    created = await accounts.create_key(
        connection,
        scopes=scopes,
        clinic_id=None if clinic is None else clinic.id,
        name=args.name,
        expires_at=expires_at,
    )
    what = ", ".join(scope.value for scope in created.key.scopes)
    owner = "" if clinic is None else f" of clinic {clinic.name!r}"
    print(
        f"key {created.key.id} ({what}){owner}; shown once, only its hash is kept:", file=sys.stderr
    )
    label = "operator" if clinic is None else clinic.name
    print(f"API key ({label}): {created.secret}", flush=True)


async def list_clinics(connection: asyncpg.Connection, args: argparse.Namespace) -> None:
    for clinic in await accounts.list_clinics(connection):
        print(f"{clinic.id}  {clinic.name}")


async def list_keys(connection: asyncpg.Connection, args: argparse.Namespace) -> None:
    clinic = None if args.clinic is None else await _clinic(connection, args.clinic)
    for key in await accounts.list_keys(connection, None if clinic is None else clinic.id):
        print(_describe(key))


async def revoke_key(connection: asyncpg.Connection, args: argparse.Namespace) -> None:
    try:
        key_id = UUID(args.key_id)
    except ValueError:
        raise AdminError(
            f"KEY_ID: {args.key_id!r} is not a key id (a UUID; see list-keys)"
        ) from None
    revoked = await accounts.revoke_key(connection, key_id)
    if revoked is None:
        raise AdminError(f"KEY_ID: no key with id {key_id}; see list-keys")
    print(_describe(revoked))


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="skinscreen-gateway-admin",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = top.add_subparsers(dest="command", required=True)
    command = commands.add_parser("create-clinic", help="create a clinic; prints its id")
    command.add_argument("name")
    command.set_defaults(run=create_clinic)
    command = commands.add_parser("create-key", help="create an API key; prints it once")
    command.add_argument("--operator", action="store_true", help="the operator scope")
    command.add_argument("--clinician", action="store_true", help="the clinician scope")
    command.add_argument("--clinic", help="the clinic (id or name) it belongs to; "
                         "needed for --clinician, optional for --operator")  # fmt: skip
    command.add_argument("--name", help="what the key is for")
    command.add_argument("--expires-in-days", type=float, help="default: never expires")
    command.set_defaults(run=create_key)
    command = commands.add_parser("list-clinics", help="every clinic, by name")
    command.set_defaults(run=list_clinics)
    command = commands.add_parser(
        "list-keys", help="a clinic's keys, or (no --clinic) those of no clinic"
    )
    command.add_argument("--clinic", help="id or name")
    command.set_defaults(run=list_keys)
    command = commands.add_parser("revoke-key", help="revoke a key, from the next request on")
    command.add_argument("key_id", metavar="KEY_ID")
    command.set_defaults(run=revoke_key)
    return top


async def _run(url: str, run: Callable[..., Awaitable[None]], args: argparse.Namespace) -> None:
    connection = await asyncpg.connect(url, timeout=10)
    try:
        await run(connection, args)
    except asyncpg.UndefinedTableError as exc:
        raise AdminError(
            f"the database has no {exc}: apply the migrations first (skinscreen-gateway-prestart)"
        ) from exc
    finally:
        await connection.close()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    url = os.environ.get("DATABASE_URL")
    if not url:
        print(
            "skinscreen-gateway-admin: set DATABASE_URL (the gateway's database)", file=sys.stderr
        )
        return 2
    try:
        asyncio.run(_run(url, args.run, args))
    except AdminError as exc:
        print(f"skinscreen-gateway-admin: {exc}", file=sys.stderr)
        return 1
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"skinscreen-gateway-admin: database at DATABASE_URL: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
