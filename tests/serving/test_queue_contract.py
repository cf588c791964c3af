"""The queue message agrees with proto/skinscreen/v1/screening.proto, name for name and in order."""

from __future__ import annotations

import re
from pathlib import Path
from uuid import UUID, uuid4

from skinscreen.core.clinical import ClinicalInput, Region
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
