"""The 22-variable clinical contract: the one place that fixes names, order and encoding.

Trainer, gateway and inference all encode through this module, so a model is
always fed the vector in the order it was trained on. `proto/skinscreen/v1/
clinical.proto` describes the same message on the wire; a test pins both.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Final

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

AGE_MIN: Final = 0
AGE_MAX: Final = 120


class Region(StrEnum):
    """Body region of the lesion; OTHER for anything not listed.

    Member order is the one-hot order of indices 1-15 in the vector.
    """

    ABDOMEN = "ABDOMEN"
    ARM = "ARM"
    BACK = "BACK"
    CHEST = "CHEST"
    EAR = "EAR"
    FACE = "FACE"
    FOOT = "FOOT"
    FOREARM = "FOREARM"
    HAND = "HAND"
    LIP = "LIP"
    NECK = "NECK"
    NOSE = "NOSE"
    SCALP = "SCALP"
    THIGH = "THIGH"
    OTHER = "OTHER"


REGIONS: Final[tuple[str, ...]] = tuple(region.value for region in Region)

# Order matters: indices 16-21 of the vector.
SYMPTOMS: Final[tuple[str, ...]] = ("itch", "grew", "hurt", "changed", "bleed", "elevation")

FEATURE_NAMES: Final[tuple[str, ...]] = (
    "age",
    *(f"region_{region}" for region in REGIONS),
    *SYMPTOMS,
)
N_CLINICAL: Final = len(FEATURE_NAMES)
assert N_CLINICAL == 22, "the clinical contract has exactly 22 variables"

AGE_INDEX: Final = 0
REGION_OFFSET: Final = 1
SYMPTOM_OFFSET: Final = REGION_OFFSET + len(REGIONS)


class ClinicalInput(BaseModel):
    """The eight answers a clinician gives about a lesion, in their API form.

    A symptom is `true`, `false` or `null` (unknown); unknown is encoded like
    false, as in PAD-UFES-20 where it is written `UNK`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    age: Annotated[int, Field(ge=AGE_MIN, le=AGE_MAX, strict=True, description="Age in years.")]
    region: Annotated[
        Region,
        Field(description="Body region of the lesion: " + ", ".join(REGIONS) + "."),
    ]
    # Strict: "yes", 1 or "true" are refused rather than guessed; only true, false, null.
    itch: bool | None = Field(strict=True, description="Does the lesion itch? null if unknown.")
    grew: bool | None = Field(strict=True, description="Has the lesion grown? null if unknown.")
    hurt: bool | None = Field(strict=True, description="Does the lesion hurt? null if unknown.")
    changed: bool | None = Field(
        strict=True, description="Has the lesion changed? null if unknown."
    )
    bleed: bool | None = Field(strict=True, description="Has the lesion bled? null if unknown.")
    elevation: bool | None = Field(
        strict=True, description="Is the lesion elevated? null if unknown."
    )

    def to_vector(self) -> np.ndarray:
        """The float32 vector of 22 values that the model takes."""
        return encode(self)


def encode(clinical: ClinicalInput) -> np.ndarray:
    """Encode one clinical input as the 22-float vector of the contract."""
    vector = np.zeros(N_CLINICAL, dtype=np.float32)
    vector[AGE_INDEX] = float(clinical.age)
    vector[REGION_OFFSET + REGIONS.index(clinical.region.value)] = 1.0
    for offset, symptom in enumerate(SYMPTOMS):
        vector[SYMPTOM_OFFSET + offset] = 1.0 if getattr(clinical, symptom) is True else 0.0
    return vector


def encode_many(clinicals: list[ClinicalInput]) -> np.ndarray:
    """Encode several inputs as a float32 array of shape [N, 22]."""
    if not clinicals:
        return np.zeros((0, N_CLINICAL), dtype=np.float32)
    return np.stack([encode(clinical) for clinical in clinicals])
