"""The queue message and the screening result agree with proto/skinscreen/v1/screening.proto,
name for name and in order."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args
from uuid import UUID, uuid4

import pytest
from pydantic import BaseModel

from skinscreen.core.clinical import ClinicalInput, Region
from skinscreen.core.decision import Reason
from skinscreen.core.pad_ufes import DIAGNOSES
from skinscreen.gateway.schemas import DiagnosisProbability, PredictedDiagnosis, ScreeningResult
from skinscreen.gateway.schemas import Reason as ApiReason
from skinscreen.runtime.queue import (
    DEFAULT_MODEL_NAME,
    QUEUE,
    TASK_NAME,
    ScreeningTask,
    queue_for,
)

PROTO = Path(__file__).resolve().parents[2] / "proto" / "skinscreen" / "v1" / "screening.proto"

# The proto type that describes how each Python field type travels in the JSON message.
PROTO_TYPES: dict[object, str] = {
    UUID: "string",
    str: "string",
    # A proto3 message field has presence: absent is None.
    ClinicalInput | None: "ClinicalInput",
}


def _proto() -> str:
    return PROTO.read_text()


def _proto_fields() -> list[tuple[str, str, int, str]]:
    """(type, name, number, json_name) of each field of `message ScreeningTask`, in order."""
    body = re.search(r"message ScreeningTask \{(.*?)\n\}", _proto(), re.S)
    assert body is not None
    fields = re.findall(
        r'^\s*(\w+) (\w+) = (\d+)(?: \[json_name = "(\w+)"\])?;', body.group(1), re.M
    )
    return [(kind, name, int(number), json_name) for kind, name, number, json_name in fields]


def test_proto_describes_the_same_message() -> None:
    fields = _proto_fields()
    assert [name for _, name, _, _ in fields] == list(ScreeningTask.model_fields)
    assert [number for _, _, number, _ in fields] == list(range(1, len(fields) + 1))
    # proto3 JSON would otherwise spell screening_id as screeningId.
    assert [json_name for _, _, _, json_name in fields] == [name for _, name, _, _ in fields]
    assert [kind for kind, _, _, _ in fields] == [
        PROTO_TYPES[field.annotation] for field in ScreeningTask.model_fields.values()
    ]


def test_proto_imports_the_clinical_contract_and_names_the_task() -> None:
    proto = _proto()
    assert 'import "skinscreen/v1/clinical.proto";' in proto
    assert "package skinscreen.v1;" in proto
    assert re.findall(r'Celery task:\s*"(.+?)"', proto) == [TASK_NAME]
    assert re.findall(r'on queue:\s*"(.+?)"', proto) == [QUEUE]


def test_the_message_sent_has_the_proto_fields_and_reads_back_unchanged() -> None:
    clinical = ClinicalInput(
        age=62,
        region=Region.FACE,
        itch=True,
        grew=None,
        hurt=False,
        changed=False,
        bleed=True,
        elevation=True,
    )
    task = ScreeningTask(screening_id=uuid4(), image_key="ab/photo.jpg", clinical=clinical)
    message = task.model_dump(mode="json")
    assert list(message) == [name for _, name, _, _ in _proto_fields()]
    assert message["screening_id"] == str(task.screening_id)
    assert message["clinical"]["region"] == "FACE"
    assert ScreeningTask.model_validate(message) == task


def test_an_image_only_screening_has_no_clinical_and_its_own_queue() -> None:
    task = ScreeningTask(
        screening_id=uuid4(), image_key="ab/photo.jpg", clinical=None,
        model_name="skinscreen-dermoscopy",
    )  # fmt: skip
    message = task.model_dump(mode="json")
    assert message["clinical"] is None
    assert ScreeningTask.model_validate(message) == task
    assert queue_for("skinscreen-dermoscopy") == f"{QUEUE}.skinscreen-dermoscopy"
    assert queue_for(DEFAULT_MODEL_NAME) == QUEUE


def test_a_message_from_before_several_models_goes_to_the_default_model() -> None:
    old = {"screening_id": str(uuid4()), "image_key": "ab/photo.jpg", "clinical": None}
    assert ScreeningTask.model_validate(old).model_name == DEFAULT_MODEL_NAME


# How each field of the gateway's result travels in proto3 JSON: (label, proto type).
RESULT_PROTO_TYPES: dict[object, tuple[str, str]] = {
    float: ("", "double"),
    bool: ("", "bool"),
    str: ("", "string"),
    list[Reason]: ("repeated", "string"),
    # proto3 `optional` keeps presence: absent is null.
    float | None: ("optional", "double"),
    # A repeated field reads JSON null as no items; the gateway writes null, never [].
    list[DiagnosisProbability] | None: ("repeated", "DiagnosisProbability"),
    PredictedDiagnosis: ("", "string"),
}


def _message(name: str) -> list[tuple[str, str, str, int, str]]:
    """(label, type, name, number, json_name) of each field of `message <name>`, in order."""
    body = re.search(rf"message {name} \{{(.*?)\n\}}", _proto(), re.S)
    assert body is not None, f"no message {name} in {PROTO}"
    fields = re.findall(
        r'^\s*(?:(repeated|optional) )?(\w+) (\w+) = (\d+) \[json_name = "(\w+)"\];',
        body.group(1),
        re.M,
    )
    return [(label, kind, field, int(number), json) for label, kind, field, number, json in fields]


@pytest.mark.parametrize(
    ("message", "model"),
    [("ScreeningResult", ScreeningResult), ("DiagnosisProbability", DiagnosisProbability)],
)
def test_proto_describes_the_screening_result_the_gateway_returns(
    message: str, model: type[BaseModel]
) -> None:
    fields = _message(message)
    assert [name for _, _, name, _, _ in fields] == list(model.model_fields)
    assert [number for _, _, _, number, _ in fields] == list(range(1, len(fields) + 1))
    assert [json for _, _, _, _, json in fields] == [name for _, _, name, _, _ in fields]
    assert [(label, kind) for label, kind, _, _, _ in fields] == [
        RESULT_PROTO_TYPES[field.annotation] for field in model.model_fields.values()
    ]


def test_the_result_names_the_diagnoses_and_reasons_as_the_core_does() -> None:
    assert get_args(PredictedDiagnosis) == DIAGNOSES
    assert get_args(ApiReason) == get_args(Reason)
    # The order the proto's comments promise.
    proto = _proto()
    assert "ACK, BCC, MEL,\n  // NEV, SCC, SEK" in proto
    assert '"cancer_probability",\n  // "melanoma_probability"' in proto
