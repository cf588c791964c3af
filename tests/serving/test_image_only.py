"""The image-only model served beside the fusion model: a photo alone, its own queue and worker.

skinscreen-dermoscopy (the dermoscopy paper's network) takes the image input
alone, so a screening sent to it may leave the clinical answers out; the
fusion model still requires them.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import numpy as np
import onnxruntime as ort
import pytest
from celery import Celery

from skinscreen.core.ham10000 import load_ham10000
from skinscreen.core.imaging import load_and_preprocess
from skinscreen.runtime import registry
from skinscreen.runtime.queue import queue_for
from tests.conftest import DESIGN_EXAMPLE
from tests.serving.conftest import (
    Keys,
    Launcher,
    Process,
    ranking_auc,
    served_model,
    start_worker,
)

IMAGE_ONLY = "skinscreen-dermoscopy"
N_PHOTOS = 10
# The served probabilities rank the malignant photos above the benign ones (the shipped
# model ranks these 10 perfectly): a model answering one value for all would score 0.5.
MIN_AUC = 0.8

pytestmark = pytest.mark.data  # real HAM10000 and PAD-UFES-20 photos; skipped when absent


@pytest.fixture(scope="module")
def image_only_worker(
    stack_env: dict[str, str], launcher: Launcher, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Process]:
    """A second inference worker, serving the image-only model from its own queue."""
    log = tmp_path_factory.mktemp("logs") / "image-only-worker.log"
    process = launcher.worker({**stack_env, "MODEL_NAME": IMAGE_ONLY}, log)
    start_worker(process)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def dermoscopy_photos(ham10000_dir: Path) -> list[Path]:
    samples = load_ham10000(ham10000_dir).samples
    # Both classes: the first malignant and benign photos, alternating.
    malignant = [s.image_path for s in samples if s.label == 1][: N_PHOTOS // 2]
    benign = [s.image_path for s in samples if s.label == 0][: N_PHOTOS // 2]
    return [path for pair in zip(malignant, benign, strict=True) for path in pair]


def _post(
    client: httpx.Client, photo: Path, clinical: object = None, model: str | None = IMAGE_ONLY
) -> httpx.Response:
    data = {}
    if clinical is not None:
        data["clinical"] = json.dumps(clinical)
    if model is not None:
        data["model"] = model
    return client.post(
        "/v1/screenings", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")}, data=data
    )


def test_a_photo_alone_is_screened_by_the_image_only_model(
    keys: Keys, gateway: str, image_only_worker: Process, dermoscopy_photos: list[Path], database
) -> None:
    model_path, card = served_model(database, IMAGE_ONLY)
    assert card.inputs == ("image",)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    assert [node.name for node in session.get_inputs()] == ["image"]
    images = np.stack([load_and_preprocess(path, card.input_size) for path in dermoscopy_photos])
    (expected,) = session.run(None, {"image": images})

    with httpx.Client(base_url=gateway, headers=keys.clinician, timeout=60) as client:
        # The last one also sends clinical answers: kept, but not what the model reads.
        accepted = [_post(client, path) for path in dermoscopy_photos[:-1]]
        accepted.append(_post(client, dermoscopy_photos[-1], clinical=DESIGN_EXAMPLE))
        for response in accepted:
            assert response.status_code == 202, response.text
        results = [
            client.get(response.headers["Location"], params={"wait": 30}).json()
            for response in accepted
        ]
    for result, probability in zip(results, expected, strict=True):
        assert result["status"] == "done", result
        assert result["model"] == IMAGE_ONLY
        assert result["result"]["model_version"] == card.version
        assert result["result"]["threshold"] == pytest.approx(card.decision_threshold.value)
        assert abs(result["result"]["cancer_probability"] - float(probability)) <= 1e-5
    served = [result["result"]["cancer_probability"] for result in results]
    # dermoscopy_photos alternate malignant and benign, malignant first.
    labels = [1 - index % 2 for index in range(N_PHOTOS)]
    assert ranking_auc(served, labels) >= MIN_AUC, served
    assert [result["clinical"] for result in results[:-1]] == [None] * (N_PHOTOS - 1)
    assert results[-1]["clinical"] == DESIGN_EXAMPLE
    # Its worker, not the fusion model's, scored them: one version per batch, this one.
    batches = database.fetch(
        "SELECT DISTINCT b.model_version FROM screenings s JOIN inference_batches b"
        " ON b.id = s.batch_id WHERE s.id = ANY($1::uuid[])",
        [response.json()["id"] for response in accepted],
    )
    assert [row["model_version"] for row in batches] == [card.version]


def test_the_fusion_model_still_reads_the_clinical_answers(
    keys: Keys, gateway: str, image_only_worker: Process, photos
) -> None:
    """Default model, and named explicitly: the same fusion result for the same input."""
    photo = photos[0]
    with httpx.Client(base_url=gateway, headers=keys.clinician, timeout=60) as client:
        answers = json.loads(photo.clinical.model_dump_json())
        default = _post(client, photo.path, clinical=answers, model=None)
        named = _post(client, photo.path, clinical=answers, model="skinscreen-fusion")
        results = [
            client.get(response.headers["Location"], params={"wait": 30}).json()
            for response in (default, named)
        ]
    assert [result["model"] for result in results] == ["skinscreen-fusion"] * 2
    assert results[0]["result"]["cancer_probability"] == pytest.approx(
        results[1]["result"]["cancer_probability"], abs=1e-6
    )


def test_screenings_are_listed_by_model(
    keys: Keys, gateway: str, image_only_worker: Process, dermoscopy_photos: list[Path], database
) -> None:
    with httpx.Client(base_url=gateway, headers=keys.clinician, timeout=30) as client:
        # Its own screenings, more than a page of them, whichever tests ran before.
        ours = [_post(client, photo).json()["id"] for photo in dermoscopy_photos[:5]]
        # Scored before the module's worker stops: no screening is left queued for ever.
        for screening_id in ours:
            read = client.get(f"/v1/screenings/{screening_id}", params={"wait": 30})
            assert read.json()["status"] == "done", read.text
        sent = database.value("SELECT count(*) FROM screenings WHERE model_name = $1", IMAGE_ONLY)
        pages, cursor = [], None
        while True:
            params: dict[str, str | int] = {"model": IMAGE_ONLY, "limit": 4}
            if cursor is not None:
                params["cursor"] = cursor
            page = client.get("/v1/screenings", params=params).json()
            pages.append(page["items"])
            if (cursor := page["next_cursor"]) is None:
                break
        listed = [item for items in pages for item in items]
        assert len(listed) == sent
        assert set(ours) <= {item["id"] for item in listed}
        assert {item["model"] for item in listed} == {IMAGE_ONLY}
        assert len(pages) > 1  # the cursor and the filter together
        unknown = client.get("/v1/screenings", params={"model": "no-such-model"}).json()
        assert unknown == {"items": [], "next_cursor": None}


def _enqueue_directly(stack_env: dict[str, str], database, queue: str, model_name: str) -> str:
    """A photo-only screening queued by hand, the way no gateway would send it."""
    screening_id = str(uuid.uuid4())
    database.fetch(
        "INSERT INTO screenings (id, model_name, image_key, image_format, image_bytes,"
        " image_sha256) VALUES ($1::uuid, $2, 'no/photo.jpg', 'JPEG', 0, '')",
        screening_id,
        model_name,
    )
    celery = Celery(broker=stack_env["REDIS_URL"])
    message = {"screening_id": screening_id, "image_key": "no/photo.jpg", "clinical": None,
               "model_name": model_name}  # fmt: skip
    celery.send_task("skinscreen.screen", args=[message], queue=queue)
    celery.close()
    return screening_id


def test_a_worker_refuses_what_its_model_cannot_score(
    keys: Keys, gateway: str, image_only_worker: Process, stack_env: dict[str, str], database
) -> None:
    """Misrouted, or without the clinical answers its model reads: failed at once, with why."""
    misrouted = _enqueue_directly(
        stack_env, database, queue_for(IMAGE_ONLY), model_name="skinscreen-fusion"
    )
    no_answers = _enqueue_directly(
        stack_env, database, queue_for("skinscreen-fusion"), model_name="skinscreen-fusion"
    )
    # Made by hand without a clinic: an operator reads them.
    with httpx.Client(base_url=gateway, headers=keys.operator, timeout=60) as client:
        results = [
            client.get(f"/v1/screenings/{screening_id}", params={"wait": 30}).json()
            for screening_id in (misrouted, no_answers)
        ]
    assert [result["status"] for result in results] == ["failed", "failed"], results
    assert results[0]["failure_reason"] == (
        "sent to model skinscreen-fusion, but it reached a worker serving "
        "skinscreen-dermoscopy (queue screenings.skinscreen-dermoscopy)"
    )
    assert results[1]["failure_reason"] == (
        "no clinical answers, and model skinscreen-fusion takes them"
    )


def _snapshot(database, blob_dir: Path, idle_redis) -> tuple[int, int, int]:
    rows = database.value("SELECT count(*) FROM screenings")
    blobs = sum(1 for path in blob_dir.rglob("*") if path.is_file())
    queued = sum(idle_redis.llen(queue_for(name)) for name in ("skinscreen-fusion", IMAGE_ONLY))
    return rows, blobs, queued


@pytest.fixture
def nothing_created(database, blob_dir: Path, idle_redis) -> Iterator[None]:
    before = _snapshot(database, blob_dir, idle_redis)
    yield
    assert _snapshot(database, blob_dir, idle_redis) == before


@pytest.mark.usefixtures("nothing_created")
def test_a_model_that_reads_clinical_answers_requires_them(
    keys: Keys, idle_gateway: str, dermoscopy_photos: list[Path]
) -> None:
    with httpx.Client(base_url=idle_gateway, headers=keys.clinician, timeout=30) as client:
        for model in (None, "skinscreen-fusion"):
            response = _post(client, dermoscopy_photos[0], model=model)
            assert response.status_code == 422, response.text
            (problem,) = response.json()["detail"]
            assert problem["loc"] == ["body", "clinical"]
            assert problem["type"] == "missing"
            assert "skinscreen-fusion takes the clinical answers" in problem["msg"]
            assert IMAGE_ONLY in problem["msg"]


@pytest.mark.usefixtures("nothing_created")
def test_an_unknown_model_is_refused_with_the_served_ones(
    keys: Keys, idle_gateway: str, dermoscopy_photos: list[Path]
) -> None:
    with httpx.Client(base_url=idle_gateway, headers=keys.clinician, timeout=30) as client:
        for model in ("skinscreen-dermatoscope", "../etc", ""):
            response = _post(client, dermoscopy_photos[0], clinical=DESIGN_EXAMPLE, model=model)
            assert response.status_code == 422, (model, response.text)
            (problem,) = response.json()["detail"]
            assert problem["loc"] == ["body", "model"]
            assert problem["msg"] == (
                f"no model named {model!r} is served; served models: "
                "skinscreen-dermoscopy, skinscreen-fusion"
            )


@pytest.mark.usefixtures("nothing_created")
def test_bad_clinical_answers_are_refused_even_for_the_image_only_model(
    keys: Keys, idle_gateway: str, dermoscopy_photos: list[Path]
) -> None:
    with httpx.Client(base_url=idle_gateway, headers=keys.clinician, timeout=30) as client:
        response = _post(client, dermoscopy_photos[0], clinical={**DESIGN_EXAMPLE, "age": 130})
    assert response.status_code == 422
    assert [problem["loc"] for problem in response.json()["detail"]] == [
        ["body", "clinical", "age"]
    ]


def test_a_model_name_keeps_its_inputs(stack_env: dict[str, str], database) -> None:
    """A version taking other inputs is refused: the gateway decides by a name's inputs."""
    _, card = served_model(database, IMAGE_ONLY)
    other = card.model_copy(update={"version": "20990101.000000", "inputs": ("image", "clinical")})

    async def register() -> None:
        connection = await asyncpg.connect(stack_env["DATABASE_URL"])
        try:
            with pytest.raises(registry.RegistryError, match="needs another name"):
                await registry.register(connection, other, "file:///nowhere")
            assert await registry.get_version(connection, IMAGE_ONLY, other.version) is None
        finally:
            await connection.close()

    asyncio.run(register())
