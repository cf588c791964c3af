"""/v1/screenings: submit a photo with its clinical answers, read results, list them."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from datetime import datetime
from typing import Annotated, Final, cast
from uuid import UUID, uuid4

import asyncpg
from fastapi import (
    APIRouter,
    File,
    Form,
    Header,
    HTTPException,
    Query,
    Request,
    Response,
    UploadFile,
)
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import FormData

from skinscreen.core.clinical import ClinicalInput
from skinscreen.core.pad_ufes import DIAGNOSES
from skinscreen.runtime import screenings
from skinscreen.runtime.blobs import BlobStore
from skinscreen.runtime.queue import ScreeningTask, enqueue_screening

from .. import audited
from ..audited import Action
from ..auth import ClinicianKey, Scope, ScreeningReaderKey
from ..deps import ServicesDep
from ..errors import FIELDS as CLINICAL_FIELDS
from ..errors import OBJECT_DESCRIPTION, clinical_errors
from ..images import ALLOWED_DESCRIPTION, CheckedImage, RejectedImageError, check_image
from ..metadata import Stripped, stored_photo
from ..schemas import (
    TERMINAL,
    UNPARSABLE_BODY,
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
    Text,
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


ERASED: Final[dict[int | str, dict[str, object]]] = {
    410: {
        "model": Problem,
        "description": "The screening was erased (DELETE): its photo, clinical answers and "
        "diagnosis are gone.",
    }
}


def _gone(screening_id: UUID, erased_at: object) -> HTTPException:
    return HTTPException(410, f"screening {screening_id} was erased at {erased_at}")


def _unprocessable(problems: list[FieldError]) -> HTTPException:
    return HTTPException(422, detail=[problem.model_dump() for problem in problems])


IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
REPLAYED_HEADER: Final = "Idempotent-Replayed"
IDEMPOTENCY_KEY_MAX: Final = 128
# The same pattern is a CHECK on screenings.idempotency_key (migration 0008).
IDEMPOTENCY_KEY_PATTERN: Final = rf"^[A-Za-z0-9._:-]{{1,{IDEMPOTENCY_KEY_MAX}}}$"
IDEMPOTENCY_KEY_ALLOWED: Final = (
    f"1 to {IDEMPOTENCY_KEY_MAX} characters from A-Z, a-z, 0-9 and . _ : - (a UUID fits)"
)
IDEMPOTENCY_DESCRIPTION: Final = (
    "Makes the submission safe to retry: a request sent again with the same key and the same "
    "clinical answers, model and photo bytes gets the screening the first one created (the "
    f"same 202 answer, with `{REPLAYED_HEADER}: true`) instead of a second screening, however "
    "many copies arrive at once; the same key with anything else is refused (422). "
    f"{IDEMPOTENCY_KEY_ALLOWED}; one key per screening, shared by every client of this "
    "service, so generate it at random. A key lives as long as its screening; it is free again "
    "only if the first request failed (nothing was created)."
)


def _idempotency_key(request: Request, key: str | None) -> str | None:
    """The request's Idempotency-Key, checked: sent once, in the allowed length and charset."""
    sent = request.headers.getlist(IDEMPOTENCY_HEADER)
    if len(sent) > 1:
        raise _unprocessable(
            [
                FieldError(
                    loc=["header", IDEMPOTENCY_HEADER],
                    msg=f"{IDEMPOTENCY_HEADER} sent {len(sent)} times; send it at most once",
                    type="duplicate_header",
                )
            ]
        )
    if key is None or re.fullmatch(IDEMPOTENCY_KEY_PATTERN, key):
        return key
    shown = f" (got {len(key)} characters)" if len(key) > IDEMPOTENCY_KEY_MAX else ""
    raise _unprocessable(
        [
            FieldError(
                loc=["header", IDEMPOTENCY_HEADER],
                msg=f"{IDEMPOTENCY_HEADER}: not a valid key{shown}; allowed: "
                f"{IDEMPOTENCY_KEY_ALLOWED}",
                type="idempotency_key_invalid",
            )
        ]
    )


def _check_form_parts(form: FormData) -> None:
    """Only image, clinical and model, each at most once (otherwise the last would win)."""
    names = [name for name, _ in form.multi_items()]
    unknown = sorted(set(names) - FORM_FIELDS)
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
    repeated = sorted(name for name in FORM_FIELDS if names.count(name) > 1)
    if repeated:
        raise _unprocessable(
            [
                FieldError(
                    loc=["body", name],
                    msg=f"form part {name!r} sent {names.count(name)} times; send each of "
                    "image, clinical and model at most once",
                    type="duplicate_part",
                )
                for name in repeated
            ]
        )


