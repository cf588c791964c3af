"""The 22-variable contract: order, values, validation, and agreement with proto/."""

from __future__ import annotations

import re

import numpy as np
import pytest
from pydantic import ValidationError

from skinscreen.core.clinical import (
    FEATURE_NAMES,
    N_CLINICAL,
    REGIONS,
    SYMPTOMS,
    ClinicalInput,
    Region,
    encode,
    encode_many,
)
from tests.conftest import DESIGN_EXAMPLE, REPO

BASE = DESIGN_EXAMPLE


def test_order_is_pinned() -> None:
    assert N_CLINICAL == 22
    assert REGIONS == (
        "ABDOMEN",
        "ARM",
        "BACK",
        "CHEST",
        "EAR",
        "FACE",
        "FOOT",
        "FOREARM",
        "HAND",
        "LIP",
        "NECK",
        "NOSE",
        "SCALP",
        "THIGH",
        "OTHER",
    )
    assert SYMPTOMS == ("itch", "grew", "hurt", "changed", "bleed", "elevation")
    assert FEATURE_NAMES[0] == "age"
    assert FEATURE_NAMES[1:16] == tuple(f"region_{region}" for region in REGIONS)
    assert FEATURE_NAMES[16:] == SYMPTOMS


def test_design_example_encodes_as_documented() -> None:
    vector = ClinicalInput.model_validate(BASE).to_vector()
    expected = np.zeros(22, dtype=np.float32)
    expected[0] = 62
    expected[1 + REGIONS.index("FACE")] = 1
    expected[16:22] = [1, 0, 0, 0, 1, 1]  # grew unknown -> 0
    assert vector.dtype == np.float32
    np.testing.assert_array_equal(vector, expected)


@pytest.mark.parametrize("region", REGIONS)
def test_every_region_sets_exactly_its_one_hot(region: str) -> None:
    vector = encode(ClinicalInput.model_validate({**BASE, "region": region}))
    one_hot = vector[1:16]
    assert one_hot.sum() == 1
    assert one_hot[REGIONS.index(region)] == 1


@pytest.mark.parametrize("symptom", SYMPTOMS)
def test_unknown_and_false_symptoms_encode_as_zero(symptom: str) -> None:
    position = 16 + SYMPTOMS.index(symptom)
    for value, expected in ((True, 1.0), (False, 0.0), (None, 0.0)):
        vector = encode(ClinicalInput.model_validate({**BASE, symptom: value}))
        assert vector[position] == expected


def test_age_is_passed_raw() -> None:
    for age in (0, 37, 120):
        assert encode(ClinicalInput.model_validate({**BASE, "age": age}))[0] == age


def test_encode_many_stacks_in_order() -> None:
    inputs = [ClinicalInput.model_validate({**BASE, "age": age}) for age in (10, 20, 30)]
    batch = encode_many(inputs)
    assert batch.shape == (3, 22)
    assert list(batch[:, 0]) == [10, 20, 30]
    assert encode_many([]).shape == (0, 22)


@pytest.mark.parametrize(
    ("change", "field", "fragment"),
    [
        ({"age": 121}, "age", "less than or equal to 120"),
        ({"age": -1}, "age", "greater than or equal to 0"),
        ({"age": "62"}, "age", "valid integer"),
        ({"region": "KNEE"}, "region", "'ABDOMEN'"),
        ({"itch": "sometimes"}, "itch", "valid boolean"),
        ({"bleed": "yes"}, "bleed", "valid boolean"),
        ({"grew": 1}, "grew", "valid boolean"),
        ({"colour": "brown"}, "colour", "Extra inputs are not permitted"),
    ],
)
def test_bad_input_names_the_field_and_what_is_allowed(
    change: dict[str, object], field: str, fragment: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        ClinicalInput.model_validate({**BASE, **change})
    errors = raised.value.errors()
    assert [error["loc"][0] for error in errors] == [field]
    assert fragment in errors[0]["msg"]


def test_missing_symptom_is_an_error_not_a_silent_unknown() -> None:
    payload = {key: value for key, value in BASE.items() if key != "bleed"}
    with pytest.raises(ValidationError, match="bleed"):
        ClinicalInput.model_validate(payload)


def test_proto_describes_the_same_message() -> None:
    proto = (REPO / "proto" / "skinscreen" / "v1" / "clinical.proto").read_text()
    enum_body = re.search(r"enum Region \{(.*?)\}", proto, re.S)
    message_body = re.search(r"message ClinicalInput \{(.*?)\}", proto, re.S)
    assert enum_body is not None
    assert message_body is not None
    values = re.findall(r"(\w+) = (\d+);", enum_body.group(1))
    assert values[0] == ("REGION_UNSPECIFIED", "0")
    assert [name for name, _ in values[1:]] == list(REGIONS)
    assert [int(number) for _, number in values[1:]] == list(range(1, 16))
    fields = re.findall(r"(?:optional )?\w+ (\w+) = \d+;", message_body.group(1))
    assert fields == ["age", "region", *SYMPTOMS]
    assert [member.value for member in Region] == list(REGIONS)
