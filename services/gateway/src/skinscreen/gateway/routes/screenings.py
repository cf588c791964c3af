"""/v1/screenings: submit a photo with its clinical answers, read results, list them."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Annotated, Final, cast
from uuid import UUID, uuid4

import asyncpg
from fastapi import APIRouter, File, Form, HTTPException, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from skinscreen.core.clinical import ClinicalInput
from skinscreen.core.pad_ufes import DIAGNOSES
from skinscreen.runtime import screenings
from skinscreen.runtime.queue import ScreeningTask, enqueue_screening

from ..deps import ServicesDep
from ..errors import OBJECT_DESCRIPTION, clinical_errors
from ..images import ALLOWED_DESCRIPTION, RejectedImageError, check_image
from ..schemas import (
    TERMINAL,
    DiagnosisProbability,
    FieldError,
    Links,
    PredictedDiagnosis,
    Problem,
    Screening,
    ScreeningAccepted,
    ScreeningPage,
    ScreeningResult,
    ScreeningStatus,
    ValidationProblem,
)
from ..served_models import ServedModel, UnknownModelError

logger = logging.getLogger(__name__)

PREFIX: Final = "/v1/screenings"
FORM_FIELDS: Final = frozenset({"image", "clinical", "model"})

router = APIRouter(prefix=PREFIX, tags=["screenings"])


def _link(screening_id: UUID) -> Links:
    return Links(self=f"{PREFIX}/{screening_id}")


def _result(row: asyncpg.Record) -> ScreeningResult:
    reasons = row["reasons"]
    if reasons is None:
        # Written by a worker of the release before the melanoma rule (a rolling upgrade):
        # it decided by the cancer threshold alone.
        reasons = ["cancer_probability"] if row["suspicious"] else []
    probabilities = row["diagnosis_probabilities"]
    return ScreeningResult(
        cancer_probability=row["cancer_probability"],
        suspicious=row["suspicious"],
        reasons=reasons,
        threshold=row["threshold"],
        melanoma_threshold=row["melanoma_threshold"],
        diagnoses=None
        if probabilities is None
        else [
            DiagnosisProbability(
                diagnosis=cast(PredictedDiagnosis, name), probability=probabilities[name]
            )
            for name in DIAGNOSES
        ],
        model_version=row["model_version"],
    )


def _screening(row: asyncpg.Record) -> Screening:
    result = _result(row) if row["status"] == ScreeningStatus.DONE else None
    return Screening(
        id=row["id"],
        status=row["status"],
        model=row["model_name"],
        clinical=None if row["clinical"] is None else ClinicalInput.model_validate(row["clinical"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        completed_at=row["completed_at"],
        result=result,
        failure_reason=row["failure_reason"],
        links=_link(row["id"]),
    )


def _unprocessable(problems: list[FieldError]) -> HTTPException:
    return HTTPException(422, detail=[problem.model_dump() for problem in problems])


@router.post(
    "",
    status_code=202,
    response_model=ScreeningAccepted,
    summary="Submit a lesion photo and the clinical answers for screening",
    responses={
        202: {"description": "Accepted and queued; the Location header says where to read it."},
        413: {"model": Problem, "description": "Over the upload size or pixel limit."},
        415: {"model": Problem, "description": f"Not an image; allowed: {ALLOWED_DESCRIPTION}."},
        422: {
            "model": ValidationProblem,
            "description": "One entry per bad clinical field or form part, or a corrupt image.",
        },
        503: {"model": Problem, "description": "The queue could not take the screening."},
    },
)
async def create_screening(
    request: Request,
    response: Response,
    services: ServicesDep,
    image: Annotated[
        UploadFile,
        File(description=f"The lesion photo: {ALLOWED_DESCRIPTION}; EXIF orientation is applied."),
    ],
    clinical: Annotated[
        str | None,
        Form(
            description=f"The clinical answers: {OBJECT_DESCRIPTION}. Required by models that "
            "take them (the default); optional for an image-only model.",
            examples=[
                '{"age": 62, "region": "FACE", "itch": true, "grew": null, "hurt": false,'
                ' "changed": false, "bleed": true, "elevation": true}'
            ],
        ),
    ] = None,
    # Declared for the OpenAPI schema; read from the form itself (see below).
    model: Annotated[
        str | None,
        Form(
            description="The model to screen with: a name with an active version, e.g. "
            "skinscreen-dermoscopy (image only); default: the service's MODEL_NAME.",
            examples=["skinscreen-fusion"],
        ),
    ] = None,
) -> ScreeningAccepted:
    settings = services.settings
    form = await request.form()
    unknown = sorted(set(form.keys()) - FORM_FIELDS)
    if unknown:
        raise _unprocessable(
            [
                FieldError(
                    loc=["body", name],
                    msg=f"unknown form part {name!r}; allowed parts: image, clinical, model",
                    type="extra_forbidden",
                )
                for name in unknown
            ]
        )
    clinical_input = None
    if clinical is not None:
        try:
            # Strict: "yes" or 1 is not a symptom answer; only true, false or null are.
            clinical_input = ClinicalInput.model_validate_json(clinical, strict=True)
        except ValidationError as exc:
            raise _unprocessable(clinical_errors(exc)) from exc
    # From the form itself: FastAPI reads an empty part as absent, but `model=` names no model.
    name = str(form["model"]) if "model" in form else settings.MODEL_NAME
    served = await _served_model(services, name, clinical_input)

    data = await image.read()
    if len(data) > settings.MAX_UPLOAD_BYTES:
        raise HTTPException(
            413, f"image: {len(data)} bytes; at most {settings.MAX_UPLOAD_BYTES} allowed"
        )
    try:
        checked = await run_in_threadpool(check_image, data, settings.MAX_IMAGE_PIXELS)
    except RejectedImageError as exc:
        raise HTTPException(exc.status, str(exc)) from exc

    screening_id = uuid4()
    key = services.blobs.key_for(screening_id, checked.extension)
    await run_in_threadpool(services.blobs.put, key, data)
    try:
        await screenings.create(
            services.pool,
            screening_id,
            model_name=served.name,
            clinical=None if clinical_input is None else clinical_input.model_dump(mode="json"),
            image_key=key,
            image_format=checked.format,
            image_bytes=len(data),
            image_sha256=hashlib.sha256(data).hexdigest(),
        )
    except BaseException:
        services.blobs.delete(key)
        raise
    task = ScreeningTask(
        screening_id=screening_id, image_key=key, clinical=clinical_input, model_name=served.name
    )
    try:
        await run_in_threadpool(enqueue_screening, services.celery, task)
    except Exception as exc:
        # Not queued means not accepted: leave nothing behind that no worker will ever finish.
        logger.exception("could not enqueue screening %s", screening_id)
        await screenings.delete(services.pool, screening_id)
        services.blobs.delete(key)
        raise HTTPException(503, "the screening queue is unavailable; try again later") from exc

    links = _link(screening_id)
    response.headers["Location"] = links.self
    return ScreeningAccepted(id=screening_id, status=ScreeningStatus.QUEUED, links=links)


async def _served_model(
    services: ServicesDep, name: str, clinical: ClinicalInput | None
) -> ServedModel:
    """The model a screening goes to, once it is known to be served and given what it needs."""
    try:
        served = await services.models.get(name)
    except UnknownModelError as exc:
        raise _unprocessable(
            [FieldError(loc=["body", "model"], msg=str(exc), type="unknown_model")]
        ) from exc
    if clinical is None and served.takes_clinical:
        raise _unprocessable(
            [
                FieldError(
                    loc=["body", "clinical"],
                    msg=f"required: model {served.name} takes the clinical answers "
                    f"({OBJECT_DESCRIPTION}); only an image-only model, such as "
                    "skinscreen-dermoscopy, screens a photo alone",
                    type="missing",
                )
            ]
        )
    return served


@router.get(
    "/{screening_id}",
    response_model=Screening,
    summary="Read a screening; with ?wait=N, hold until it finishes or N seconds pass",
    responses={404: {"model": Problem, "description": "No screening with this id."}},
)
async def read_screening(
    screening_id: UUID,
    services: ServicesDep,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=30,
            description="Seconds to hold the request until the screening is done or failed.",
        ),
    ] = 0,
) -> Screening:
    async def fetch() -> asyncpg.Record:
        row = await screenings.get(services.pool, screening_id)
        if row is None:
            raise HTTPException(404, f"no screening with id {screening_id}")
        return row

    if wait <= 0:
        return _screening(await fetch())
    # Subscribe before reading, so a result written in between still wakes us.
    async with services.finished.watch(screening_id) as finished:
        row = await fetch()
        if row["status"] in TERMINAL:
            return _screening(row)
        try:
            await asyncio.wait_for(finished.wait(), timeout=min(wait, services.settings.MAX_WAIT_S))
        except TimeoutError:
            return _screening(row)
    return _screening(await fetch())


@router.get(
    "",
    response_model=ScreeningPage,
    summary="List screenings, newest first, with cursor pagination",
    responses={422: {"model": ValidationProblem, "description": "Bad limit or cursor."}},
)
async def list_screenings(
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 20,
    cursor: Annotated[
        str | None, Query(description="next_cursor of the previous page; omit for the first.")
    ] = None,
    model: Annotated[
        str | None, Query(description="Only the screenings sent to this model.")
    ] = None,
) -> ScreeningPage:
    try:
        page = await screenings.list_page(services.pool, limit, cursor, model)
    except screenings.InvalidCursorError as exc:
        raise _unprocessable(
            [
                FieldError(
                    loc=["query", "cursor"],
                    msg="cursor is not one this API issued; pass next_cursor from a previous page",
                    type="cursor_invalid",
                )
            ]
        ) from exc
    return ScreeningPage(items=[_screening(row) for row in page.rows], next_cursor=page.next_cursor)
