"""The Celery worker: `skinscreen-inference` consumes its model's screenings queue in batches."""

from __future__ import annotations

import functools
import io
import logging
from typing import Any

import numpy as np
from celery import Task
from celery.signals import worker_init, worker_shutdown
from PIL import Image
from pillow_heif import register_heif_opener

from skinscreen.core.clinical import N_CLINICAL, ClinicalInput, encode
from skinscreen.core.imaging import decode_cost, preprocess
from skinscreen.core.memory import MIB, DecodeBudget, tune_malloc
from skinscreen.runtime.blobs import BlobStore
from skinscreen.runtime.queue import TASK_NAME, ScreeningTask, make_celery, queue_for, task_repr
from skinscreen.runtime.screenings import TaskInputs

from . import metrics
from .active_model import ActiveModel
from .batching import Batcher
from .inputs import InputReader
from .model import LoadedModel
from .reconciler import Reconciler
from .retries import TRANSIENT_ERRORS, backoff_s
from .settings import get_settings

# Uploads may be HEIC/HEIF (iPhones); the gateway accepted them, so the worker must read them.
register_heif_opener()
# Freed decode buffers go back to the system (see skinscreen.core.memory).
tune_malloc()

logger = logging.getLogger(__name__)

settings = get_settings()
app = make_celery(
    "skinscreen-inference",
    settings.REDIS_URL,
    settings.CELERY_VISIBILITY_TIMEOUT_S,
    models=[settings.MODEL_NAME],
)
# An image-only model is never fed the clinical vector; the batch still stacks one per task.
UNUSED_CLINICAL: np.ndarray = np.zeros(N_CLINICAL, dtype=np.float32)


class _Runtime:
    def __init__(self) -> None:
        self.batcher: Batcher | None = None
        self.reconciler: Reconciler | None = None
        self.inputs = InputReader(settings.DATABASE_URL)
        self.blobs = BlobStore(settings.BLOB_DIR)


runtime = _Runtime()


@worker_init.connect
def _start_runtime(**_: Any) -> None:
    """Load the active model and open the database before taking any task: fail fast."""
    models = ActiveModel(
        settings.MODEL_NAME,
        settings.REDIS_URL,
        settings.MODEL_POLL_S,
        settings.intra_op_threads,
        on_load_failure=lambda version, exc: metrics.model_load_failed(),
    )
    runtime.batcher = Batcher(
        models,
        settings.DATABASE_URL,
        settings.MAX_BATCH_SIZE,
        settings.MAX_WAIT_MS,
        lanes=settings.LANES,
    )
    runtime.batcher.start()
    runtime.inputs.start()
    runtime.reconciler = Reconciler(
        settings.DATABASE_URL, settings.REDIS_URL, app, settings.reconciler
    )
    runtime.reconciler.start()
    metrics.reconciler_started(settings.MODEL_NAME)
    # Only now: the pod's probes read /metrics, so an answer means the model is loaded.
    metrics.serve(settings.METRICS_PORT, settings.METRICS_HOST)
    logger.info(
        "model %s %s on %s; batches of up to %d, waiting at most %.1f ms; %d at once, "
        "%d ONNX Runtime threads each",
        runtime.batcher.model.name,
        runtime.batcher.model.version,
        runtime.batcher.model.provider,
        settings.MAX_BATCH_SIZE,
        settings.MAX_WAIT_MS,
        settings.LANES,
        settings.intra_op_threads,
    )


@worker_shutdown.connect
def _stop_runtime(**_: Any) -> None:
    if runtime.reconciler is not None:
        runtime.reconciler.stop()
    runtime.inputs.stop()
    if runtime.batcher is not None:
        runtime.batcher.stop()


class PermanentError(ValueError):
    """Retrying cannot help (the stored photo cannot be decoded)."""


# Photos decoded at once hold at most this much memory together (skinscreen.core.memory).
decode_budget = DecodeBudget(settings.DECODE_MEMORY_BUDGET_MB * MIB)


