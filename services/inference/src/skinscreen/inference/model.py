"""The active published model in ONNX Runtime: CUDA when present, CPU otherwise."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from skinscreen.core.card import ModelCard, latest_version, verified_model


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
        (probabilities,) = self.session.run(
            ["cancer_probability"], {"image": images, "clinical": clinical}
        )
        return np.asarray(probabilities, dtype=np.float32)


def load_model(store: Path, name: str, intra_op_threads: int = 0) -> LoadedModel:
    """The newest published version of `name` in `store`, after its sha256 check."""
    model_path, card = verified_model(latest_version(store, name))
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    # Idle runtime threads sleep instead of spinning: the worker shares its cores with the
    # threads that decode the next batch's photos (and, on one machine, with the gateway).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model_path), options, providers=providers())
    return LoadedModel(card=card, session=session, provider=session.get_providers()[0])
