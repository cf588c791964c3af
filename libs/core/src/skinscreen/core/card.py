"""Published models: the model card, and the immutable `<store>/<name>/<version>/` folders.

The trainer writes them, the serving side reads them; both go through here.
A folder holds `model.onnx` and `card.json`; the card carries the sha256 of
the ONNX file, which is checked on every load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MODEL_FILE: Final = "model.onnx"
Output = Literal["cancer_probability", "diagnosis_probabilities"]
CANCER_OUTPUT: Final = "cancer_probability"
DIAGNOSIS_OUTPUT: Final = "diagnosis_probabilities"
# The graph's outputs in the contract's order; a model has the first, or both.
OUTPUTS: Final[tuple[Output, ...]] = (CANCER_OUTPUT, DIAGNOSIS_OUTPUT)
CARD_FILE: Final = "card.json"


class MetricSummary(BaseModel):
    mean: float
    std: float


class Estimate(BaseModel):
    """A measured rate with its 95 % interval."""

    value: float
    low: float
    high: float
    n: int | None = Field(None, description="How many photos the rate is over, when it is one.")


class DecisionThreshold(BaseModel):
    value: float = Field(ge=0.0, le=1.0)
    method: str = Field(description="'recall' (reach a recall target) or 'fbeta'.")
    description: str
    # Cards written before thresholds were chosen inside training folds carry neither.
    recall_target: float | None = Field(None, description="The recall it was chosen to reach.")
    recall: Estimate | None = Field(
        None,
        description="The recall the decision rule reached on patients whose folds did not "
        "choose its thresholds (nested cross-validation).",
    )


class OutOfSample(BaseModel):
    """What a new patient can expect: nested, repeated, patient-grouped cross-validation."""

    method: str
    repeats: int
    folds: int
    metrics: dict[str, Estimate] = Field(
        description="Cancer vs not under the decision rule (roc_auc, recall, specificity, "
        "balanced_accuracy, precision), pooled over repeats, with 95 % intervals."
    )
    flagged_by_diagnosis: dict[str, Estimate] = Field(
        description="Share of each diagnosis' photos the rule called suspicious: the recall "
        "of a cancer, one minus the specificity of a benign diagnosis (patient bootstrap "
        "intervals)."
    )


class Derivation(BaseModel):
    """How a version was made from an earlier one of the same name without retraining (the
    same weights exported again): the card is that version's but for version, created_at,
    sha256 and this."""

    version: str = Field(description="The version it was derived from.")
    sha256: str = Field(description="sha256 of that version's model.onnx.")
    reason: str
    max_difference: float = Field(
        description="Largest |this - that| of any output, over `photos` real photos."
    )
    photos: int


class ModelCard(BaseModel):
    """What a published model is, how it was made and how well it did."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str
    version: str
    created_at: datetime
    sha256: str = Field(description="sha256 of model.onnx, hex.")
    input_size: int = Field(description="S: the model takes uint8 [N, S, S, 3] photos.")
    backbone: str
    clinical_share: float | None = Field(description="lambda; null for an image-only model.")
    n_image_features: int
    use_clinical: bool
    balancing: str
    training_mode: str
    decision_threshold: DecisionThreshold = Field(
        description="The cancer threshold: suspicious when cancer_probability reaches it."
    )
    melanoma_threshold: DecisionThreshold | None = Field(
        None,
        description="Also suspicious when the melanoma probability reaches it; only for a "
        "model with the diagnosis_probabilities output.",
    )
    outputs: tuple[Output, ...] = Field(
        ("cancer_probability",),
        min_length=1,
        description="The ONNX graph's outputs, cancer_probability first; "
        "diagnosis_probabilities is float32 [N, 6] in the order of DIAGNOSES.",
    )
    out_of_sample: OutOfSample | None = None
    data_fingerprint: str
    data_description: str
    cross_validation: dict[str, MetricSummary] = Field(
        description="Patient-grouped k-fold metrics at the decision threshold, mean and std."
    )
    folds: int
    training_config: dict[str, object]
    # Cards written before this field existed describe fusion models, which take both.
    inputs: tuple[Literal["image", "clinical"], ...] = Field(
        ("image", "clinical"),
        min_length=1,
        description="The ONNX graph's inputs: ('image', 'clinical') for the fusion model "
        "(an image-only fusion model keeps `clinical` and ignores it); ('image',) for a model "
        "that takes the photo alone, for which clinical answers are optional.",
    )

    derived_from: Derivation | None = Field(
        None,
        description="Set when this version is an earlier one's weights in a new graph "
        "(e.g. re-exported leaner): its figures are that version's, not measured again.",
    )

    @field_validator("inputs")
    @classmethod
    def _image_comes_first(cls, inputs: tuple[str, ...]) -> tuple[str, ...]:
        if inputs[0] != "image" or len(set(inputs)) != len(inputs):
            raise ValueError(
                f"inputs {list(inputs)} must start with 'image' and name each input once: "
                "['image'] or ['image', 'clinical']"
            )
        return inputs

    @model_validator(mode="after")
    def _melanoma_rule_needs_diagnoses(self) -> ModelCard:
        if self.outputs[0] != "cancer_probability" or len(set(self.outputs)) != len(self.outputs):
            raise ValueError(
                f"outputs {list(self.outputs)} must start with 'cancer_probability' and name "
                "each output once"
            )
        if self.melanoma_threshold is not None and "diagnosis_probabilities" not in self.outputs:
            raise ValueError(
                "melanoma_threshold needs the diagnosis_probabilities output, which this "
                f"model's outputs {list(self.outputs)} lack"
            )
        return self

    @property
    def has_diagnoses(self) -> bool:
        return DIAGNOSIS_OUTPUT in self.outputs


