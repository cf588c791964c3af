"""The gateway's response bodies, as documented in OpenAPI."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal
from uuid import UUID

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from skinscreen.core.clinical import ClinicalInput
from skinscreen.core.decision import Reason
from skinscreen.runtime.accounts import RATE_LIMIT_ALLOWED, RATE_LIMIT_PATTERN


def _without_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("contains a NUL character (\\u0000); any other text is allowed")
    return value


# Text a request carries into PostgreSQL, which cannot store NUL in text (asyncpg raised,
# and the gateway answered 500): refused as a 422 on the field instead.
Text = Annotated[str, AfterValidator(_without_nul)]


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


# The six diagnoses a model may output, in the order of its diagnosis_probabilities
# (skinscreen.core.pad_ufes.DIAGNOSES; a test pins the two together).
PredictedDiagnosis = Literal["ACK", "BCC", "MEL", "NEV", "SCC", "SEK"]


class DiagnosisProbability(BaseModel):
    diagnosis: PredictedDiagnosis = Field(
        description="ACK, BCC, MEL, NEV, SCC or SEK; BCC, MEL and SCC are the cancers."
    )
    probability: float = Field(ge=0.0, le=1.0)


class ScreeningResult(BaseModel):
    cancer_probability: float = Field(
        ge=0.0, le=1.0, description="P(skin cancer) from the model: P(BCC) + P(MEL) + P(SCC)."
    )
    suspicious: bool = Field(
        description="Refer to a specialist: cancer_probability >= threshold, or the melanoma "
        "probability >= melanoma_threshold (the model card's decision rule)."
    )
    reasons: list[Reason] = Field(
        description="The rules that fired: cancer_probability (cancer_probability >= "
        "threshold), melanoma_probability (P(MEL) >= melanoma_threshold); empty when not "
        "suspicious."
    )
    threshold: float = Field(description="The model's cancer threshold, tuned for recall.")
    melanoma_threshold: float | None = Field(
        description="The model's melanoma threshold; null for a model without one."
    )
    diagnoses: list[DiagnosisProbability] | None = Field(
        description="Each of the six diagnoses with its probability, in the order ACK, BCC, "
        "MEL, NEV, SCC, SEK; null for a model that does not output them."
    )
    model_version: str = Field(description="Version of the published model that answered.")


class Screening(BaseModel):
    id: UUID
    status: ScreeningStatus
    model: str = Field(description="The model it was sent to, e.g. skinscreen-fusion.")
    clinical: ClinicalInput | None = Field(
        description="The clinical answers; null when sent to an image-only model without them."
    )
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


# FastAPI's answer to a request body it cannot parse: JSON that is not UTF-8, multipart
# framing it cannot read. Every operation that takes a body can send it.
UNPARSABLE_BODY: Final[dict[int | str, dict[str, Any]]] = {
    400: {
        "model": Problem,
        "description": "The body cannot be parsed (not UTF-8 JSON, or broken multipart "
        "framing); nothing was changed.",
    }
}


class CheckResult(BaseModel):
    ok: bool
    detail: str


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, CheckResult]


class ModelVersionOut(BaseModel):
    """A registered model version, as operators see it."""

    model_config = ConfigDict(protected_namespaces=())

    name: str
    version: str
    status: str = Field(description="candidate, active (one per name) or retired.")
    artifact_uri: str = Field(description="Where its model.onnx and card.json are.")
    sha256: str = Field(description="sha256 of model.onnx, checked on every load.")
    created_at: datetime
    promoted_by: str | None = Field(description="Who or what last made it active.")
    promoted_at: datetime | None
    training_run_id: UUID | None = Field(description="The run that produced it, if any.")
    cross_validation: dict[str, dict[str, float]] = Field(
        description="Patient-grouped k-fold metrics at its threshold: {metric: {mean, std}}."
    )
    decision_threshold: float = Field(
        description="The cancer threshold: suspicious when cancer_probability reaches it."
    )
    melanoma_threshold: float | None = Field(
        description="Also suspicious when the melanoma probability reaches it; null for a "
        "version without a melanoma rule."
    )
    outputs: list[str] = Field(
        description="The ONNX graph's outputs: cancer_probability, and "
        "diagnosis_probabilities for a model that outputs the six diagnoses."
    )


class ModelVersionList(BaseModel):
    items: list[ModelVersionOut] = Field(description="Newest first.")


class Activation(BaseModel):
    version: str
    previous_version: str | None
    action: str = Field(description="promote or rollback.")
    actor: str
    reason: str
    activated_at: datetime


class ActivationList(BaseModel):
    items: list[Activation] = Field(description="Oldest first.")


class SwitchRequest(BaseModel):
    """Why an operator switches versions; kept in the activation history."""

    model_config = ConfigDict(extra="forbid")

    reason: Text = Field(min_length=1, max_length=500)
    requested_by: Text = Field("api", min_length=1, max_length=100, description="Who asks.")


class TrainingRunLinks(BaseModel):
    self: str


class TrainingRunAccepted(BaseModel):
    id: UUID
    status: str = Field(description="Always `queued` on acceptance.")
    links: TrainingRunLinks


class TrainingRun(BaseModel):
    id: UUID
    status: str = Field(description="queued, running, succeeded, failed or cancelled.")
    config: dict[str, Any] = Field(description="The validated training request.")
    requested_by: str
    progress: dict[str, Any] = Field(
        description="stage, and fold/folds, epoch/epochs while fitting."
    )
    cancel_requested: bool
    metrics: dict[str, Any] | None = Field(
        description="Cross-validated metrics (mean, std) once succeeded."
    )
    model_name: str
    candidate_version: str | None = Field(description="The version it published.")
    promoted: bool | None = Field(description="Whether the promotion gate made it active.")
    promotion_reason: str | None = Field(description="Why it was, or was not, promoted.")
    failure_reason: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    links: TrainingRunLinks


class TrainingRunPage(BaseModel):
    items: list[TrainingRun] = Field(description="Newest first.")


class Diagnosis(StrEnum):
    ACK = "ACK"
    BCC = "BCC"
    MEL = "MEL"
    NEV = "NEV"
    SCC = "SCC"
    SEK = "SEK"
    OTHER = "OTHER"


class Confirmation(StrEnum):
    HISTOPATHOLOGY = "histopathology"
    CLINICAL_CONSENSUS = "clinical_consensus"


class DiagnosisIn(BaseModel):
    """A confirmed diagnosis of a screened lesion."""

    model_config = ConfigDict(extra="forbid")

    diagnosis: Diagnosis = Field(
        description="A PAD-UFES-20 label (BCC, SCC, MEL are cancers; ACK, NEV, SEK are not) "
        "or OTHER (kept, but not trained on: its cancer status is not known)."
    )
    confirmed_by: Confirmation
    patient_id: Text | None = Field(
        None,
        min_length=1,
        max_length=100,
        description="A pseudonymous patient id, so one patient's lesions stay in one fold; "
        "absent: the screening is its own patient.",
    )


class DiagnosisOut(BaseModel):
    screening_id: UUID
    diagnosis: Diagnosis
    confirmed_by: Confirmation
    patient_id: str
    recorded_at: datetime
    updated_at: datetime


# --- Clinics and API keys (operators; routes/clinics.py) -------------------------------------


class ApiScope(StrEnum):
    """The scopes a key may hold (skinscreen.runtime.accounts.Scope)."""

    CLINICIAN = "clinician"
    OPERATOR = "operator"


Name = Annotated[Text, Field(min_length=1, max_length=200)]
RateLimit = Annotated[str, Field(pattern=RATE_LIMIT_PATTERN, max_length=20)]


class ClinicIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name = Field(description="Unique among clinics, 1-200 characters.")
    rate_limit_screenings: RateLimit | None = Field(
        None,
        description=f"Screenings each of the clinic's keys may post: {RATE_LIMIT_ALLOWED}.",
        examples=["60/minute"],
    )
    rate_limit_reads: RateLimit | None = Field(
        None,
        description="Other requests each of the clinic's keys may make (reads, lists, waits, "
        f"diagnoses): {RATE_LIMIT_ALLOWED}.",
        examples=["600/minute"],
    )


class ClinicPatch(BaseModel):
    """What changes; a field left out stays as it is."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = Field(None, description="Unique among clinics, 1-200 characters.")
    rate_limit_screenings: RateLimit | None = Field(
        None, description=f"Screenings each key may post: {RATE_LIMIT_ALLOWED}."
    )
    rate_limit_reads: RateLimit | None = Field(
        None, description=f"Other requests each key may make: {RATE_LIMIT_ALLOWED}."
    )


