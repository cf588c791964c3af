"""Who is asking: every /v1 request carries an API key, `Authorization: Bearer <key>`.

Routes declare what they need as FastAPI dependencies:

- `Annotated[Principal, require_scope(Scope.CLINICIAN)]` (or the aliases `ClinicianKey`,
  `ScreeningReaderKey`, `OperatorKey`, `AnyKey`) gives the route the caller's `Principal`;
- `dependencies=[require_scope(Scope.OPERATOR)]` only guards it.

`require_scope(a, b)` admits a key holding any one of the scopes named (none named: any valid
key). Refusals, before the route runs and before its body or parameters are checked:

- no key, a malformed `Authorization` header, an unknown, revoked or expired key: 401 with
  `WWW-Authenticate: Bearer` (and `error="invalid_token"` when a key was sent);
- a valid key without the scope: 403 with `WWW-Authenticate: Bearer error="insufficient_scope"`.

Keys are looked up on every request: one query by the key's SHA-256 on a unique index
(`skinscreen.runtime.accounts.authenticate`), with no cache in the gateway, so a revoked key
is refused from the next request on, by every gateway. The principal is also kept on
`request.state.principal`, for what runs around a route (rate limits, the audit trail).

Which screenings a principal sees is `Principal.visible_clinic`: its own clinic's for a
clinician's key, every clinic's (and those made before clinics existed) for an operator's.
Another clinic's screening is answered 404, exactly as one that does not exist.

`document(router)` adds the 401 and 403 answers to the OpenAPI of every guarded operation;
the scopes each operation admits are its security requirement (`HTTPBearer: [scopes]`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Final
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException, Request, Response, Security
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer, SecurityScopes

from skinscreen.runtime import accounts
from skinscreen.runtime.accounts import Scope

from .deps import Services, ServicesDep
from .ratelimit import TOO_MANY_REQUESTS, Budget, budget_of
from .schemas import Problem

__all__ = [
    "AnyKey",
    "ClinicianKey",
    "OperatorKey",
    "Principal",
    "Scope",
    "ScreeningReaderKey",
    "authenticate",
    "document",
    "require_scope",
]

bearer = HTTPBearer(
    auto_error=False,
    bearerFormat="API key",
    description="An API key (`sk_live_...`), created by an operator for a clinic "
    "(`POST /v1/clinics/{clinic_id}/keys`, or `skinscreen-gateway-admin`). Each operation's "
    "security requirement lists the scopes that admit a key; any one of them is enough "
    "(none listed: any valid key). Scopes: `clinician` (screen, read and list its clinic's "
    "screenings, record their diagnoses), `operator` (models, training runs, clinics and keys; "
    "reads every clinic's screenings).",
)

HOW_TO_SEND: Final = "send an API key as 'Authorization: Bearer <key>'"


@dataclass(frozen=True)
class Principal:
    """The caller, as its API key says: which key, which clinic (None: an operator's key that
    belongs to none), which scopes."""

    key_id: UUID
    clinic_id: UUID | None
    scopes: frozenset[Scope]
    # The clinic's own rate limits; None: the gateway's defaults (ratelimit.py).
    rate_limit_screenings: str | None = None
    rate_limit_reads: str | None = None

    def has(self, scope: Scope) -> bool:
        return scope in self.scopes

    @property
    def visible_clinic(self) -> UUID | None:
        """The clinic whose screenings this caller may see; None: every clinic's (operators)."""
        if self.has(Scope.OPERATOR):
            return None
        # The database refuses a clinician key without a clinic (0009_clinics_and_keys.sql).
        assert self.clinic_id is not None, "a clinician key belongs to a clinic"
        return self.clinic_id


def _unauthorized(detail: str, error: str | None = None) -> HTTPException:
    challenge = "Bearer" if error is None else f'Bearer error="{error}"'
    return HTTPException(401, detail, headers={"WWW-Authenticate": challenge})


def _key_sent(request: Request, credentials: HTTPAuthorizationCredentials | None) -> str:
    """The key in the Authorization header, or 401 saying what is missing or malformed."""
    sent = request.headers.getlist("Authorization")
    if not sent:
        raise _unauthorized(
            f"this operation needs an API key: {HOW_TO_SEND} (an operator creates keys)"
        )
    if len(sent) > 1 or credentials is None:
        raise _unauthorized(
            f"the Authorization header is malformed: {HOW_TO_SEND}, once", "invalid_request"
        )
    return credentials.credentials