def _decode(data: bytes, size: int) -> Any:
    """The model's input for a stored photo, decoded in full (a JPEG is not drafted to a
    smaller scale: on PAD-UFES-20 photos enlarged to phone size that moved the fusion model's
    scores by 0.008 to 0.02 at most, even drawn at 4x its input), within the decode
    budget; DecodeBudgetTimeoutError (transient: retried) when it stays spent."""
    try:
        image = Image.open(io.BytesIO(data))
    except Exception as exc:  # any decoder error: the bytes themselves are bad
        raise PermanentError(f"the stored photo cannot be decoded: {exc}") from exc
    with image, decode_budget.hold(decode_cost(image.format, *image.size), settings.DECODE_WAIT_S):
        try:
            return preprocess(image, size)
        except Exception as exc:
            raise PermanentError(f"the stored photo cannot be decoded: {exc}") from exc


def _check_model(task: ScreeningTask) -> None:
    """PermanentError for a task sent to another model (read from the message alone)."""
    if task.model_name != settings.MODEL_NAME:
        raise PermanentError(
            f"sent to model {task.model_name}, but it reached a worker serving "
            f"{settings.MODEL_NAME} (queue {queue_for(settings.MODEL_NAME)})"
        )


def _clinical_vector(inputs: TaskInputs, model: LoadedModel) -> np.ndarray:
    """The 22 values the model takes, or PermanentError if the screening cannot be scored here."""
    if inputs.clinical is None:
        if "clinical" in model.inputs:
            raise PermanentError(f"no clinical answers, and model {model.name} takes them")
        return UNUSED_CLINICAL
    return encode(ClinicalInput.model_validate(inputs.clinical))


@app.task(name=TASK_NAME, bind=True, acks_late=True, max_retries=settings.MAX_RETRIES)
def screen(self: Task, message: dict[str, Any]) -> str:
    """Run one screening through the next batch; its result is in PostgreSQL when this returns.

    The message holds the screening id and model name only (a message of the release before
    also held the photo's key and the clinical answers: ignored); the rest is read from the
    screening's row.
    """
    task = ScreeningTask.model_validate(message)
    assert runtime.batcher is not None, "worker_init did not run"
    try:
        _check_model(task)
        inputs = runtime.inputs.read(task.screening_id)
        if inputs is None or not inputs.unfinished:
            # No row (removed: its task was refused after all) or already finished (delivered
            # again): nothing to write.
            return "missing" if inputs is None else "already_finished"
        clinical = _clinical_vector(inputs, runtime.batcher.model)
        data = runtime.blobs.read(inputs.image_key)
        image = _decode(data, runtime.batcher.model.input_size)
        outcome = runtime.batcher.submit(
            task.screening_id,
            image,
            clinical,
            functools.partial(_decode, data),
            settings.RESULT_TIMEOUT_S,
        )
    except PermanentError as exc:
        runtime.batcher.fail(task.screening_id, str(exc))
        return "failed"
    except TRANSIENT_ERRORS as exc:
        retries = self.request.retries
        if retries >= settings.MAX_RETRIES:
            reason = f"gave up after {retries + 1} attempts: {type(exc).__name__}: {exc}"
            logger.error("screening %s failed: %s", task.screening_id, reason)
            runtime.batcher.fail(task.screening_id, reason)
            return "failed"
        logger.warning("screening %s: %s; retrying", task.screening_id, exc)
        # The retry is published in this release's form (ids only), whatever form came in;
        # Celery's own options, which its type stubs do not list, say what its headers show.
        headers: dict[str, Any] = {"argsrepr": task_repr(task), "kwargsrepr": "{}"}
        raise self.retry(
            args=(task.message(),),
            kwargs={},
            exc=exc,
            countdown=backoff_s(retries, settings.RETRY_BACKOFF_S, settings.RETRY_BACKOFF_MAX_S),
            **headers,
        ) from exc
    return outcome.value


def main() -> None:
    """Start a worker on its model's queue with enough threads to fill a batch."""
    app.worker_main(
        [
            "worker",
            "--queues",
            queue_for(settings.MODEL_NAME),
            "--pool",
            "threads",
            "--concurrency",
            str(settings.CONCURRENCY),
            "--loglevel",
            settings.LOG_LEVEL,
            "--without-gossip",
            "--without-mingle",
        ]
    )


if __name__ == "__main__":
    main()
