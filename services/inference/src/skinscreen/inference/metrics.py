"""The inference worker's Prometheus metrics, and the HTTP endpoint that serves them.

The worker is one process (Celery's thread pool), so the default registry is
enough: call `serve(port)` once in `worker_init`, then the helpers below where
the work happens. Each metric's help text says where it is observed.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable, Sequence

from prometheus_client import Counter, Histogram, Info, start_http_server

BATCH_SIZE = Histogram(
    "skinscreen_inference_batch_size",
    "Screenings in one ONNX Runtime call; observed once per batch, before the call.",
    buckets=(1, 2, 4, 8, 12, 16, 24, 32, 48, 64),
)
QUEUE_WAIT = Histogram(
    "skinscreen_inference_queue_wait_seconds",
    "From a screening's acceptance by the gateway (its created_at) to the claim of the batch "
    "that scores it, just before the ONNX Runtime call, on the database's clock; observed once "
    "per screening of each batch written.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)
MODEL_DURATION = Histogram(
    "skinscreen_inference_model_duration_seconds",
    "Wall time of one ONNX Runtime call (a whole batch); observed once per batch.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
SCREENINGS_SCORED = Counter(
    "skinscreen_inference_screenings_scored_total",
    "Screenings whose result was written to PostgreSQL, by the model version that scored them.",
    ["model_version"],
)
SUSPICIOUS = Counter(
    "skinscreen_inference_suspicious_total",
    "Screenings written as suspicious, by model version and the rules of the model card's "
    "decision rule that fired: reasons is cancer_probability, melanoma_probability, or "
    "cancer_probability+melanoma_probability when both did; summed over reasons, the "
    "suspicious screenings. Observed once per batch written; counts only, no health data.",
    ["model_version", "reasons"],
)
MODEL = Info(
    "skinscreen_inference_model",
    "The model version this worker serves and the ONNX Runtime execution provider it runs on "
    "(CUDAExecutionProvider or CPUExecutionProvider); set on every successful load.",
)
MODEL_LOAD_FAILURES = Counter(
    "skinscreen_inference_model_load_failures_total",
    "Attempts to load a model version that failed (missing file, sha256 mismatch, runtime "
    "error); the worker keeps serving the version it had, if any.",
)

RECONCILED = Counter(
    "skinscreen_inference_reconciled_total",
    "Screenings the reconciler acted on, by model and action: requeued (no task for it in "
    "Redis, queued again) or failed (its task lost too often, or not scored in time); "
    "observed once per screening acted on. Above zero means Redis lost tasks or a model "
    "has no worker.",
    ["model_name", "action"],
)


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Serve /metrics on `host`:`port` from a daemon thread; call once, in worker_init.

    Loopback unless told otherwise (METRICS_HOST): a worker's port is never on a public
    interface by default; in Kubernetes it listens on the pod network, which a
    NetworkPolicy opens to Prometheus alone.
    """
    start_http_server(port, addr=host)


def observe_batch(
    *, size: int, queue_wait_s: Iterable[float], model_s: float, model_version: str, written: int
) -> None:
    """Record one batch: its size, each screening's wait, the model call, the results written."""
    BATCH_SIZE.observe(size)
    for seconds in queue_wait_s:
        QUEUE_WAIT.observe(seconds)
    MODEL_DURATION.observe(model_s)
    SCREENINGS_SCORED.labels(model_version).inc(written)


def observe_decisions(*, model_version: str, reasons: Iterable[Sequence[str]]) -> None:
    """Count the suspicious screenings of a batch written, each under the rules that fired."""
    for fired, count in Tally("+".join(each) for each in reasons if each).items():
        SUSPICIOUS.labels(model_version, fired).inc(count)


def model_loaded(*, name: str, version: str, provider: str) -> None:
    """Announce the version now serving, replacing the previous one (hot swap included)."""
    MODEL.info({"model_name": name, "model_version": version, "provider": provider})


def model_load_failed() -> None:
    MODEL_LOAD_FAILURES.inc()


RECONCILE_ACTIONS = ("requeued", "failed")


def reconciler_started(model_name: str) -> None:
    """Export this worker's model's series at 0, so a first action shows as an increase."""
    for action in RECONCILE_ACTIONS:
        RECONCILED.labels(model_name, action)


def reconciled(model_name: str, action: str) -> None:
    RECONCILED.labels(model_name, action).inc()
