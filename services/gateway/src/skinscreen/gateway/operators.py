"""Operator endpoints (promote, rollback, training runs, diagnoses) behind a bearer token.

With OPERATOR_TOKEN set, those endpoints need `Authorization: Bearer <token>`;
screenings and every read stay open. Unset, they are open to anyone who
reaches the gateway, which the gateway logs at start (fine on a laptop, not
in a cluster: the overlays read the token from a Secret).
"""

from __future__ import annotations

import secrets
from typing import Annotated, Final

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .deps import ServicesDep
from .schemas import Problem

bearer = HTTPBearer(
    auto_error=False,
    description="The operator token (OPERATOR_TOKEN), for promote, rollback, training runs "
    "and diagnoses.",
)

OPERATOR_ERRORS: Final[dict[int | str, dict[str, object]]] = {
    401: {
        "model": Problem,
        "description": "No operator token, or a wrong one; nothing was changed.",
    }
}


async def require_operator(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    token = services.settings.OPERATOR_TOKEN
    if token is None:
        return
    given = "" if credentials is None else credentials.credentials
    # Constant time: how much of a guess matched must not show in the answer's timing.
    if not secrets.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise HTTPException(
            401,
            "this endpoint is for operators: send the operator token (OPERATOR_TOKEN) as "
            "'Authorization: Bearer <token>'"
            + ("" if credentials is None else "; the token sent is not it"),
            headers={"WWW-Authenticate": "Bearer"},
        )


OPERATOR_ONLY: Final = [Depends(require_operator)]
