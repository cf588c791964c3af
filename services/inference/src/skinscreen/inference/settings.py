"""The inference worker's settings, read from the environment (pydantic-settings)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Final

from pydantic import Field, model_validator

from skinscreen.runtime.settings import SharedSettings

from .reconciler import ReconcilerSettings


@dataclass(frozen=True)
class Batching:
    max_batch_size: int
    max_wait_ms: float


# MAX_BATCH_SIZE and MAX_WAIT_MS when unset, by the provider the worker will run on (the
# first of `model.providers()`). On a GPU one call on many photos costs little more than
# on one, so batches are large and worth a short wait. On a CPU a photo costs more in a
# batch than alone (docs/benchmarks.md: the lean fusion graph on 2 cores, one thread per
# call, 45 photos/s at batch 1 against 37 at batch 4; a worker at saturation spent 29 ms of
# CPU a screening at batch 1 against 35 at batch 4), so each call scores one photo, with no
# wait, and the cores are shared by running one call per core at once (LANES).
BATCHING_BY_PROVIDER: Final[dict[str, Batching]] = {
    "CUDAExecutionProvider": Batching(max_batch_size=32, max_wait_ms=10.0),
    "CPUExecutionProvider": Batching(max_batch_size=1, max_wait_ms=0.0),
}


# Fewer held tasks than this stall deliveries even with small batches. `make bench` on 2
# shared cores, CPU batches of 4: CONCURRENCY 8 gave p95 1008 ms at half saturation, 32
# gave 115 ms (docs/benchmarks.md). The likely cause (not proven): with every slot taken,
# kombu's Redis transport stops fetching and resumes on its next poll, up to 1 s later.
MIN_CONCURRENCY: Final = 32


# Batches in flight at once when LANES is unset, on CUDA: one is scored while the other is
# claimed or written. On CPU: one per core given (`available_cores`).
CUDA_LANES: Final = 2
# Where a container's CPU limit is (cgroup v2): "<quota> <period>" or "max <period>".
CGROUP_CPU_MAX: Final = Path("/sys/fs/cgroup/cpu.max")


def available_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The cores this process is given: those it may run on (its affinity), capped by its
    cgroup's CPU quota (a Kubernetes CPU limit), rounded up; at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass  # no cgroup v2 limit to read
    return max(1, cores)


def default_lanes() -> int:
    from .model import providers  # onnxruntime: only when a default is needed

    return CUDA_LANES if providers()[0] == "CUDAExecutionProvider" else available_cores()


def batching_defaults() -> Batching:
    from .model import providers  # onnxruntime: only when a default is needed

    return BATCHING_BY_PROVIDER[providers()[0]]


class Settings(SharedSettings):
    """The worker's own knobs, on top of those it shares with the gateway."""

    MAX_BATCH_SIZE: int = Field(
        default_factory=lambda: batching_defaults().max_batch_size,
        gt=0,
        description="Most screenings in one ONNX Runtime call; unset: by provider "
        "(BATCHING_BY_PROVIDER).",
    )
    MAX_WAIT_MS: float = Field(
        default_factory=lambda: batching_defaults().max_wait_ms,
        ge=0,
        description="Longest wait for a batch to fill after its first screening (those "
        "already waiting always join); unset: by provider (BATCHING_BY_PROVIDER).",
    )
    CONCURRENCY: int = Field(
        0,
        ge=0,
        description="Tasks held at once (worker threads); 0 means 2 x MAX_BATCH_SIZE x LANES, "
        "and at least MIN_CONCURRENCY.",
    )
    MAX_RETRIES: int = Field(5, ge=0, description="Retries on transient errors before `failed`.")
    RETRY_BACKOFF_S: float = Field(
        1.0,
        gt=0,
        description="Longest delay before the first retry; doubles each time. Each delay is "
        "drawn uniformly below it (full jitter), so retries after one outage spread out.",
    )
    RETRY_BACKOFF_MAX_S: float = Field(60.0, gt=0, description="Longest delay before any retry.")
    RESULT_TIMEOUT_S: float = Field(
        120.0, gt=0, description="Longest a task waits for its batch before retrying."
    )
    MODEL_POLL_S: float = Field(
        30.0,
        gt=0,
        description="How often the worker re-reads the registry's active version, in case a "
        "pub/sub announcement was missed.",
    )
    LANES: int = Field(
        default_factory=default_lanes,
        gt=0,
        description="Batches scored at once, each in its own ONNX Runtime call on its own "
        "thread; unset: one per core given on CPU, 2 on CUDA.",
    )
    INTRA_OP_THREADS: int = Field(
        0,
        ge=0,
        description="ONNX Runtime threads per call; 0: the cores given shared between the "
        "lanes (at least 1 each).",
    )
    # A worker decodes every photo in full (9 bytes per pixel at the peak, 16 for WebP): 1024 MB
    # is two photos at the gateway's 50-megapixel limit at once, beside the model and the
    # batches, under the pod's 4 GiB; the rest wait their turn (DECODE_WAIT_S, then a retry).
    DECODE_MEMORY_BUDGET_MB: int = Field(
        1024, gt=0, description="Memory one worker spends decoding photos at once."
    )
    DECODE_WAIT_S: float = Field(
        60.0, gt=0, description="Longest a task waits for decode memory before it retries."
    )
    LOG_LEVEL: str = "INFO"
    RECONCILE_INTERVAL_S: float = Field(
        30.0, gt=0, description="How often the reconciler looks for stuck screenings."
    )
    RECONCILE_AFTER_S: float = Field(
        600.0,
        gt=0,
        description="A screening queued or running with no activity for this long and no "
        "task in Redis is queued again.",
    )
    RECONCILE_MAX_REQUEUES: int = Field(
        3, ge=0, description="Times a screening is queued again before it fails."
    )
    RECONCILE_GIVE_UP_S: float = Field(
        1800.0,
        gt=0,
        description="A screening not scored this long after acceptance fails (e.g. no worker "
        "serves its model), so its clinician is told.",
    )

    @model_validator(mode="after")
    def _enough_threads_to_fill_a_batch(self) -> Settings:
        if self.CONCURRENCY == 0:
            self.CONCURRENCY = max(2 * self.MAX_BATCH_SIZE * self.LANES, MIN_CONCURRENCY)
        if self.CONCURRENCY < self.MAX_BATCH_SIZE:
            raise ValueError(
                f"CONCURRENCY={self.CONCURRENCY} is below MAX_BATCH_SIZE={self.MAX_BATCH_SIZE}: "
                "a batch could never fill; allowed: CONCURRENCY >= MAX_BATCH_SIZE, or 0"
            )
        return self

    @model_validator(mode="after")
    def _give_up_after_requeue(self) -> Settings:
        if self.RECONCILE_GIVE_UP_S <= self.RECONCILE_AFTER_S:
            raise ValueError(
                f"RECONCILE_GIVE_UP_S={self.RECONCILE_GIVE_UP_S} must exceed "
                f"RECONCILE_AFTER_S={self.RECONCILE_AFTER_S}: a screening would fail before "
                "it could be queued again"
            )
        return self

    @property
    def intra_op_threads(self) -> int:
        """ONNX Runtime threads for each lane's call: INTRA_OP_THREADS, or the cores given
        shared between the lanes, so the calls do not fight each other for them."""
        return self.INTRA_OP_THREADS or max(1, available_cores() // self.LANES)

    @property
    def reconciler(self) -> ReconcilerSettings:
        return ReconcilerSettings(
            interval_s=self.RECONCILE_INTERVAL_S,
            after_s=self.RECONCILE_AFTER_S,
            max_requeues=self.RECONCILE_MAX_REQUEUES,
            give_up_s=self.RECONCILE_GIVE_UP_S,
        )


@lru_cache
def get_settings() -> Settings:
    return Settings()
