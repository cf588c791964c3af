"""The trainer worker's Prometheus metrics: run durations and outcomes, the last run's scores.

A Celery prefork worker runs each training run in a child process, so set
PROMETHEUS_MULTIPROC_DIR (an empty folder) for the worker: children write their
values there and `serve()`, called in the parent's worker_init, reports them.
Without it (solo or thread pool) the process's own registry is served.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Final

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.multiprocess import MultiProcessCollector

from skinscreen.core.card import MetricSummary

OUTCOMES: Final = ("succeeded", "failed", "cancelled")

RUNS = Counter(
    "skinscreen_trainer_runs_total",
    "Training runs finished, by outcome (succeeded, failed, cancelled); observed when a run ends.",
    ["outcome"],
)
RUN_DURATION = Histogram(
    "skinscreen_trainer_run_duration_seconds",
    "Wall time of finished training runs, by outcome; observed when a run ends.",
    ["outcome"],
    buckets=(60, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 57600),
)
LAST_RUN_FINISHED = Gauge(
    "skinscreen_trainer_last_run_finished_timestamp_seconds",
    "Unix time the last training run ended, by outcome; set when a run ends.",
    ["outcome"],
    multiprocess_mode="mostrecent",
)
LAST_RUN_METRIC = Gauge(
    "skinscreen_trainer_last_run_metric_ratio",
    "Cross-validated score of the last succeeded run (roc_auc, recall, balanced_accuracy, "
    "...), mean and std over folds, as in its model card; set when a run succeeds.",
    ["metric", "statistic"],
    multiprocess_mode="mostrecent",
)


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Serve /metrics on `host`:`port` from a daemon thread; call once, in the parent's
    worker_init. Loopback unless told otherwise (METRICS_HOST; 0.0.0.0 in Kubernetes)."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        start_http_server(port, addr=host, registry=registry)
    else:
        start_http_server(port, addr=host, registry=REGISTRY)


def observe_run(
    outcome: str,
    duration_s: float,
    cross_validation: Mapping[str, MetricSummary] | None = None,
) -> None:
    """Record a finished run; pass the published card's cross_validation when it succeeded."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome {outcome!r}; allowed: {', '.join(OUTCOMES)}")
    RUNS.labels(outcome).inc()
    RUN_DURATION.labels(outcome).observe(duration_s)
    LAST_RUN_FINISHED.labels(outcome).set(time.time())
    for metric, summary in (cross_validation or {}).items():
        LAST_RUN_METRIC.labels(metric, "mean").set(summary.mean)
        LAST_RUN_METRIC.labels(metric, "std").set(summary.std)
