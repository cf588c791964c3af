"""A published model version in ONNX Runtime: CUDA when present, CPU otherwise."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from skinscreen.core.card import ModelCard
from skinscreen.runtime.artifacts import fetch_model
from skinscreen.runtime.registry import ModelVersion


def providers() -> list[str]:
    """CUDA first when this onnxruntime build has it; CPU always as the fallback."""
    if "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


@dataclass
class LoadedModel:
    card: ModelCard
    session: Any
    provider: str
    # The graph's inputs: an image-only model has no `clinical`.
    inputs: frozenset[str] = field(default=frozenset({"image", "clinical"}))

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
        return self.card.decision_threshold.value

    def predict(self, images: np.ndarray, clinical: np.ndarray) -> np.ndarray:
        """One ONNX Runtime call: uint8 [N, S, S, 3] and float32 [N, 22] -> float32 [N]."""
        feeds = {"image": images, "clinical": clinical}
        (probabilities,) = self.session.run(
            ["cancer_probability"], {name: feeds[name] for name in self.inputs}
        )
        return np.asarray(probabilities, dtype=np.float32)


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
    return LoadedModel(
        card=card,
        session=session,
        provider=session.get_providers()[0],
        inputs=frozenset(node.name for node in session.get_inputs()),
    )