class ModelIntegrityError(RuntimeError):
    """A published model's file does not match its card."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def publish(store: Path, model_file: Path, card: ModelCard) -> Path:
    """Copy a model and its card into `<store>/<name>/<version>/`, never over an existing one.

    The folder is assembled beside its final place and renamed in one step, so
    a reader never sees a half-written version.
    """
    if card.sha256 != file_sha256(model_file):
        raise ModelIntegrityError(f"{model_file} does not match the sha256 in its card")
    destination = store / card.name / card.version
    if destination.exists():
        raise FileExistsError(
            f"model {card.name} version {card.version} is already published at "
            f"{destination}; published versions are immutable"
        )
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{card.version}-", dir=destination.parent))
    try:
        shutil.copyfile(model_file, staging / MODEL_FILE)
        (staging / CARD_FILE).write_text(card.model_dump_json(indent=2) + "\n")
        for path in staging.iterdir():
            path.chmod(0o444)
        # mkdtemp makes the folder private; a published model is for every reader.
        staging.chmod(0o755)
        os.rename(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return destination


def read_card(folder: Path) -> ModelCard:
    card_path = folder / CARD_FILE
    if not card_path.is_file():
        raise FileNotFoundError(
            f"{card_path} does not exist; a published model folder holds "
            f"{MODEL_FILE} and {CARD_FILE}"
        )
    return ModelCard.model_validate(json.loads(card_path.read_text()))


def verified_model(folder: Path) -> tuple[Path, ModelCard]:
    """The model file and card of a published folder, after checking the file's sha256."""
    card = read_card(folder)
    model_path = folder / MODEL_FILE
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path} does not exist")
    actual = file_sha256(model_path)
    if actual != card.sha256:
        raise ModelIntegrityError(
            f"{model_path} has sha256 {actual}, but its card says "
            f"{card.sha256}: the file was changed or damaged after publishing"
        )
    return model_path, card


def latest_version(store: Path, name: str) -> Path:
    """The newest published version of `name` (versions sort by their time stamp)."""
    versions = sorted(path for path in (store / name).glob("*") if (path / CARD_FILE).is_file())
    if not versions:
        raise FileNotFoundError(f"no published version of model {name!r} under {store}")
    return versions[-1]