async def authenticate(
    request: Request,
    response: Response,
    security_scopes: SecurityScopes,
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The caller's `Principal`: 401 without a usable key, 403 when the key holds none of the
    scopes the operation admits (`security_scopes`, from `require_scope`)."""
    secret = _key_sent(request, credentials)
    # Not the shape of any key issued: refused without a query.
    found = (
        await accounts.authenticate(services.pool, secret)
        if re.fullmatch(accounts.KEY_PATTERN, secret)
        else None
    )
    if found is None:
        raise _unauthorized(
            f"the API key sent is not a valid key: {HOW_TO_SEND}, as it was created",
            "invalid_token",
        )
    if found.revoked:
        raise _unauthorized(
            f"the API key sent was revoked at {found.revoked_at:%Y-%m-%dT%H:%M:%SZ}; "
            "ask an operator for a new one",
            "invalid_token",
        )
    if found.expired:
        raise _unauthorized(
            f"the API key sent expired at {found.expires_at:%Y-%m-%dT%H:%M:%SZ}; "
            "ask an operator for a new one",
            "invalid_token",
        )
    principal = Principal(
        found.key_id,
        found.clinic_id,
        found.scopes,
        found.rate_limit_screenings,
        found.rate_limit_reads,
    )
    request.state.principal = principal
    admitted = [Scope(scope) for scope in security_scopes.scopes]
    if admitted and not any(principal.has(scope) for scope in admitted):
        needed = " or ".join(scope.value for scope in admitted)
        held = ", ".join(sorted(scope.value for scope in principal.scopes))
        raise HTTPException(
            403,
            f"this operation needs a key with the {needed} scope; this key has: {held}",
            headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{needed}"'},
        )
    await _spend(request, response, services, principal)
    return principal


async def _spend(
    request: Request, response: Response, services: Services, principal: Principal
) -> None:
    """One request of the key's budget for this operation; 429 when it is spent."""
    budget = budget_of(request.method, request.url.path)
    settings = services.settings
    if budget is Budget.SCREENINGS:
        limit = principal.rate_limit_screenings or settings.RATE_LIMIT_SCREENINGS
    else:
        limit = principal.rate_limit_reads or settings.RATE_LIMIT_READS
    decision = await services.limiter.hit(budget, str(principal.key_id), limit)
    if decision is None:
        return  # Redis did not answer: fail open (ratelimit.py)
    if not decision.allowed:
        raise HTTPException(
            429,
            f"rate limit of this key's {budget.value} budget reached ({limit}); "
            f"retry in {decision.reset_s} s",
            headers=decision.headers,
        )
    response.headers.update(decision.headers)


def require_scope(*scopes: Scope) -> Any:
    """A dependency admitting a valid key that holds any one of `scopes` (none: any valid
    key); it gives the route the caller's `Principal`."""
    return Security(authenticate, scopes=[Scope(scope).value for scope in scopes])


AnyKey = Annotated[Principal, require_scope()]
ClinicianKey = Annotated[Principal, require_scope(Scope.CLINICIAN)]
# Reads of screenings and diagnoses: a clinician its clinic's, an operator every clinic's.
ScreeningReaderKey = Annotated[Principal, require_scope(Scope.CLINICIAN, Scope.OPERATOR)]
OperatorKey = Annotated[Principal, require_scope(Scope.OPERATOR)]


def _challenge(description: str) -> dict[str, Any]:
    return {
        "WWW-Authenticate": {
            "description": description,
            "required": True,
            "schema": {"type": "string"},
        }
    }


UNAUTHENTICATED: Final[dict[str, Any]] = {
    "model": Problem,
    "description": "No API key, a malformed Authorization header, or a key that is unknown, "
    "revoked or expired; nothing was done.",
    "headers": _challenge('`Bearer`, with `error="invalid_token"` when a key was sent.'),
}
FORBIDDEN: Final[dict[str, Any]] = {
    "model": Problem,
    "description": "The key is valid but holds none of the scopes this operation admits; "
    "nothing was done.",
    "headers": _challenge('`Bearer error="insufficient_scope", scope="<the scopes admitted>"`.'),
}


def required_scopes(dependant: Dependant) -> list[str] | None:
    """The scopes an operation admits, as its `authenticate` dependencies were declared (empty:
    any valid key); None when it asks for no key."""
    found: list[str] | None = None
    stack = [dependant]
    while stack:
        current = stack.pop()
        if current.call is authenticate:
            scopes = [*(current.parent_oauth_scopes or []), *(current.own_oauth_scopes or [])]
            found = [*(found or []), *(scope for scope in scopes if scope not in (found or []))]
        stack.extend(current.dependencies)
    return found


def document(router: APIRouter) -> APIRouter:
    """Add 401 to each operation of the router that asks for a key, and 403 to each that
    admits only some scopes, in OpenAPI."""
    for route in router.routes:
        if isinstance(route, APIRoute):
            scopes = required_scopes(route.dependant)
            if scopes is None:
                continue
            route.responses.setdefault(401, UNAUTHENTICATED)
            route.responses.setdefault(429, TOO_MANY_REQUESTS)
            if scopes:
                route.responses.setdefault(403, FORBIDDEN)
    return router
