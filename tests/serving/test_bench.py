"""`make bench` runs end to end: a short run on its own embedded stack prints every figure.

No timing is asserted (shared machines are noisy); the figures are for `make bench` to show.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

FIGURES = (
    r"machine: \d+ cores given; load average [\d.]+ [\d.]+ [\d.]+",
    r"worker: batches of up to \d+, waiting [\d.]+ ms; \d+ at once, \d+ ONNX Runtime threads each",
    r"model ([\w-]+); raw ONNX Runtime: [\d.]+ screenings/s \(batches of \d+\)",
    r"end to end, 4 clients: [\d.]+ screenings/s \((\d+) in 3 s\); p50 \d+ ms, p95 \d+ ms, p99",
    r"batch sizes: (\d+x\d+(, )?)+",
    r"raw ONNX Runtime again: [\d.]+ screenings/s; mean [\d.]+",
    r"ratio end to end / raw: [\d.]+",
    r"at half saturation \([\d.]+/s\): p50 \d+ ms, p95 \d+ ms, p99 \d+ ms",
    r"load average at the end: [\d.]+ [\d.]+ [\d.]+",
)


@pytest.mark.parametrize("model", [None, "skinscreen-dermoscopy"])
def test_bench_prints_throughput_latency_batches_and_ratio(
    pad_ufes_dir: Path, model: str | None
) -> None:
    environ = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    environ.pop("MODEL_NAME", None)
    chosen = [] if model is None else ["--model", model]
    completed = subprocess.run(
        [sys.executable, "-m", "skinscreen.dev.bench", "--photos", str(pad_ufes_dir),
         "--limit", "8", "--clients", "4", "--duration", "3", "--raw-duration", "1", *chosen],
        env=environ, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    for figure in FIGURES:
        assert re.search(figure, completed.stdout), (figure, completed.stdout)
    served = re.search(FIGURES[2], completed.stdout)
    assert served is not None
    assert served.group(1) == (model or "skinscreen-fusion")
    saturated = re.search(FIGURES[3], completed.stdout)
    assert saturated is not None
    assert int(saturated.group(1)) > 0


def test_bench_names_a_missing_photo_folder(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "skinscreen.dev.bench", "--photos", str(tmp_path / "none")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert completed.returncode != 0
    assert str(tmp_path / "none") in completed.stderr
