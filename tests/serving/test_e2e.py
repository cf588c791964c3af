"""End to end on real photos: POST -> Celery -> batched ONNX -> PostgreSQL -> GET."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from skinscreen.core.card import latest_version, verified_model
from skinscreen.core.clinical import encode_many
from skinscreen.core.imaging import load_and_preprocess

N_PHOTOS = 12

pytestmark = pytest.mark.data  # real PAD-UFES-20 photos; skipped when absent


def direct_probabilities(model_store: Path, photos) -> tuple[np.ndarray, str, float]:
    """The same model on the same preprocessed input, straight through ONNX Runtime."""
    model_path, card = verified_model(latest_version(model_store, "skinscreen-fusion"))
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    images = np.stack([load_and_preprocess(photo.path, card.input_size) for photo in photos])
    clinical = encode_many([photo.clinical for photo in photos])
    (probabilities,) = session.run(None, {"image": images, "clinical": clinical})
    return probabilities, card.version, card.decision_threshold.value


def test_real_photos_match_a_direct_onnx_run(
    gateway: str, photos, model_store: Path, database, blob_dir: Path, submit_photo
) -> None:
    chosen = photos[:N_PHOTOS]
    expected, version, threshold = direct_probabilities(model_store, chosen)
    with httpx.Client(base_url=gateway, timeout=60) as client:
        accepted = [submit_photo(client, photo) for photo in chosen]
        for response in accepted:
            assert response.status_code == 202, response.text
            body = response.json()
            assert body["status"] == "queued"
            assert response.headers["Location"] == body["links"]["self"]
        results = [
            client.get(response.headers["Location"], params={"wait": 30}).json()
            for response in accepted
        ]
    for photo, result, probability in zip(chosen, results, expected, strict=True):
        assert result["status"] == "done", result
        assert result["clinical"] == json.loads(photo.clinical.model_dump_json())
        assert result["result"]["model_version"] == version
        assert result["result"]["threshold"] == pytest.approx(threshold)
        assert abs(result["result"]["cancer_probability"] - float(probability)) <= 1e-5
        assert result["result"]["suspicious"] == (
            result["result"]["cancer_probability"] >= threshold
        )
        assert result["completed_at"] is not None
    # The original upload is kept byte for byte in the blob store.
    for photo, response in zip(chosen, accepted, strict=True):
        key = database.value(
            "SELECT image_key FROM screenings WHERE id = $1::uuid", response.json()["id"]
        )
        assert (blob_dir / key).read_bytes() == photo.path.read_bytes()
