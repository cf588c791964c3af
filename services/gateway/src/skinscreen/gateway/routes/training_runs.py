"""/v1/training-runs: start a retraining run, follow its progress, cancel it."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Final
from uuid import UUID

from fastapi import APIRouter, Body, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from skinscreen.runtime import training_runs
from skinscreen.runtime.training_runs import REQUESTS, TrainingRequest, parse_training_request

from .. import audited
from ..audited import Action
from ..auth import Scope, require_scope
from ..deps import ServicesDep
from ..schemas import (
    UNPARSABLE_BODY,
    FieldError,
    Problem,
    Text,
    TrainingRun,
    TrainingRunAccepted,
    TrainingRunLinks,
    TrainingRunPage,
    ValidationProblem,
)

logger = logging.getLogger(__name__)

PREFIX: Final = "/v1/training-runs"

# Every operation, reads too: operators only.
router = APIRouter(prefix=PREFIX, tags=["training"], dependencies=[require_scope(Scope.OPERATOR)])


def _links(run_id: UUID) -> TrainingRunLinks:
    return TrainingRunLinks(self=f"{PREFIX}/{run_id}")


def _run(row: dict[str, Any]) -> TrainingRun:
    return TrainingRun(**row, links=_links(row["id"]))


def _training_request(body: dict[str, Any]) -> TrainingRequest:
    """The request of the model the body names, checked as a body model is: each problem is
    located at its field (["body", "epochs"]), not under the name of the model's request."""
    try:
        return parse_training_request(body)
    except ValidationError as error:
        raise RequestValidationError(
            [
                {**problem, "loc": ("body", *problem["loc"])}
                for problem in error.errors(include_url=False)
            ],
            body=body,
        ) from None


# The body is validated by the request of the model it names, so it is documented as one of them.
_REQUEST_BODY: Final = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"oneOf": [model.model_json_schema() for model in REQUESTS.values()]}
            }
        },
    }
}


@router.post(
    "",
    status_code=202,
    response_model=TrainingRunAccepted,
    summary="Start a training run on the trainer's queue, with the recipe of the model it names",
    openapi_extra=_REQUEST_BODY,
    responses={
        202: {"description": "Queued; the Location header says where to follow it."},
        422: {
            "model": ValidationProblem,
            "description": "One entry per bad field (e.g. a model without a recipe, an unknown "
            "backbone, lambda outside (0, 1), zero epochs, a data source that does not exist or "
            "is not in the layout the model's recipe reads); nothing is queued.",
        },
        503: {"model": Problem, "description": "The training queue could not take the run."},
        **UNPARSABLE_BODY,
    },
)
async def create_training_run(
    body: Annotated[dict[str, Any], Body(description="The fields of the model's request.")],
    response: Response,
    services: ServicesDep,
    http_request: Request,
    requested_by: Annotated[
        Text, Query(min_length=1, max_length=100, description="Who asks; kept with the run.")
    ] = "api",
) -> TrainingRunAccepted:
    request = _training_request(body)
    data_dir = services.settings.TRAINING_DATA_DIR
    problems = await run_in_threadpool(training_runs.data_source_problems, request, data_dir)
    if problems:
        raise HTTPException(
            422,
            detail=[
                FieldError(
                    loc=["body", "data_sources", index], msg=message, type="data_source_missing"
                ).model_dump()
                for index, message in problems
            ],
        )
    try:
        run_id = await training_runs.create_run(
            services.pool, services.celery, request, requested_by
        )
    except Exception as exc:
        logger.exception("could not enqueue a training run")
        raise HTTPException(503, "the training queue is unavailable; try again later") from exc
    await audited.record(
        http_request,
        services.pool,
        Action.TRAINING_RUN_REQUESTED,
        run_id,
        requested_by=requested_by,
    )
    links = _links(run_id)
    response.headers["Location"] = links.self
    return TrainingRunAccepted(id=run_id, status="queued", links=links)


@router.get(
    "/{run_id}",
    response_model=TrainingRun,
    summary="A run's status, progress, and once done its metrics and candidate version",
    responses={404: {"model": Problem, "description": "No run with this id."}},
)
async def read_training_run(run_id: UUID, services: ServicesDep) -> TrainingRun:
    row = await training_runs.get_run(services.pool, run_id)
    if row is None:
        raise HTTPException(404, f"no training run with id {run_id}")
    return _run(row)


@router.get("", response_model=TrainingRunPage, summary="Training runs, newest first")
async def list_training_runs(
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=100, description="How many.")] = 20,
) -> TrainingRunPage:
    rows = await services.pool.fetch(
        f"SELECT {training_runs.RUN_COLUMNS} FROM training_runs"
        " ORDER BY created_at DESC, id DESC LIMIT $1",
        limit,
    )
    return TrainingRunPage(items=[_run(dict(row)) for row in rows])


@router.post(
    "/{run_id}/cancel",
    response_model=TrainingRun,
    summary="Cancel a run: a queued one at once, a running one at its next epoch",
    responses={
        404: {"model": Problem, "description": "No run with this id."},
        409: {"model": Problem, "description": "The run already finished."},
    },
)
async def cancel_training_run(run_id: UUID, services: ServicesDep, request: Request) -> TrainingRun:
    row = await training_runs.request_cancel(services.pool, run_id)
    if row is None:
        raise HTTPException(404, f"no training run with id {run_id}")
    if row["status"] in training_runs.FINISHED and row["status"] != "cancelled":
        raise HTTPException(409, f"training run {run_id} already {row['status']}")
    await audited.record(request, services.pool, Action.TRAINING_RUN_CANCELLED, run_id)
    return _run(row)