def _repeated_fields(text: str) -> dict[str, int]:
    """The clinical fields a JSON text names more than once, with how often (JSON allows it;
    json.loads and pydantic would keep the last silently)."""
    counts: dict[str, int] = {}

    def pairs(items: list[tuple[str, object]]) -> dict[str, object]:
        for name, _ in items:
            if name in CLINICAL_FIELDS:
                counts[name] = counts.get(name, 0) + 1
        return dict(items)

    try:
        json.loads(text, object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        return {}  # not JSON: validation says so
    return {name: count for name, count in counts.items() if count > 1}


def _clinical_input(text: str) -> ClinicalInput:
    repeated = _repeated_fields(text)
    if repeated:
        raise _unprocessable(
            [
                FieldError(
                    loc=["body", "clinical", name],
                    msg=f"{name} appears {count} times in clinical; each field at most once "
                    f"({OBJECT_DESCRIPTION})",
                    type="duplicate_key",
                )
                for name, count in sorted(repeated.items())
            ]
        )
    try:
        # Strict: "yes" or 1 is not a symptom answer; only true, false or null are.
        return ClinicalInput.model_validate_json(text, strict=True)
    except ValidationError as exc:
        raise _unprocessable(clinical_errors(exc)) from exc


def _request_sha256(clinical: ClinicalInput | None, model: str | None, image_sha256: str) -> str:
    """What a request asks for, as one hash: the answers (not their spelling), the model part as
    sent (absent: null) and the photo's bytes."""
    asked = {
        "clinical": None if clinical is None else clinical.model_dump(mode="json"),
        "model": model,
        "image_sha256": image_sha256,
    }
    return hashlib.sha256(json.dumps(asked, sort_keys=True).encode()).hexdigest()


def _accepted(response: Response, screening_id: UUID) -> ScreeningAccepted:
    links = _link(screening_id)
    response.headers["Location"] = links.self
    return ScreeningAccepted(id=screening_id, status=ScreeningStatus.QUEUED, links=links)


def _replay(
    response: Response, key: str, keyed: screenings.Keyed, request_sha256: str
) -> ScreeningAccepted:
    """The first request's answer again, or 422 when the key came with another request."""
    if keyed.request_sha256 != request_sha256:
        raise _unprocessable(
            [
                FieldError(
                    loc=["header", IDEMPOTENCY_HEADER],
                    msg=f"{IDEMPOTENCY_HEADER} {key!r} was already used for another request "
                    "(other clinical answers, model or photo); a key stands for one screening: "
                    "send a new key for a new screening",
                    type="idempotency_key_reused",
                )
            ]
        )
    response.headers[REPLAYED_HEADER] = "true"
    return _accepted(response, keyed.screening_id)


@router.post(
    "",
    status_code=202,
    response_model=ScreeningAccepted,
    summary="Submit a lesion photo and the clinical answers for screening",
    responses={
        202: {
            "description": "Accepted and queued; the Location header says where to read it. "
            f"A retry with the same {IDEMPOTENCY_HEADER} and request gets the first answer again.",
            "headers": {
                "Location": {
                    "description": "Where to read the screening.",
                    "required": True,
                    "schema": {"type": "string"},
                },
                REPLAYED_HEADER: {
                    "description": f"`true` when this answers a retry ({IDEMPOTENCY_HEADER} "
                    "seen before with the same request): the screening was created before, "
                    "not now. Absent otherwise.",
                    "required": False,
                    "schema": {"type": "string", "enum": ["true"]},
                },
            },
        },
        **UNPARSABLE_BODY,
        413: {"model": Problem, "description": "Over the upload size or pixel limit."},
        415: {"model": Problem, "description": f"Not an image; allowed: {ALLOWED_DESCRIPTION}."},
        422: {
            "model": ValidationProblem,
            "description": "One entry per bad clinical field or form part (unknown, or sent "
            "twice), a field repeated in the clinical JSON, a corrupt image, or an "
            f"{IDEMPOTENCY_HEADER} that is malformed or was used for another request.",
        },
        503: {"model": Problem, "description": "The queue could not take the screening."},
    },
)
async def create_screening(
    request: Request,
    response: Response,
    services: ServicesDep,
    principal: ClinicianKey,
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
        Text | None,
        Form(
            description="The model to screen with: a name with an active version, e.g. "
            "skinscreen-dermoscopy (image only); default: the service's MODEL_NAME.",
            examples=["skinscreen-fusion"],
        ),
    ] = None,
    # Checked in the body, for a message that says what is allowed; the schema documents it.
    idempotency_key: Annotated[
        str | None,
        Header(
            alias=IDEMPOTENCY_HEADER,
            description=IDEMPOTENCY_DESCRIPTION,
            json_schema_extra={
                "minLength": 1,
                "maxLength": IDEMPOTENCY_KEY_MAX,
                "pattern": IDEMPOTENCY_KEY_PATTERN,
            },
            examples=["3f0c9a52-8d1e-4b7a-9c57-2b1f6a0e4d11"],
        ),
    ] = None,
) -> ScreeningAccepted:
    settings = services.settings
    clinic_id = principal.clinic_id
    assert clinic_id is not None, "a clinician key belongs to a clinic"
    key = _idempotency_key(request, idempotency_key)
    form = await request.form()
    _check_form_parts(form)
    clinical_input = None if clinical is None else _clinical_input(clinical)
    # From the form itself: FastAPI reads an empty part as absent, but `model=` names no model.
    sent_model = str(form["model"]) if "model" in form else None
    name = settings.MODEL_NAME if sent_model is None else sent_model

    data = await image.read()
    if len(data) > settings.MAX_UPLOAD_BYTES:
        raise HTTPException(
            413, f"image: {len(data)} bytes; at most {settings.MAX_UPLOAD_BYTES} allowed"
        )
    image_sha256 = hashlib.sha256(data).hexdigest()
    request_sha256 = None
    if key is not None:
        # A retry is answered as the first request was, whatever has changed since (a model
        # retired, a limit lowered): the screening exists.
        request_sha256 = _request_sha256(clinical_input, sent_model, image_sha256)
        keyed = await screenings.by_idempotency_key(services.pool, key, clinic_id)
        if keyed is not None:
            return _replay(response, key, keyed, request_sha256)
    served = await _served_model(services, name, clinical_input)
    screening_id = uuid4()
    try:
        # One hop to a worker thread for the check, the stripping and the write, not three.
        checked, stored, blob_key = await run_in_threadpool(
            _store_photo, services.blobs, screening_id, data, settings.MAX_IMAGE_PIXELS
        )
    except RejectedImageError as exc:
        raise HTTPException(exc.status, str(exc), headers=exc.headers) from exc
    try:
        created = await screenings.create(
            services.pool,
            screening_id,
            model_name=served.name,
            clinical=None if clinical_input is None else clinical_input.model_dump(mode="json"),
            image_key=blob_key,
            image_format=checked.format,
            # The stored file's (the blob can be checked against them); the upload's sha256
            # only identifies a retried request (request_sha256).
            image_bytes=len(stored.data),
            image_sha256=stored.sha256,
            clinic_id=clinic_id,
            idempotency_key=key,
            request_sha256=request_sha256,
        )
    except BaseException:
        services.blobs.delete(blob_key)
        raise
    if not created:
        # A concurrent request with the same key created its screening first.
        services.blobs.delete(blob_key)
        assert key is not None
        assert request_sha256 is not None
        keyed = await screenings.by_idempotency_key(services.pool, key, clinic_id)
        if keyed is None:
            # ... and its task was refused by the queue meanwhile, so it removed it again.
            raise HTTPException(503, "the screening queue is unavailable; try again later")
        return _replay(response, key, keyed, request_sha256)
    # The id and the model only: the worker reads the photo's key and the answers from the row.
    task = ScreeningTask(screening_id=screening_id, model_name=served.name)
    try:
        await run_in_threadpool(enqueue_screening, services.celery, task)
    except Exception as exc:
        # Not queued means not accepted: leave nothing behind that no worker will ever finish.
        # That frees the idempotency key too: a retry with it tries again.
        logger.exception("could not enqueue screening %s", screening_id)
        await screenings.delete(services.pool, screening_id)
        services.blobs.delete(blob_key)
        raise HTTPException(503, "the screening queue is unavailable; try again later") from exc
    await audited.record(
        request, services.pool, Action.SCREENING_CREATED, screening_id, model=served.name
    )
    return _accepted(response, screening_id)


