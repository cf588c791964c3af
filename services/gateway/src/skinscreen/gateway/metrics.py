"""The gateway's Prometheus metrics: requests, latency, rejected inputs, upload sizes, /metrics
on a port of its own (`MetricsListener`), never on the public API port.

With several uvicorn workers each is its own process; set PROMETHEUS_MULTIPROC_DIR
(an empty folder, before the process starts) and every worker writes its values
there, so whichever worker answers /metrics reports the sum of all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

import uvicorn
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .deps import Services
from .queue_metrics import QueueCollector, read_queue_state, served_queues
from .routes.screenings import PREFIX as SCREENINGS

# Requests that matched no route share one label value, so unknown paths cannot
# create a series each.
UNMATCHED_ROUTE: Final = "unmatched"
UPLOAD_ROUTE: Final = ("POST", SCREENINGS)

REQUESTS = Counter(
    "skinscreen_gateway_requests_total",
    "HTTP requests answered, by route template, method and status code.",
    ["route", "method", "status"],
)
REQUEST_DURATION = Histogram(
    "skinscreen_gateway_request_duration_seconds",
    "Time from a request's arrival to the end of its response, by route template and method.",
    ["route", "method"],
    # Long polls (?wait=N) take up to 30 s by design; submissions should stay well under 1 s.
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0),
)
REJECTED_INPUTS = Counter(
    "skinscreen_gateway_rejected_inputs_total",
    "Inputs refused with 413, 415 or 422, by reason (error type) and field.",
    ["reason", "field"],
)
UPLOAD_SIZE = Histogram(
    "skinscreen_gateway_upload_size_bytes",
    "Bytes received in the body of each POST /v1/screenings (photo, clinical JSON, framing).",
    buckets=(64e3, 256e3, 512e3, 1e6, 2e6, 4e6, 8e6, 16e6, 32e6),
)

# Image refusals carry a plain message; their status code says which kind they are.
_IMAGE_REASONS: Final = {413: "too_large", 415: "unsupported_type", 422: "corrupt"}
# Starlette's own refusal when the body outgrows the route's limit, before any parsing.
_BODY_LIMIT_DETAIL: Final = "Content Too Large"


def _field(loc: Sequence[Any], reason: str) -> str:
    """`clinical.age`, `image`, `cursor`: the location without where it came in (body, query)."""
    parts = [str(part) for part in loc[1:]] or [str(part) for part in loc]
    if reason == "extra_forbidden" and parts:
        # The name of an unknown field is whatever the client sent: not a label value.
        parts[-1] = "*"
    return ".".join(parts) or "*"


def record_rejection(status: int, detail: Any) -> None:
    """Count a refused input; `detail` is the HTTPException's or the validation error's."""
    if isinstance(detail, list):
        for item in detail:
            if isinstance(item, dict) and "type" in item:
                reason = str(item["type"])
                REJECTED_INPUTS.labels(reason, _field(item.get("loc", ()), reason)).inc()
    elif status in _IMAGE_REASONS:
        field = "body" if detail == _BODY_LIMIT_DETAIL else "image"
        REJECTED_INPUTS.labels(_IMAGE_REASONS[status], field).inc()


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


class MetricsMiddleware:
    """Counts and times every HTTP request; a pure ASGI middleware, so streaming is untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # An exception before the response starts ends as a 500 from the server.
        status = 500
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def status_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, counting_receive, status_send)
        finally:
            route, method = _route(scope), scope["method"]
            REQUESTS.labels(route, method, str(status)).inc()
            REQUEST_DURATION.labels(route, method).observe(time.perf_counter() - started)
            if (method, route) == UPLOAD_ROUTE:
                UPLOAD_SIZE.observe(received)


def _exposition(*extra: QueueCollector) -> bytes:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        for collector in extra:
            registry.register(collector)
        return generate_latest(registry)
    # One process: its default registry, plus this scrape's queue readings.
    scrape = CollectorRegistry()
    for collector in extra:
        scrape.register(collector)
    return generate_latest(REGISTRY) + generate_latest(scrape)


async def _metrics(services: Services) -> Response:
    """Prometheus text format: this gateway's series and the Celery queues'."""
    queues = await served_queues(services.pool)
    state = await read_queue_state(services.redis, services.pool, queues)
    # Reading every worker's files is blocking I/O; keep it off the event loop.
    body = await run_in_threadpool(_exposition, QueueCollector(state))
    return Response(body, media_type=CONTENT_TYPE_LATEST)


class _QuietServer(uvicorn.Server):
    """uvicorn's server without its signal handlers: the API's server owns SIGTERM/SIGINT
    (graceful shutdown); this one is stopped by the app's lifespan."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class MetricsListener:
    """/metrics on a port of its own (METRICS_HOST:METRICS_PORT), off the API's port.

    The API port is public; metrics are for Prometheus alone. Loopback by default; in
    Kubernetes the pod network, which a NetworkPolicy opens to the monitoring namespace.
    Every uvicorn worker process binds the port with SO_REUSEPORT and answers with the sum
    of all workers (PROMETHEUS_MULTIPROC_DIR), so any of them can take a scrape.
    """

    def __init__(self, host: str, port: int, services: Callable[[], Services]) -> None:
        self.host = host
        self.port = port
        metrics_app = Starlette(routes=[Route("/metrics", self._endpoint, methods=["GET"])])
        self._services = services
        # No log_config, no log_level, access_log left on: uvicorn.Config configures the
        # process-wide `uvicorn.*` loggers otherwise, which would silence the API server's
        # own access log and lower its level. Scrapes show in the access log like requests.
        self._server = _QuietServer(
            uvicorn.Config(metrics_app, lifespan="off", log_config=None, log_level=None)
        )
        self._task: asyncio.Task[None] | None = None

    async def _endpoint(self, request: Request) -> Response:
        return await _metrics(self._services())

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise RuntimeError(
                f"METRICS_HOST:METRICS_PORT {self.host}:{self.port} cannot be bound ({exc}); "
                "set METRICS_PORT to a free port"
            ) from exc
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started and not self._task.done():
            await asyncio.sleep(0.01)
        if self._task.done():
            self._task.result()  # the server's own error, if it could not start

    async def stop(self) -> None:
        if self._task is not None:
            self._server.should_exit = True
            await self._task
