"""The gateway's response bodies, as documented in OpenAPI."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from uuid import UUID

from pydantic import BaseModel, Field

from skinscreen.core.clinical import ClinicalInput


class ScreeningStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


TERMINAL = frozenset({ScreeningStatus.DONE, ScreeningStatus.FAILED})


class Links(BaseModel):
    self: str = Field(description="Where to read this screening.")


class ScreeningAccepted(BaseModel):
    id: UUID
    status: ScreeningStatus = Field(description="Always `queued` on acceptance.")
    links: Links


class ScreeningResult(BaseModel):
    cancer_probability: float = Field(ge=0.0, le=1.0, description="P(skin cancer) from the model.")
    suspicious: bool = Field(description="cancer_probability >= threshold: refer to a specialist.")
    threshold: float = Field(description="The model's decision threshold, tuned for recall.")
    model_version: str = Field(description="Version of the published model that answered.")


class Screening(BaseModel):
    id: UUID
    status: ScreeningStatus
    clinical: ClinicalInput
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None = Field(description="When it reached done or failed.")
    result: ScreeningResult | None = Field(description="Present once status is done.")
    failure_reason: str | None = Field(description="Present once status is failed.")
    links: Links


class ScreeningPage(BaseModel):
    items: list[Screening] = Field(description="Newest first.")
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null at the end."
    )


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="Where: e.g. ['body', 'clinical', 'region'].")
    msg: str = Field(description="What was wrong and what is allowed.")
    type: str = Field(description="A stable error code.")


class ValidationProblem(BaseModel):
    detail: list[FieldError]


class Problem(BaseModel):
    detail: str


class CheckResult(BaseModel):
    ok: bool
    detail: str


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, CheckResult]
