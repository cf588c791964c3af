"""/v1/screenings/{id}/diagnosis: the confirmed diagnosis of a screened lesion, for retraining."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, HTTPException, Request, Response

from skinscreen.runtime import screenings

from .. import audited
from ..audited import Action
from ..auth import ScreeningReaderKey
from ..deps import ServicesDep
from ..schemas import UNPARSABLE_BODY, DiagnosisIn, DiagnosisOut, Problem
from .screenings import PREFIX

router = APIRouter(prefix=PREFIX, tags=["diagnoses"])


@router.post(
    "/{screening_id}/diagnosis",
    status_code=201,
    response_model=DiagnosisOut,
    summary="Record how a screened lesion was confirmed; the trainer can learn from it",
    responses={
        200: {"model": DiagnosisOut, "description": "Replaced the diagnosis recorded before."},
        201: {"description": "Recorded."},
        404: {"model": Problem, "description": "No screening with this id that this key may see."},
        **UNPARSABLE_BODY,
    },
)
async def record_diagnosis(
    screening_id: UUID,
    body: DiagnosisIn,
    response: Response,
    services: ServicesDep,
    principal: ScreeningReaderKey,
    request: Request,
) -> DiagnosisOut:
    recorded = await screenings.record_diagnosis(
        services.pool,
        screening_id,
        diagnosis=body.diagnosis.value,
        confirmed_by=body.confirmed_by.value,
        patient_id=body.patient_id,
        clinic_id=principal.visible_clinic,
    )
    if recorded is None:
        raise HTTPException(404, f"no screening with id {screening_id}")
    row, replaced = recorded
    # Which screening and that it was replaced; the diagnosis and patient id are health data.
    await audited.record(
        request, services.pool, Action.DIAGNOSIS_RECORDED, screening_id, replaced=replaced
    )
    if replaced:
        response.status_code = 200
    return DiagnosisOut(**{key: row[key] for key in DiagnosisOut.model_fields})


@router.get(
    "/{screening_id}/diagnosis",
    response_model=DiagnosisOut,
    summary="The confirmed diagnosis recorded for a screening",
    responses={404: {"model": Problem, "description": "No screening, or no diagnosis yet."}},
)
async def read_diagnosis(
    screening_id: UUID, services: ServicesDep, principal: ScreeningReaderKey, request: Request
) -> DiagnosisOut:
    row = await screenings.get_diagnosis(services.pool, screening_id, principal.visible_clinic)
    if row is None:
        raise HTTPException(404, f"no diagnosis recorded for screening {screening_id}")
    await audited.record(request, services.pool, Action.DIAGNOSIS_READ, screening_id)
    return DiagnosisOut(**row)
