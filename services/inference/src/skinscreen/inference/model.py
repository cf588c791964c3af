"""A published model version in ONNX Runtime: CUDA when present, CPU otherwise.

`predict` runs the outputs the card declares (cancer_probability, and
diagnosis_probabilities for a model that learns the six diagnoses); `decide`
applies the card's decision rule to them, so the worker, the bench and the
tests all flag a screening the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from skinscreen.core.card import CANCER_OUTPUT, DIAGNOSIS_OUTPUT, ModelCard
from skinscreen.core.decision import DecisionRule, Reason
from skinscreen.core.pad_ufes import DIAGNOSES
from skinscreen.runtime.artifacts import fetch_model
from skinscreen.runtime.registry import ModelVersion


def providers() -> list[str]:
    """CUDA first when this onnxruntime build has it; CPU always as the fallback."""
    if "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class ModelOutputsError(RuntimeError):
    """The graph lacks an output its card declares: the version cannot be served."""


@dataclass(frozen=True)
class Prediction:
    """One ONNX Runtime call's outputs for a batch of N screenings."""

    cancer: np.ndarray  # float32 [N]
    # float32 [N, 6] in the order of DIAGNOSES; None for a model without that output.
    diagnoses: np.ndarray | None = None


@dataclass(frozen=True)
class Decision:
    """The card's rule applied to one screening."""

    suspicious: bool
    # The rules that fired, in the rule's order; empty when not suspicious.
    reasons: tuple[Reason, ...]
    # {diagnosis: probability} in the order of DIAGNOSES; None without the output.
    diagnoses: dict[str, float] | None


@dataclass
class LoadedModel:
    card: ModelCard
    session: Any
    provider: str
    # The graph's inputs: an image-only model has no `clinical`.
    inputs: frozenset[str] = field(default=frozenset({"image", "clinical"}))
    rule: DecisionRule = field(init=False)

    def __post_init__(self) -> None:
        self.rule = DecisionRule.from_card(self.card)

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def input_size(self) -> int:
        return self.card.input_size

    @property
    def threshold(self) -> float:
        """The cancer threshold."""
        return self.rule.cancer_threshold

    @property
    def melanoma_threshold(self) -> float | None:
        return self.rule.melanoma_threshold

    def predict(self, images: np.ndarray, clinical: np.ndarray) -> Prediction:
        """One ONNX Runtime call on uint8 [N, S, S, 3] and float32 [N, 22]: the card's outputs."""
        feeds = {"image": images, "clinical": clinical}
        outputs = self.session.run(
            list(self.card.outputs), {name: feeds[name] for name in self.inputs}
        )
        found = dict(zip(self.card.outputs, outputs, strict=True))
        diagnoses = found.get(DIAGNOSIS_OUTPUT)
        return Prediction(
            cancer=np.asarray(found[CANCER_OUTPUT], dtype=np.float32),
            diagnoses=None if diagnoses is None else np.asarray(diagnoses, dtype=np.float32),
        )

    def decide(self, prediction: Prediction) -> list[Decision]:
        """The card's decision rule on each screening of a batch."""
        # In float64, as PostgreSQL stores them: a float32 compared with a Python float is
        # compared in float32 (NumPy 2), which can disagree with the stored value's comparison.
        cancer_probabilities = prediction.cancer.astype(np.float64)
        diagnoses = (
            None if prediction.diagnoses is None else prediction.diagnoses.astype(np.float64)
        )
        decisions = []
        for index, cancer in enumerate(cancer_probabilities):
            row = None if diagnoses is None else diagnoses[index]
            reasons = self.rule.reasons(float(cancer), row)
            decisions.append(
                Decision(
                    suspicious=bool(reasons),
                    reasons=reasons,
                    diagnoses=None
                    if row is None
                    else {name: float(value) for name, value in zip(DIAGNOSES, row, strict=True)},
                )
            )
        return decisions


def load_version(version: ModelVersion, intra_op_threads: int = 0) -> LoadedModel:
    """A registered version from its artifact store, after its sha256 check."""
    data, card = fetch_model(version.artifact_uri, version.sha256)
    return load_model(data, card, intra_op_threads)


def load_model(data: bytes, card: ModelCard, intra_op_threads: int = 0) -> LoadedModel:
    """An ONNX Runtime session over the model bytes (already checked against the card)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    # Idle runtime threads sleep instead of spinning: the worker shares its cores with the
    # threads that decode the next batch's photos (and, on one machine, with the gateway).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(data, options, providers=providers())
    graph_outputs = [node.name for node in session.get_outputs()]
    missing = [name for name in card.outputs if name not in graph_outputs]
    if missing:
        raise ModelOutputsError(
            f"model {card.name} {card.version}: its card declares outputs {list(card.outputs)}, "
            f"but the graph has {graph_outputs} (missing {missing})"
        )
    return LoadedModel(
        card=card,
        session=session,
        provider=session.get_providers()[0],
        inputs=frozenset(node.name for node in session.get_inputs()),
    )
