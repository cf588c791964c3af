"""Dynamic batching: screenings from many worker threads become ONNX Runtime calls.

Celery runs each task in a thread; the task reads and decodes its photo and hands it to
the batcher, which takes the screenings already waiting and then waits for up to
`max_batch_size` screenings or `max_wait_ms` after the first (the defaults depend on
the provider: see `settings.BATCHING_BY_PROVIDER`), runs the model once, writes all
results in one statement and only then releases the tasks, so Celery acknowledges a
message only once its result is in PostgreSQL.

Up to `lanes` batches are in flight at once, each in its own ONNX Runtime call on its own
thread: while one batch is claimed in PostgreSQL or its results are written, another is
scored, and on a CPU each call runs on its share of the cores (`settings.Settings.
intra_op_threads`), so a core taken by the gateway or a decode for a moment slows one call,
not every step of one call spread over all the cores. A batch is collected only when a
lane is free, so it takes everything that queued while the lanes were busy.

Each batch is scored by the version `ActiveModel` serves when the batch starts; if that
version was retired meanwhile, the batch is scored again by the new one, so every result
carries a version that was active when it was written.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar
from uuid import UUID

import asyncpg
import numpy as np

from skinscreen.runtime import screenings
from skinscreen.runtime.database import create_pool

from . import metrics
from .active_model import ActiveModel
from .model import Decision, LoadedModel

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Longest wait for any one statement, or for a pooled connection; far above what any takes.
DATABASE_TIMEOUT_S = 30.0
# Scorings of one batch while versions switch under it; the last one always writes.
MAX_RESCORES = 3


class Outcome(StrEnum):
    WRITTEN = "written"
    # Delivered again after its result was written (e.g. the worker died before the ack).
    ALREADY_FINISHED = "already_finished"


@dataclass
class _Item:
    screening_id: UUID
    image: np.ndarray
    clinical: np.ndarray
    # Preprocesses the photo again at another input size, if a switch brings one.
    reprocess: Callable[[int], np.ndarray]
    future: concurrent.futures.Future[Outcome] = field(default_factory=concurrent.futures.Future)


class Batcher:
    """Owns an event loop thread with the database pool and the batching coroutine."""

    def __init__(
        self,
        models: ActiveModel,
        database_url: str,
        max_batch_size: int,
        max_wait_ms: float,
        lanes: int = 1,
    ) -> None:
        self.models = models
        self.database_url = database_url
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.lanes = lanes
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="batcher", daemon=True)
        # The model runs off the loop, one thread per lane, so the loop keeps claiming and
        # writing other batches meanwhile.
        self._inference = concurrent.futures.ThreadPoolExecutor(lanes, thread_name_prefix="onnx")
        self._queue: asyncio.Queue[_Item] | None = None
        self._pool: asyncpg.Pool | None = None
        self._task: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        # Most batches in flight at once so far (tests read it).
        self.peak_in_flight = 0

    def start(self) -> None:
        self._thread.start()
        self._call(self._open())

    def stop(self) -> None:
        if self._thread.is_alive():
            self._call(self._close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._inference.shutdown()

    @property
    def model(self) -> LoadedModel:
        """The version serving now; the next batch starts with it."""
        return self.models.current

    def submit(
        self,
        screening_id: UUID,
        image: np.ndarray,
        clinical: np.ndarray,
        reprocess: Callable[[int], np.ndarray],
        timeout_s: float,
    ) -> Outcome:
        """Queue one screening for the next batch and block until its result is written."""
        item = _Item(screening_id, image, clinical, reprocess)
        assert self._queue is not None, "Batcher.start() first"
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        return item.future.result(timeout_s)

    def fail(self, screening_id: UUID, reason: str) -> bool:
        async def failing() -> bool:
            assert self._pool is not None
            return await screenings.fail(self._pool, screening_id, reason)

        return self._call(failing())

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    async def _open(self) -> None:
        self._queue = asyncio.Queue()
        # Bounded: a PostgreSQL that hangs (not one that is down: that refuses at once) fails
        # the batch, its tasks retry, and the batcher goes on instead of waiting forever.
        self._pool = await create_pool(
            self.database_url,
            # A claim or a write per lane, and the model registry's reads.
            max_size=self.lanes + 2,
            command_timeout_s=DATABASE_TIMEOUT_S,
            acquire_timeout_s=DATABASE_TIMEOUT_S,
        )
        await self.models.start(self._pool)
        self._task = asyncio.create_task(self._run())

    async def _close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for task in list(self._in_flight):
            task.cancel()
        await self.models.stop()
        if self._pool is not None:
            await self._pool.close()

    async def _collect(self) -> list[_Item]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        # Screenings already waiting (they arrived while the last batch ran) join at once,
        # even with no wait at all (MAX_WAIT_MS=0, the CPU default).
        while len(batch) < self.max_batch_size and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        free = asyncio.Semaphore(self.lanes)
        while True:
            await free.acquire()
            try:
                batch = await self._collect()
            except BaseException:
                free.release()
                raise
            task = asyncio.create_task(self._batch(batch))
            self._in_flight.add(task)
            self.peak_in_flight = max(self.peak_in_flight, len(self._in_flight))

            def done(task: asyncio.Task[None]) -> None:
                self._in_flight.discard(task)
                free.release()

            task.add_done_callback(done)

    async def _batch(self, batch: list[_Item]) -> None:
        try:
            await self._process(batch)
        except Exception as exc:
            # Each task decides whether to retry; the batcher itself keeps going.
            logger.exception("batch of %d failed", len(batch))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)

    async def _process(self, batch: list[_Item]) -> None:
        assert self._pool is not None
        claimed = await screenings.claim(self._pool, [item.screening_id for item in batch])
        todo = []
        for item in batch:
            if item.screening_id in claimed:
                todo.append(item)
            else:
                item.future.set_result(Outcome.ALREADY_FINISHED)
        if not todo:
            return
        clinical = np.stack([item.clinical for item in todo])
        model = self.models.current
        keep_serving = False
        for attempt in range(1, MAX_RESCORES + 1):
            record, inference_ms, decisions = await self._score(model, todo, clinical, keep_serving)
            if record.version_active:
                break
            newer = await self.models.refresh()
            if newer is None or newer.version == model.version or attempt == MAX_RESCORES - 1:
                # The active version could not be loaded (reported), or versions keep
                # switching: the one in hand writes, and scoring goes on.
                keep_serving = True
            if newer is not None:
                model = newer
            logger.info(
                "batch %d: the version that scored it was retired; scoring it again with %s",
                record.batch_id,
                model.version,
            )
        metrics.observe_batch(
            size=len(todo),
            queue_wait_s=[claimed[item.screening_id] for item in todo],
            model_s=inference_ms / 1000.0,
            model_version=model.version,
            written=record.written,
        )
        metrics.observe_decisions(
            model_version=model.version,
            reasons=[
                decision.reasons
                for item, decision in zip(todo, decisions, strict=True)
                if item.screening_id in record.written_ids
            ],
        )
        logger.info(
            "batch %d: %d screenings, %d written by %s, %.1f ms",
            record.batch_id,
            len(todo),
            record.written,
            model.version,
            inference_ms,
        )
        for item in todo:
            item.future.set_result(Outcome.WRITTEN)

    async def _score(
        self, model: LoadedModel, todo: list[_Item], clinical: np.ndarray, keep_serving: bool
    ) -> tuple[screenings.BatchRecord, float, list[Decision]]:
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        images = np.stack([
            item.image if item.image.shape[0] == model.input_size
            else await loop.run_in_executor(self._inference, item.reprocess, model.input_size)
            for item in todo
        ])  # fmt: skip
        started = time.perf_counter()
        prediction = await loop.run_in_executor(self._inference, model.predict, images, clinical)
        inference_ms = (time.perf_counter() - started) * 1000.0
        # The card's rule: suspicious when the cancer or the melanoma threshold is reached.
        decisions = model.decide(prediction)
        record = await screenings.record_batch(
            self._pool,
            [item.screening_id for item in todo],
            prediction.cancer,
            decisions,
            threshold=model.threshold,
            melanoma_threshold=model.melanoma_threshold,
            model_name=model.name,
            model_version=model.version,
            provider=model.provider,
            inference_ms=inference_ms,
            keep_serving=keep_serving,
        )
        return record, inference_ms, decisions
