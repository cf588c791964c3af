"""The trainer worker: carries out training runs from the `training` queue, one at a time.

A run is claimed from its row, trained on the sources it names with the recipe
of the model it names (`skinscreen.trainer.recipes`), published to the artifact
store, registered as a candidate, and made active only if the promotion gate
lets it. Progress and a heartbeat go to the run's row; a
cancelled run stops at its next epoch. Start: `python -m skinscreen.trainer.worker`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any
from uuid import UUID

import asyncpg
from celery import Task
from celery.signals import worker_init, worker_ready
from redis import Redis

from skinscreen.core.card import MetricSummary
from skinscreen.runtime import registry
from skinscreen.runtime.artifacts import ArtifactStore
from skinscreen.runtime.blobs import BlobStore
from skinscreen.runtime.database import create_pool
from skinscreen.runtime.queue import TRAINING_QUEUE, TRAINING_TASK_NAME, make_celery
from skinscreen.runtime.training_runs import TrainingRequest, TrainingTask, parse_training_request

from . import metrics
from .recipes import get_recipe
from .settings import get_settings

logger = logging.getLogger(__name__)

settings = get_settings()
app = make_celery("skinscreen-trainer", settings.REDIS_URL, settings.CELERY_VISIBILITY_TIMEOUT_S)

# Progress rows are written at most this often; epochs of small runs take milliseconds.
PROGRESS_INTERVAL_S = 1.0


class RunCancelledError(Exception):
    """An operator cancelled the run; raised from the epoch callback to stop training."""


class RunRecorder:
    """Writes a run's row: progress, heartbeat, outcome; notices cancellation."""

    def __init__(self, runner: asyncio.Runner, pool: asyncpg.Pool, run_id: UUID) -> None:
        self.runner = runner
        self.pool = pool
        self.run_id = run_id
        self.cancelled = threading.Event()
        self._stop = threading.Event()
        self._last_progress = 0.0
        self._claimed_at = time.monotonic()
        self._heartbeat = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def claim(self) -> dict[str, Any] | None:
        """Mark the run running; None if it was cancelled or another worker has it."""
        row = self.runner.run(
            self.pool.fetchrow(
                "UPDATE training_runs SET status = 'running', started_at = now(),"
                " heartbeat_at = now(), progress = $2"
                " WHERE id = $1 AND status = 'queued' RETURNING config",
                self.run_id,
                {"stage": "loading data"},
            )
        )
        if row is None:
            return None
        self._claimed_at = time.monotonic()
        self._heartbeat.start()
        config: dict[str, Any] = row["config"]
        return config

    def _beat(self) -> None:
        # Its own connection and loop: the training thread may be busy for minutes.
        async def beat() -> bool:
            connection = await asyncpg.connect(settings.DATABASE_URL)
            try:
                return bool(
                    await connection.fetchval(
                        "UPDATE training_runs SET heartbeat_at = now() WHERE id = $1"
                        " RETURNING cancel_requested",
                        self.run_id,
                    )
                )
            finally:
                await connection.close()

        while not self._stop.wait(settings.HEARTBEAT_S):
            try:
                if asyncio.run(beat()):
                    self.cancelled.set()
            except (OSError, asyncpg.PostgresError) as exc:
                logger.warning("run %s: heartbeat failed: %s", self.run_id, exc)

    def progress(self, stage: str, **detail: int) -> None:
        self._last_progress = time.monotonic()
        cancel_requested = self.runner.run(
            self.pool.fetchval(
                "UPDATE training_runs SET progress = $2, heartbeat_at = now() WHERE id = $1"
                " RETURNING cancel_requested",
                self.run_id,
                {"stage": stage, **detail},
            )
        )
        if cancel_requested:
            self.cancelled.set()

    def on_epoch(self, fitting: str, epoch: int, epochs: int) -> None:
        if self.cancelled.is_set():
            raise RunCancelledError
        if time.monotonic() - self._last_progress >= PROGRESS_INTERVAL_S or epoch == epochs:
            self.progress(fitting, epoch=epoch, epochs=epochs)

    def finish(
        self,
        status: str,
        cross_validation: dict[str, MetricSummary] | None = None,
        **columns: Any,
    ) -> None:
        """Record how the run ended, in its row and in the trainer's metrics."""
        self._stop.set()
        metrics.observe_run(status, time.monotonic() - self._claimed_at, cross_validation)
        assignments = "".join(f", {name} = ${index}" for index, name in enumerate(columns, 3))
        self.runner.run(
            self.pool.execute(
                f"UPDATE training_runs SET status = $2, finished_at = now(){assignments}"
                " WHERE id = $1",
                self.run_id,
                status,
                *columns.values(),
            )
        )