def _store_photo(
    blobs: BlobStore, screening_id: UUID, data: bytes, max_pixels: int
) -> tuple[CheckedImage, Stripped, str]:
    """Check the upload (RejectedImageError), strip its metadata (location, device, names;
    pixels untouched) and write what is left to the blob store, under the key returned."""
    checked = check_image(data, max_pixels)
    stored = stored_photo(data, checked.format)
    blob_key = blobs.key_for(screening_id, checked.extension)
    blobs.put(blob_key, stored.data)
    return checked, stored, blob_key


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
    responses={
        404: {
            "model": Problem,
            "description": "No screening with this id that this key may see (another clinic's "
            "screening reads exactly as one that does not exist).",
        },
        **ERASED,
    },
)
async def read_screening(
    screening_id: UUID,
    services: ServicesDep,
    principal: ScreeningReaderKey,
    request: Request,
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
        row = await screenings.get(services.pool, screening_id, principal.visible_clinic)
        if row is None:
            raise HTTPException(404, f"no screening with id {screening_id}")
        if row["erased_at"] is not None:
            raise _gone(screening_id, row["erased_at"])
        return row

    if wait <= 0:
        row = await fetch()
        await audited.record(request, services.pool, Action.SCREENING_READ, screening_id)
        return _screening(row)
    # Subscribe before reading, so a result written in between still wakes us; one read
    # answers 404 before anything is audited and says whether there is anything to wait for.
    async with services.finished.watch(screening_id) as finished:
        row = await fetch()
        await audited.record(
            request, services.pool, Action.SCREENING_WAITED, screening_id, wait=wait
        )
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
    summary="List screenings, newest first, with cursor pagination: a clinician's key lists "
    "its clinic's, an operator's every clinic's",
    responses={
        422: {"model": ValidationProblem, "description": "Bad limit, cursor or model name."}
    },
)
async def list_screenings(
    services: ServicesDep,
    principal: ScreeningReaderKey,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 20,
    cursor: Annotated[
        str | None, Query(description="next_cursor of the previous page; omit for the first.")
    ] = None,
    model: Annotated[
        Text | None, Query(description="Only the screenings sent to this model.")
    ] = None,
    clinic: Annotated[
        UUID | None,
        Query(
            description="Only this clinic's screenings (for operators; a clinician's key sees "
            "its own clinic's only, whatever this says)."
        ),
    ] = None,
) -> ScreeningPage:
    visible = principal.visible_clinic
    if visible is not None and clinic not in (None, visible):
        return ScreeningPage(items=[], next_cursor=None)
    try:
        page = await screenings.list_page(services.pool, limit, cursor, model, visible or clinic)
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
    await audited.record(
        request,
        services.pool,
        Action.SCREENINGS_LISTED,
        None,
        count=len(page.rows),
        clinic=None if (visible or clinic) is None else str(visible or clinic),
        model=model,
        ids=[str(row["id"]) for row in page.rows],
    )
    return ScreeningPage(items=[_screening(row) for row in page.rows], next_cursor=page.next_cursor)


