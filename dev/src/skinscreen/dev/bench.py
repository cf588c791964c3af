"""`make bench`: end-to-end throughput and latency of the whole stack, against raw ONNX Runtime.

Starts the stack on embedded servers (or uses --url with DATABASE_URL and a
clinician's API key in SKINSCREEN_API_KEY), posts
real PAD-UFES-20 photos from many concurrent clients, and measures in the same
run, on the same machine, the raw ONNX Runtime throughput of the same model and an
in-process FastAPI server's on the same model, photos and client (`baseline`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg
import numpy as np

from skinscreen.core.card import CARD_FILE, MODEL_FILE
from skinscreen.core.clinical import ClinicalInput, encode_many
from skinscreen.core.imaging import load_and_preprocess
from skinscreen.core.pad_ufes import DataError, load_pad_ufes
from skinscreen.inference.model import load_version
from skinscreen.inference.settings import Settings, available_cores
from skinscreen.runtime import registry
from skinscreen.runtime.artifacts import fetch_model

from . import baseline
from .embedded import free_port
from .stack import Stack


@dataclass
class Photo:
    data: bytes
    path: Path
    clinical: ClinicalInput


def read_photos(folder: Path, limit: int) -> list[Photo]:
    """Photos of PAD-UFES-20 that are present, with their clinical answers."""
    try:
        samples = load_pad_ufes(folder).samples[:limit]
    except DataError as error:
        raise SystemExit(f"skinscreen-bench: {error}") from None
    return [Photo(s.image_path.read_bytes(), s.image_path, s.clinical) for s in samples]


async def active_version(settings: Settings) -> registry.ModelVersion:
    """The version the worker serves: the registry's active one."""
    connection = await asyncpg.connect(settings.DATABASE_URL)
    try:
        version = await registry.get_active(connection, settings.MODEL_NAME)
    finally:
        await connection.close()
    if version is None:
        raise SystemExit(f"skinscreen-bench: no active version of {settings.MODEL_NAME}")
    return version