class ClinicOut(BaseModel):
    id: UUID
    name: str
    created_at: datetime
    rate_limit_screenings: str | None = Field(
        description="Screenings each key may post; null: the service's default."
    )
    rate_limit_reads: str | None = Field(
        description="Other requests each key may make; null: the service's default."
    )


class ClinicList(BaseModel):
    items: list[ClinicOut] = Field(description="Every clinic, by name.")


class KeyIn(BaseModel):
    """A new API key for the clinic in the path."""

    model_config = ConfigDict(extra="forbid")

    scopes: list[ApiScope] = Field(
        min_length=1,
        max_length=2,
        description="What the key may do: clinician (screen, read and list the clinic's "
        "screenings, record their diagnoses), operator (models, training runs, clinics and "
        "keys; reads every clinic's screenings), or both.",
    )
    expires_at: AwareDatetime | None = Field(
        None,
        description="When the key stops working: a future time with its UTC offset, e.g. "
        "2027-01-31T00:00:00Z; absent: never (revoke it instead).",
    )
    name: Name | None = Field(None, description="What the key is for, e.g. 'reception tablet'.")

    @field_validator("scopes")
    @classmethod
    def _once_each(cls, scopes: list[ApiScope]) -> list[ApiScope]:
        if len(set(scopes)) != len(scopes):
            raise ValueError("each scope at most once; allowed: clinician, operator")
        return scopes

    @field_validator("expires_at")
    @classmethod
    def _in_the_future(cls, expires_at: datetime | None) -> datetime | None:
        if expires_at is not None and expires_at <= datetime.now(UTC):
            raise ValueError(
                f"must be in the future (now: {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}); "
                "to stop a key now, revoke it (DELETE /v1/keys/{key_id})"
            )
        return expires_at


class KeyOut(BaseModel):
    """An API key as stored: never the key itself."""

    id: UUID
    clinic_id: UUID | None
    name: str | None
    scopes: list[ApiScope]
    prefix: str = Field(description="The key's first characters, to tell keys apart.")
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None = Field(description="Updated at most once a minute.")


class KeyCreated(KeyOut):
    key: str = Field(
        description="The API key itself, shown this once: only its SHA-256 is stored. Send it "
        "as 'Authorization: Bearer <key>'."
    )


class KeyList(BaseModel):
    items: list[KeyOut] = Field(description="The clinic's keys, revoked ones too, oldest first.")
