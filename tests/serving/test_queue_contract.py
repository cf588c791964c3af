"""The queue message and the screening result agree with proto/skinscreen/v1/screening.proto,
name for name and in order."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_args
from uuid import UUID, uuid4

import pytest
from pydantic import BaseModel

from skinscreen.core.decision import Reason
from skinscreen.core.pad_ufes import DIAGNOSES
from skinscreen.gateway.schemas import DiagnosisProbability, PredictedDiagnosis, ScreeningResult
from skinscreen.gateway.schemas import Reason as ApiReason
from skinscreen.runtime.queue import (
    DEFAULT_MODEL_NAME,
    QUEUE,
    TASK_NAME,
    ScreeningTask,
    enqueue_screening,
    make_celery,
    queue_for,
    task_repr,
)

PROTO = Path(__file__).resolve().parents[2] / "proto" / "skinscreen" / "v1" / "screening.proto"

# The proto type that describes how each Python field type travels in the JSON message.
PROTO_TYPES: dict[object, str] = {UUID: "string", str: "string"}
# Numbers and names the message no longer uses: never to be given to another field.
RESERVED_NUMBERS = [2, 3]
RESERVED_NAMES = ["image_key", "clinical"]


def _proto() -> str:
    return PROTO.read_text()


def _task_body() -> str:
    body = re.search(r"message ScreeningTask \{(.*?)\n\}", _proto(), re.S)
    assert body is not None
    return body.group(1)


def _proto_fields() -> list[tuple[str, str, int, str]]:
    """(type, name, number, json_name) of each field of `message ScreeningTask`, in order."""
    fields = re.findall(
        r'^\s*(\w+) (\w+) = (\d+)(?: \[json_name = "(\w+)"\])?;', _task_body(), re.M
    )
    return [(kind, name, int(number), json_name) for kind, name, number, json_name in fields]


def test_proto_describes_the_same_message() -> None:
    fields = _proto_fields()
    assert [name for _, name, _, _ in fields] == list(ScreeningTask.model_fields)
    # The numbers of the fields removed stay reserved, so an old message never reads as new.
    numbers = [number for _, _, number, _ in fields]
    assert sorted(numbers + RESERVED_NUMBERS) == list(range(1, len(numbers) + 3))
    assert re.findall(r"^\s*reserved (\d+), (\d+);", _task_body(), re.M) == [("2", "3")]
    assert re.findall(r'^\s*reserved "(\w+)", "(\w+)";', _task_body(), re.M) == [
        tuple(RESERVED_NAMES)
    ]
    # proto3 JSON would otherwise spell screening_id as screeningId.
    assert [json_name for _, _, _, json_name in fields] == [name for _, name, _, _ in fields]
    assert [kind for kind, _, _, _ in fields] == [
        PROTO_TYPES[field.annotation] for field in ScreeningTask.model_fields.values()
    ]


def test_proto_names_the_task_and_queue() -> None:
    proto = _proto()
    assert "package skinscreen.v1;" in proto
    assert re.findall(r'Celery task:\s*"(.+?)"', proto) == [TASK_NAME]
    assert re.findall(r'on queue:\s*"(.+?)"', proto) == [QUEUE]


def test_the_message_carries_ids_only_and_reads_back_unchanged() -> None:
    task = ScreeningTask(screening_id=uuid4(), model_name="skinscreen-dermoscopy")
    message = task.model_dump(mode="json")
    assert message == task.message()
    assert list(message) == [name for _, name, _, _ in _proto_fields()]
    assert message == {
        "screening_id": str(task.screening_id),
        "model_name": "skinscreen-dermoscopy",
    }
    assert ScreeningTask.model_validate(message) == task
    assert queue_for("skinscreen-dermoscopy") == f"{QUEUE}.skinscreen-dermoscopy"
    assert queue_for(DEFAULT_MODEL_NAME) == QUEUE


def test_a_message_of_the_earlier_form_is_accepted_and_its_health_data_dropped() -> None:
    """A rolling upgrade: messages sent by a gateway of the release before still wait in Redis;
    this release's worker reads them, ignoring the photo key and answers they still carry."""
    clinical = {"age": 62, "region": "FACE", "itch": True, "grew": None, "hurt": False,
                "changed": False, "bleed": True, "elevation": True}  # fmt: skip
    screening_id = uuid4()
    old = {"screening_id": str(screening_id), "image_key": "ab/photo.jpg", "clinical": clinical,
           "model_name": "skinscreen-fusion"}  # fmt: skip
    task = ScreeningTask.model_validate(old)
    assert task == ScreeningTask(screening_id=screening_id, model_name="skinscreen-fusion")
    assert "clinical" not in task.message()
    assert "FACE" not in task_repr(task)


def test_a_message_from_before_several_models_goes_to_the_default_model() -> None:
    old = {"screening_id": str(uuid4()), "image_key": "ab/photo.jpg", "clinical": None}
    assert ScreeningTask.model_validate(old).model_name == DEFAULT_MODEL_NAME


def test_celery_headers_carry_ids_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """argsrepr/kwargsrepr (Celery copies them into the message headers and its log lines)
    name the screening and model, nothing else; the body is the message itself."""
    app = make_celery("contract", "redis://127.0.0.1:1/0", 60)
    sent: list[Any] = []
    # The send itself is replaced: nothing reaches a broker.
    monkeypatch.setattr(
        type(app.amqp), "send_task_message",
        property(lambda amqp: lambda producer, name, message, **options: sent.append(message)),
    )  # fmt: skip
    task = ScreeningTask(screening_id=uuid4())
    enqueue_screening(app, task)
    ((headers, _, body, _),) = [tuple(message) for message in sent]
    assert (
        headers["argsrepr"]
        == task_repr(task)
        == (f"[screening_id={task.screening_id}, model_name={DEFAULT_MODEL_NAME}]")
    )
    assert headers["kwargsrepr"] == "{}"
    args, kwargs, _ = body
    assert args == [task.message()]
    assert kwargs == {}


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
