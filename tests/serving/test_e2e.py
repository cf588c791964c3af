"""End to end on real photos: POST -> Celery -> batched ONNX -> PostgreSQL -> GET."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import (
    Keys,
    both_classes,
    check_result,
    direct_run,
    ranking_auc,
    served_model,
)

# Real cancers and real benign lesions, alternating.
PER_CLASS = 8
# The served probabilities must rank the cancers above the benign lesions: a model that
# answers the same value for every photo (AUC 0.5) must not pass. The shipped model ranks
# these 16 photos perfectly; the bound leaves room for a retrained one.
MIN_AUC = 0.8

pytestmark = pytest.mark.data  # real PAD-UFES-20 photos; skipped when absent


def test_real_photos_match_a_direct_onnx_run(
    keys: Keys, gateway: str, photos, database, blob_dir: Path, submit_photo
) -> None:
    chosen = both_classes(photos, PER_CLASS)
    # The same model on the same preprocessed input, straight through ONNX Runtime.
    model_path, card = served_model(database, "skinscreen-fusion")
    expected = direct_run(model_path, card, chosen)
    with httpx.Client(base_url=gateway, headers=keys.clinician, timeout=60) as client:
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
    for index, (photo, result) in enumerate(zip(chosen, results, strict=True)):
        assert result["status"] == "done", result
        assert result["clinical"] == json.loads(photo.clinical.model_dump_json())
        # Probabilities, diagnoses (when the model outputs them), thresholds, reasons.
        check_result(result["result"], card, expected, index)
        assert result["completed_at"] is not None
    served = [result["result"]["cancer_probability"] for result in results]
    assert ranking_auc(served, [photo.label for photo in chosen]) >= MIN_AUC, served
    # The original upload is kept byte for byte in the blob store.
    for photo, response in zip(chosen, accepted, strict=True):
        key = database.value(
            "SELECT image_key FROM screenings WHERE id = $1::uuid", response.json()["id"]
        )
        assert (blob_dir / key).read_bytes() == photo.path.read_bytes()