class ScreeningErased(BaseModel):
    id: UUID
    erased_at: datetime
    forced_over: list[str] = Field(
        description="Published model versions whose training could have used this screening, "
        "erased anyway (?force=true); empty otherwise."
    )


@router.delete(
    "/{screening_id}",
    response_model=ScreeningErased,
    summary="Erase a screening: its photo, clinical answers and diagnosis; a tombstone stays",
    responses={
        403: {
            "model": Problem,
            "description": "?force=true from a key without the operator scope.",
        },
        404: {"model": Problem, "description": "No screening with this id that this key may see."},
        409: {
            "model": Problem,
            "description": "A published model's training run could have used this screening "
            "(its diagnosis was recorded before the run started); an operator may erase it "
            "anyway with ?force=true. Nothing was erased.",
        },
        **ERASED,
    },
)
async def erase_screening(
    screening_id: UUID,
    services: ServicesDep,
    principal: ScreeningReaderKey,
    request: Request,
    force: Annotated[
        bool,
        Query(
            description="Operators only: erase even a screening a published model could have "
            "been trained on (that model's card and validation can then not be reproduced)."
        ),
    ] = False,
) -> ScreeningErased:
    if force and not principal.has(Scope.OPERATOR):
        raise HTTPException(
            403, "force: only a key with the operator scope may force an erasure; leave it out"
        )
    async with services.pool.acquire() as connection, connection.transaction():
        erasure = await screenings.erase(
            connection, screening_id, principal.visible_clinic, force=force
        )
        if not erasure.found:
            raise HTTPException(404, f"no screening with id {screening_id}")
        if erasure.erased_before:
            raise _gone(screening_id, erasure.erased_at)
        if not erasure.done:
            versions = ", ".join(erasure.trained_on)
            raise HTTPException(
                409,
                f"not erased: published model versions ({versions}) were trained after this "
                "screening's diagnosis was recorded and could have learned from it; erasing it "
                "breaks their reproducibility (an operator may erase it with ?force=true)",
            )
        await audited.record(
            request,
            connection,
            Action.SCREENING_ERASED,
            screening_id,
            forced_over=list(erasure.trained_on),
        )
    assert erasure.image_key is not None
    assert erasure.erased_at is not None
    # After commit: a crash in between leaves an orphan file, never a row without its photo.
    await run_in_threadpool(services.blobs.delete, erasure.image_key)
    return ScreeningErased(
        id=screening_id, erased_at=erasure.erased_at, forced_over=list(erasure.trained_on)
    )
