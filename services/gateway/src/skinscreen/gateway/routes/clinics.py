"""/v1/clinics and /v1/keys: clinics (tenants) and their API keys, for operators.

A key is shown once, in the answer that creates it; only its SHA-256 is stored
(`skinscreen.runtime.accounts`). Revoking a key takes effect from the next request on.
"""

from __future__ import annotations

from typing import Final
from uuid import UUID

from fastapi import APIRouter, HTTPException, Request

from skinscreen.runtime import accounts
from skinscreen.runtime.accounts import Scope

from .. import audited
from ..audited import Action
from ..auth import require_scope
from ..deps import ServicesDep
from ..schemas import (
    UNPARSABLE_BODY,
    ApiScope,
    ClinicIn,
    ClinicList,
    ClinicOut,
    ClinicPatch,
    KeyCreated,
    KeyIn,
    KeyList,
    KeyOut,
    Problem,
    ValidationProblem,
)

CLINICS: Final = "/v1/clinics"
KEYS: Final = "/v1/keys"

router = APIRouter(tags=["clinics and keys"], dependencies=[require_scope(Scope.OPERATOR)])

NO_CLINIC: Final[dict[int | str, dict[str, object]]] = {
    404: {"model": Problem, "description": "No clinic with this id."}
}


def _clinic(clinic: accounts.Clinic) -> ClinicOut:
    return ClinicOut(
        id=clinic.id,
        name=clinic.name,
        created_at=clinic.created_at,
        rate_limit_screenings=clinic.rate_limit_screenings,
        rate_limit_reads=clinic.rate_limit_reads,
    )


def _key(key: accounts.ApiKey) -> KeyOut:
    return KeyOut(
        id=key.id,
        clinic_id=key.clinic_id,
        name=key.name,
        scopes=[ApiScope(scope.value) for scope in key.scopes],
        prefix=key.prefix,
        created_at=key.created_at,
        expires_at=key.expires_at,
        revoked_at=key.revoked_at,
        last_used_at=key.last_used_at,
    )


@router.post(
    CLINICS,
    status_code=201,
    response_model=ClinicOut,
    summary="Create a clinic (a tenant); then create its keys",
    responses={
        **UNPARSABLE_BODY,
        409: {"model": Problem, "description": "A clinic with this name exists already."},
    },
)
async def create_clinic(body: ClinicIn, services: ServicesDep, request: Request) -> ClinicOut:
    try:
        clinic = await accounts.create_clinic(
            services.pool,
            body.name,
            rate_limit_screenings=body.rate_limit_screenings,
            rate_limit_reads=body.rate_limit_reads,
        )
    except accounts.ClinicNameTakenError as exc:
        raise HTTPException(409, f"name: {exc}; choose another name") from exc
    await audited.record(request, services.pool, Action.CLINIC_CREATED, clinic.id)
    return _clinic(clinic)


@router.patch(
    CLINICS + "/{clinic_id}",
    response_model=ClinicOut,
    summary="Rename a clinic or set its rate limits (null: the service's default again)",
    responses={
        **UNPARSABLE_BODY,
        **NO_CLINIC,
        409: {"model": Problem, "description": "A clinic with this name exists already."},
        422: {"model": ValidationProblem, "description": "A field is malformed; nothing changed."},
    },
)
async def update_clinic(
    clinic_id: UUID, body: ClinicPatch, services: ServicesDep, request: Request
) -> ClinicOut:
    changes = body.model_dump(include=body.model_fields_set)
    if changes.get("name", "") is None:
        raise HTTPException(
            422,
            [
                {
                    "loc": ["body", "name"],
                    "msg": "name cannot be null; leave it out to keep the name",
                    "type": "null_name",
                }
            ],
        )
    try:
        clinic = await accounts.update_clinic(services.pool, clinic_id, changes)
    except accounts.ClinicNameTakenError as exc:
        raise HTTPException(409, f"name: {exc}; choose another name") from exc
    if clinic is None:
        raise HTTPException(404, f"no clinic with id {clinic_id}")
    await audited.record(
        request, services.pool, Action.CLINIC_UPDATED, clinic_id, changed=sorted(changes)
    )
    return _clinic(clinic)


@router.get(CLINICS, response_model=ClinicList, summary="Every clinic, by name")
async def list_clinics(services: ServicesDep) -> ClinicList:
    return ClinicList(
        items=[_clinic(clinic) for clinic in await accounts.list_clinics(services.pool)]
    )


@router.post(
    CLINICS + "/{clinic_id}/keys",
    status_code=201,
    response_model=KeyCreated,
    summary="Create an API key for a clinic; the key is in this answer only",
    responses={**UNPARSABLE_BODY, **NO_CLINIC},
)
async def create_key(
    clinic_id: UUID, body: KeyIn, services: ServicesDep, request: Request
) -> KeyCreated:
    try:
        created = await accounts.create_key(
            services.pool,
            scopes=[Scope(scope.value) for scope in body.scopes],
            clinic_id=clinic_id,
            name=body.name,
            expires_at=body.expires_at,
        )
    except accounts.ClinicNotFoundError as exc:
        raise HTTPException(404, f"no clinic with id {clinic_id}") from exc
    await audited.record(
        request,
        services.pool,
        Action.KEY_CREATED,
        created.key.id,
        clinic_id=str(clinic_id),
        scopes=[scope.value for scope in created.key.scopes],
    )
    return KeyCreated(**_key(created.key).model_dump(), key=created.secret)


@router.get(
    CLINICS + "/{clinic_id}/keys",
    response_model=KeyList,
    summary="A clinic's API keys (never the keys themselves), revoked ones too",
    responses=NO_CLINIC,
)
async def list_keys(clinic_id: UUID, services: ServicesDep) -> KeyList:
    if await accounts.get_clinic(services.pool, clinic_id) is None:
        raise HTTPException(404, f"no clinic with id {clinic_id}")
    return KeyList(items=[_key(key) for key in await accounts.list_keys(services.pool, clinic_id)])


@router.delete(
    KEYS + "/{key_id}",
    response_model=KeyOut,
    summary="Revoke an API key, from the next request on; revoking it again changes nothing",
    responses={404: {"model": Problem, "description": "No API key with this id."}},
)
async def revoke_key(key_id: UUID, services: ServicesDep, request: Request) -> KeyOut:
    revoked = await accounts.revoke_key(services.pool, key_id)
    if revoked is None:
        raise HTTPException(404, f"no API key with id {key_id}")
    await audited.record(request, services.pool, Action.KEY_REVOKED, key_id)
    return _key(revoked)