def raw_throughput(settings: Settings, photos: list[Photo], duration_s: float) -> float:
    """Screenings per second of ONNX Runtime alone, in batches of MAX_BATCH_SIZE, one call at
    a time on all cores (INTRA_OP_THREADS as set, 0: ONNX Runtime's own default, all cores)."""
    model = load_version(asyncio.run(active_version(settings)), settings.INTRA_OP_THREADS)
    size = settings.MAX_BATCH_SIZE
    chosen = (photos * (size // len(photos) + 1))[:size]
    images = np.stack([load_and_preprocess(photo.path, model.input_size) for photo in chosen])
    clinical = encode_many([photo.clinical for photo in chosen])
    # predict runs every output the card declares (diagnosis_probabilities too), as the
    # worker does; the decision rule after it is the worker's, not ONNX Runtime's, time.
    model.predict(images, clinical)  # warm-up: first call allocates
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < duration_s:
        model.predict(images, clinical)
        done += size
    return done / (time.perf_counter() - started)


async def screen_one(session: aiohttp.ClientSession, photo: Photo, model: str) -> float:
    """Latency of one screening, from POST to its result."""
    started = time.perf_counter()
    form = aiohttp.FormData()
    form.add_field("image", photo.data, filename=photo.path.name, content_type="image/jpeg")
    # An image-only model ignores the answers; sending them keeps the requests alike.
    form.add_field("clinical", photo.clinical.model_dump_json())
    form.add_field("model", model)
    async with session.post("/v1/screenings", data=form) as response:
        response.raise_for_status()
        if response.status == 200:  # the in-process baseline answers with the result
            await response.read()
            return time.perf_counter() - started
        location = response.headers["Location"]
    while True:
        async with session.get(location, params={"wait": "30"}) as response:
            body = await response.json()
        if body["status"] == "done":
            return time.perf_counter() - started
        if body["status"] == "failed":
            raise RuntimeError(f"screening failed: {body['failure_reason']}")


API_KEY_ENV = "SKINSCREEN_API_KEY"


def client_session(url: str, connections: int) -> aiohttp.ClientSession:
    """The load generator shares the machine with the stack under test, so it is aiohttp: at
    saturation on 2 cores it took 4% of a core where httpx took 30% (top, README)."""
    return aiohttp.ClientSession(
        base_url=url,
        # A clinician's key: main() sets it to the started stack's development clinic key.
        headers={"Authorization": f"Bearer {os.environ.get(API_KEY_ENV, '')}"},
        timeout=aiohttp.ClientTimeout(total=60),
        connector=aiohttp.TCPConnector(limit=connections),
    )


async def closed_loop(
    url: str, photos: list[Photo], model: str, clients: int, duration_s: float
) -> list[float]:
    """`clients` clients, each sending its next screening once the last one is done."""
    latencies: list[float] = []
    deadline = time.perf_counter() + duration_s
    async with client_session(url, clients) as session:

        async def one_client(index: int) -> None:
            sent = index
            while time.perf_counter() < deadline:
                latencies.append(await screen_one(session, photos[sent % len(photos)], model))
                sent += clients

        await asyncio.gather(*(one_client(index) for index in range(clients)))
    return latencies


async def open_loop(
    url: str, photos: list[Photo], model: str, rate: float, duration_s: float
) -> list[float]:
    """Screenings arriving at a fixed `rate` per second, whatever the replies."""
    tasks = []
    async with client_session(url, 0) as session:
        started = time.perf_counter()
        for index in range(int(rate * duration_s)):
            delay = started + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            photo = photos[index % len(photos)]
            tasks.append(asyncio.create_task(screen_one(session, photo, model)))
        return list(await asyncio.gather(*tasks))


async def batch_sizes(database_url: str, since: datetime) -> Counter[int]:
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT size, count(*) AS batches FROM inference_batches"
            " WHERE created_at >= $1 GROUP BY size",
            since,
        )
    finally:
        await connection.close()
    return Counter({row["size"]: row["batches"] for row in rows})


def baseline_throughput(
    settings: Settings, photos: list[Photo], args: argparse.Namespace
) -> tuple[float, list[float]]:
    """Screenings per second, and latencies, of the in-process baseline on the active model."""
    version = asyncio.run(active_version(settings))
    data, card = fetch_model(version.artifact_uri, version.sha256)
    with tempfile.TemporaryDirectory(prefix="skinscreen-baseline-") as folder:
        (Path(folder) / MODEL_FILE).write_bytes(data)
        (Path(folder) / CARD_FILE).write_text(card.model_dump_json())
        log = Path(folder) / "baseline.log"
        with baseline.serving(Path(folder), settings.INTRA_OP_THREADS, log) as url:
            started = time.perf_counter()
            latencies = asyncio.run(
                closed_loop(url, photos, settings.MODEL_NAME, args.clients, args.duration)
            )
            return len(latencies) / (time.perf_counter() - started), latencies


def percentiles(latencies: list[float]) -> str:
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return "p50 {:.0f} ms, p95 {:.0f} ms, p99 {:.0f} ms".format(
        *(1000 * cuts[index - 1] for index in (50, 95, 99))
    )


def load_average() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def run(args: argparse.Namespace, photos: list[Photo], url: str, settings: Settings) -> None:
    model = settings.MODEL_NAME
    # Shared machines: what else ran says how far to trust the figures.
    print(f"machine: {available_cores()} cores given; load average {load_average()} (1, 5, 15 min)")
    print(
        f"worker: batches of up to {settings.MAX_BATCH_SIZE}, waiting {settings.MAX_WAIT_MS:g} "
        f"ms; {settings.LANES} at once, {settings.intra_op_threads} ONNX Runtime threads each"
    )
    raw_before = raw_throughput(settings, photos, args.raw_duration)
    print(f"model {model}; raw ONNX Runtime: {raw_before:.1f} screenings/s "
          f"(batches of {settings.MAX_BATCH_SIZE})")  # fmt: skip

    since = datetime.now(UTC)
    started = time.perf_counter()
    saturated = asyncio.run(closed_loop(url, photos, model, args.clients, args.duration))
    throughput = len(saturated) / (time.perf_counter() - started)
    sizes = asyncio.run(batch_sizes(settings.DATABASE_URL, since))
    print(f"end to end, {args.clients} clients: {throughput:.1f} screenings/s "
          f"({len(saturated)} in {args.duration:.0f} s); {percentiles(saturated)}")  # fmt: skip
    print("batch sizes: " + ", ".join(f"{size}x{count}" for size, count in sorted(sizes.items())))
    # Shared machines drift: the raw rate is measured again after the saturated phase, and
    # the ratio is against the mean of both.
    raw_after = raw_throughput(settings, photos, args.raw_duration)
    raw = (raw_before + raw_after) / 2
    print(f"raw ONNX Runtime again: {raw_after:.1f} screenings/s; mean {raw:.1f}")
    # The peer: the same model, photos and client against a plain FastAPI server that
    # scores in the request (skinscreen.dev.baseline), while the stack stands idle.
    baseline, baseline_latencies = baseline_throughput(settings, photos, args)
    print(f"in-process FastAPI baseline, {args.clients} clients: {baseline:.1f} screenings/s "
          f"({len(baseline_latencies)} in {args.duration:.0f} s); "
          f"{percentiles(baseline_latencies)}")  # fmt: skip
    print(f"ratio end to end / raw: {throughput / raw:.2f}; "
          f"end to end / in-process: {throughput / baseline:.2f}")  # fmt: skip

    half = asyncio.run(open_loop(url, photos, model, throughput / 2, args.duration))
    print(f"at half saturation ({throughput / 2:.1f}/s): {percentiles(half)}")
    print(f"load average at the end: {load_average()}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--photos", type=Path, default=Path("../shared/data/pad-ufes-20"))
    parser.add_argument("--limit", type=int, default=200, help="distinct photos to send")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per phase")
    parser.add_argument("--raw-duration", type=float, default=10.0)
    parser.add_argument("--url", help="a running gateway (needs DATABASE_URL); default: start one")
    parser.add_argument(
        "--model", help="the model to screen with, e.g. skinscreen-dermoscopy (default MODEL_NAME)"
    )
    args = parser.parse_args(argv)
    photos = read_photos(args.photos, args.limit)  # before starting anything: fail fast
    if args.url:
        if not os.environ.get(API_KEY_ENV):
            raise SystemExit(
                f"skinscreen-bench: --url needs a clinician's API key in {API_KEY_ENV}"
            )
        settings = Settings()
        if args.model:
            settings = settings.model_copy(update={"MODEL_NAME": args.model})
        run(args, photos, args.url, settings)
        return
    with tempfile.TemporaryDirectory(prefix="skinscreen-bench-") as data:
        environ = {
            key: value for key, value in os.environ.items()
            if key not in ("DATABASE_URL", "REDIS_URL")
        }  # fmt: skip
        if args.model:
            # The stack's one inference worker serves it.
            environ["MODEL_NAME"] = args.model
        log = Path(data) / "stack.log"
        stack = Stack(Path(data), "127.0.0.1", free_port(), environ, log=log, with_trainer=False)
        try:
            stack.start()
            assert stack.api_keys is not None
            os.environ[API_KEY_ENV] = stack.api_keys.clinician
            run(args, photos, stack.url, Settings.model_validate(stack.env))
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
