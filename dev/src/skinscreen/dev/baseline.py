"""The bench's in-process peer: a plain FastAPI server scoring each photo inside its request.

No queue, no database, nothing stored: the upload is decoded, preprocessed as the worker
does, scored by ONNX Runtime (batch 1, the request's own thread) and answered 200 with the
result. What skinscreen's durable, queued path is measured against in `make bench`, on the
same model, photos and client. Not a product feature.

    SKINSCREEN_BASELINE_MODEL=<folder with model.onnx, card.json> \
        python -m uvicorn --factory skinscreen.dev.baseline:create_app --port 8001
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Form, UploadFile
from PIL import Image

from skinscreen.core.card import verified_model
from skinscreen.core.clinical import N_CLINICAL, ClinicalInput, encode
from skinscreen.core.imaging import preprocess
from skinscreen.inference.model import load_model

MODEL_ENV = "SKINSCREEN_BASELINE_MODEL"
THREADS_ENV = "SKINSCREEN_BASELINE_THREADS"


def create_app() -> FastAPI:
    model_path, card = verified_model(Path(os.environ[MODEL_ENV]))
    model = load_model(model_path.read_bytes(), card, int(os.environ.get(THREADS_ENV, "0")))
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # A plain `def`: FastAPI runs it in its thread pool, so photos are scored concurrently.
    @app.post("/v1/screenings")
    def screen(
        image: UploadFile,
        clinical: Annotated[str, Form()],
        model_name: str = Form("", alias="model"),
    ) -> dict[str, Any]:
        with Image.open(image.file) as photo:
            pixels = preprocess(photo, model.input_size)
        vector = encode(ClinicalInput.model_validate_json(clinical))
        prediction = model.predict(pixels[None], vector.reshape(1, N_CLINICAL))
        decision = model.decide(prediction)[0]
        return {
            "status": "done",
            "cancer_probability": float(prediction.cancer[0]),
            "suspicious": decision.suspicious,
        }

    return app


@contextmanager
def serving(folder: Path, threads: int, log: Path) -> Iterator[str]:
    """The baseline in a uvicorn process of its own (like the gateway) on a free port; its URL."""
    from .embedded import free_port

    port = free_port()
    environ = {**os.environ, MODEL_ENV: str(folder), THREADS_ENV: str(threads)}
    command = [sys.executable, "-m", "uvicorn", "--factory", f"{__name__}:create_app"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    url = f"http://127.0.0.1:{port}"
    with log.open("ab") as output:
        process = subprocess.Popen(command, env=environ, stdout=output, stderr=output)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the in-process baseline did not start; see {log}"
                    ) from None
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(10)
