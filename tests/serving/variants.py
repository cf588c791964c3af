"""Model versions of a lifecycle stack's own: variants of the shipped model, registered.

The variants are real models: the shipped ONNX with its classifier's cancer
biases shifted, so their probabilities differ and a result tagged with the
wrong version would not match a direct ONNX Runtime run.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from skinscreen.core.card import MODEL_FILE, file_sha256, read_card
from skinscreen.core.clinical import encode_many
from skinscreen.core.imaging import load_and_preprocess
from skinscreen.core.pad_ufes import CANCER_DIAGNOSES, DIAGNOSES
from skinscreen.runtime import registry
from skinscreen.runtime.database import create_pool
from tests.serving.conftest import MODEL_NAME, Lifecycle, Photo


def publish_variant(lifecycle: Lifecycle, version: str, shift: float, tmp: Path) -> str:
    """Publish the shipped model with every member's cancer logits shifted by `shift`."""
    source = Path(lifecycle.store.base) / MODEL_NAME / lifecycle.shipped_version
    graph = onnx.load(str(source / MODEL_FILE))
    cancer = np.array([diagnosis in CANCER_DIAGNOSES for diagnosis in DIAGNOSES])
    shifted = 0
    for initializer in graph.graph.initializer:
        if initializer.name.endswith("head.classifier.4.bias"):
            bias = numpy_helper.to_array(initializer) + shift * cancer
            initializer.CopyFrom(numpy_helper.from_array(bias.astype(np.float32), initializer.name))
            shifted += 1
    # Else the "variant" would be the shipped model again, and no version mix-up could show.
    assert shifted, f"no classifier bias to shift in {source / MODEL_FILE}"
    model_file = tmp / f"{version}.onnx"
    onnx.save(graph, str(model_file))
    card = read_card(source).model_copy(
        update={"version": version, "sha256": file_sha256(model_file)}
    )
    uri = lifecycle.store.publish(model_file, card)
    run(lifecycle, lambda pool: registry.register(pool, card, uri))
    return uri


def run(lifecycle: Lifecycle, work: Any) -> Any:
    async def go() -> Any:
        pool = await create_pool(lifecycle.env["DATABASE_URL"], max_size=2)
        try:
            return await work(pool)
        finally:
            await pool.close()

    return asyncio.run(go())


def direct_probabilities(lifecycle: Lifecycle, version: str, photos: list[Photo]) -> np.ndarray:
    folder = Path(lifecycle.store.base) / MODEL_NAME / version
    session = ort.InferenceSession(str(folder / MODEL_FILE), providers=["CPUExecutionProvider"])
    size = read_card(folder).input_size
    images = np.stack([load_and_preprocess(photo.path, size) for photo in photos])
    clinical = encode_many([photo.clinical for photo in photos])
    (probabilities,) = session.run(["cancer_probability"], {"image": images, "clinical": clinical})
    return np.asarray(probabilities)
