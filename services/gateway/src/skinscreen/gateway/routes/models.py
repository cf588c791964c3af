"""/v1/models: the registry for operators: versions, activation history, promote, rollback."""

from __future__ import annotations

from typing import Final

from fastapi import APIRouter, HTTPException, Request

from skinscreen.core.card import ModelIntegrityError
from skinscreen.runtime import registry
from skinscreen.runtime.artifacts import ArtifactNotFoundError

from .. import audited
from ..audited import Action
from ..auth import Scope, require_scope
from ..deps import ServicesDep
from ..schemas import (
    UNPARSABLE_BODY,
    Activation,
    ActivationList,
    ModelVersionList,
    ModelVersionOut,
    Problem,
    SwitchRequest,
    Text,
)

PREFIX: Final = "/v1/models"

router = APIRouter(prefix=PREFIX, tags=["models"])

# Reading the registry: any valid key (a clinician may look up the version that scored it).
ANY_KEY: Final = [require_scope()]
OPERATOR_ONLY: Final = [require_scope(Scope.OPERATOR)]

SWITCH_ERRORS: Final[dict[int | str, dict[str, object]]] = {
    **UNPARSABLE_BODY,
    404: {"model": Problem, "description": "No such model or version."},
    409: {
        "model": Problem,
        "description": "The artifact is missing or fails its checksum, or there is nothing to "
        "roll back to; the active version is unchanged.",
    },
}


def _out(version: registry.ModelVersion) -> ModelVersionOut:
    return ModelVersionOut(
        name=version.name,
        version=version.version,
        status=version.status,
        artifact_uri=version.artifact_uri,
        sha256=version.sha256,
        created_at=version.created_at,
        promoted_by=version.promoted_by,
        promoted_at=version.promoted_at,
        training_run_id=version.training_run_id,
        cross_validation=version.card.get("cross_validation", {}),
        decision_threshold=version.card["decision_threshold"]["value"],
        # Cards from before the melanoma rule carry neither field: one output, no rule.
        melanoma_threshold=(version.card.get("melanoma_threshold") or {}).get("value"),
        outputs=version.card.get("outputs", ["cancer_probability"]),
    )


@router.get(
    "/{name}/versions",
    dependencies=ANY_KEY,
    response_model=ModelVersionList,
    summary="Every registered version of a model, newest first",
    responses={404: {"model": Problem, "description": "No version of this model exists."}},
)
async def list_versions(name: Text, services: ServicesDep) -> ModelVersionList:
    versions = await registry.list_versions(services.pool, name)
    if not versions:
        raise HTTPException(404, f"no version of model {name!r} is registered")
    return ModelVersionList(items=[_out(version) for version in versions])


@router.get(
    "/{name}/versions/{version}",
    dependencies=ANY_KEY,
    response_model=ModelVersionOut,
    summary="One registered version",
    responses={404: {"model": Problem, "description": "No such version."}},
)
async def read_version(name: Text, version: Text, services: ServicesDep) -> ModelVersionOut:
    found = await registry.get_version(services.pool, name, version)
    if found is None:
        raise HTTPException(404, f"model {name!r} has no version {version!r}")
    return _out(found)


@router.get(
    "/{name}/activations",
    dependencies=ANY_KEY,
    response_model=ActivationList,
    summary="The history of the model's active version: promotions and rollbacks",
)
async def list_activations(name: Text, services: ServicesDep) -> ActivationList:
    history = await registry.activations(services.pool, name)
    return ActivationList(
        items=[
            Activation(
                version=item.version,
                previous_version=item.previous_version,
                action=item.action,
                actor=item.actor,
                reason=item.reason,
                activated_at=item.activated_at,
            )
            for item in history
        ]
    )


async def _announce(services: ServicesDep, version: registry.ModelVersion) -> None:
    # Workers also re-read the registry periodically: a lost announcement only delays them.
    await services.redis.publish(registry.ACTIVATIONS_CHANNEL, registry.activation_message(version))


@router.post(
    "/{name}/versions/{version}/promote",
    dependencies=OPERATOR_ONLY,
    response_model=ModelVersionOut,
    summary="Make a version the active one, after checking its artifact's sha256",
    responses=SWITCH_ERRORS,
)
async def promote(
    name: Text, version: Text, body: SwitchRequest, services: ServicesDep, request: Request
) -> ModelVersionOut:
    try:
        active = await registry.promote(
            services.pool, name, version, actor=body.requested_by, reason=body.reason
        )
    except registry.VersionNotFoundError as exc:
        raise HTTPException(404, str(exc)) from exc
    except (ModelIntegrityError, ArtifactNotFoundError) as exc:
        raise HTTPException(409, f"not promoted, the active version is unchanged: {exc}") from exc
    await audited.record(
        request,
        services.pool,
        Action.MODEL_PROMOTED,
        f"{name}@{active.version}",
        requested_by=body.requested_by,
    )
    await _announce(services, active)
    return _out(active)


@router.post(
    "/{name}/rollback",
    dependencies=OPERATOR_ONLY,
    response_model=ModelVersionOut,
    summary="Re-activate the version that was active before the current one was promoted",
    responses=SWITCH_ERRORS,
)
async def rollback(
    name: Text, body: SwitchRequest, services: ServicesDep, request: Request
) -> ModelVersionOut:
    try:
        active = await registry.rollback(
            services.pool, name, actor=body.requested_by, reason=body.reason
        )
    except registry.VersionNotFoundError as exc:
        raise HTTPException(404, str(exc)) from exc
    except registry.NothingToRollBackError as exc:
        raise HTTPException(409, str(exc)) from exc
    except (ModelIntegrityError, ArtifactNotFoundError) as exc:
        raise HTTPException(
            409, f"not rolled back, the active version is unchanged: {exc}"
        ) from exc
    await audited.record(
        request,
        services.pool,
        Action.MODEL_ROLLED_BACK,
        f"{name}@{active.version}",
        requested_by=body.requested_by,
    )
    await _announce(services, active)
    return _out(active)