def _announce(version: registry.ModelVersion) -> None:
    client = Redis.from_url(settings.REDIS_URL)
    try:
        client.publish(registry.ACTIVATIONS_CHANNEL, registry.activation_message(version))
    finally:
        client.close()


def carry_out(run_id: UUID) -> str:
    """Train, publish, register and gate one run; its row says how it ended."""
    with asyncio.Runner() as runner:
        pool = runner.run(create_pool(settings.DATABASE_URL, max_size=2))
        try:
            recorder = RunRecorder(runner, pool, run_id)
            config = recorder.claim()
            if config is None:
                logger.info("run %s is not queued (cancelled, or taken); skipped", run_id)
                return "skipped"
            try:
                return _train(runner, pool, recorder, parse_training_request(config))
            except RunCancelledError:
                recorder.finish("cancelled", progress={"stage": "cancelled"})
                logger.info("run %s cancelled", run_id)
                return "cancelled"
            except Exception as exc:  # the run fails; the worker lives on for the next one
                logger.exception("run %s failed", run_id)
                recorder.finish("failed", failure_reason=f"{type(exc).__name__}: {exc}")
                return "failed"
        finally:
            runner.run(pool.close())


def _train(
    runner: asyncio.Runner,
    pool: asyncpg.Pool,
    recorder: RunRecorder,
    request: TrainingRequest,
) -> str:
    recipe = get_recipe(request.model_name)
    data = runner.run(
        recipe.load_data(request, settings.TRAINING_DATA_DIR, pool, BlobStore(settings.BLOB_DIR))
    )
    config = recipe.config_from_request(request, settings.TRAINING_DATA_DIR)
    # Published below, into the artifact store, which may be a bucket: not by the recipe.
    result = recipe.train(
        config,
        settings.RUNS_DIR,
        None,
        data=data,
        on_epoch=recorder.on_epoch,
        progress=recorder.progress,
    )
    recorder.progress("publishing")
    card = result.card
    uri = ArtifactStore(settings.MODEL_STORE).publish(result.run_dir / "model.onnx", card)
    candidate = runner.run(registry.register(pool, card, uri, training_run_id=recorder.run_id))
    active = runner.run(registry.get_active(pool, card.name))
    promote, reason = registry.promotion_decision(candidate, active, settings.PROMOTION_TOLERANCE)
    if promote:
        promoted = runner.run(
            registry.promote(
                pool,
                card.name,
                card.version,
                actor=f"promotion-gate (training run {recorder.run_id})",
                reason=reason,
            )
        )
        _announce(promoted)
    recorder.finish(
        "succeeded",
        card.cross_validation,
        progress={"stage": "done"},
        metrics={metric: summary.model_dump() for metric, summary in card.cross_validation.items()},
        candidate_version=card.version,
        promoted=promote,
        promotion_reason=reason,
    )
    logger.info("run %s: %s %s published; %s", recorder.run_id, card.name, card.version, reason)
    return "promoted" if promote else "candidate"


@worker_init.connect
def _serve_metrics(**_: Any) -> None:
    metrics.serve(settings.METRICS_PORT, settings.METRICS_HOST)


@worker_ready.connect
def _fail_orphaned_runs(**_: Any) -> None:
    """Runs left 'running' by a worker that died are failed, so nobody waits on them forever."""

    async def sweep() -> int:
        connection = await asyncpg.connect(settings.DATABASE_URL)
        try:
            rows = await connection.fetch(
                "UPDATE training_runs SET status = 'failed', finished_at = now(),"
                " failure_reason = $2 WHERE status = 'running'"
                " AND heartbeat_at < now() - make_interval(secs => $1) RETURNING id",
                settings.STALE_RUN_S,
                "the trainer worker running it stopped "
                f"(no heartbeat for {settings.STALE_RUN_S:g} s)",
            )
            return len(rows)
        finally:
            await connection.close()

    failed = asyncio.run(sweep())
    if failed:
        logger.warning("%d orphaned training run(s) marked failed", failed)


# Acknowledged on receipt, unlike screenings: a run outlives any visibility timeout, and
# Redis would hand it to a second worker. A worker that dies mid-run leaves the row
# 'running' without heartbeat, which the next worker to start marks failed.
@app.task(name=TRAINING_TASK_NAME, bind=True, acks_late=False)
def train(self: Task, message: dict[str, Any]) -> str:
    return carry_out(TrainingTask.model_validate(message).run_id)


def main() -> None:
    """Start a worker on the training queue; runs go one at a time, each using every core."""
    logging.basicConfig(level=settings.LOG_LEVEL, format="%(levelname)s %(name)s: %(message)s")
    app.worker_main(
        [
            "worker",
            "--queues",
            TRAINING_QUEUE,
            "--pool",
            "solo",
            "--loglevel",
            settings.LOG_LEVEL,
            "--without-gossip",
            "--without-mingle",
        ]
    )


if __name__ == "__main__":
    main()
