"""Worst-case photos at once keep the gateway and the inference worker under their pods'
memory limits, read from deploy/k8s/base; each photo is accepted and scored, or refused
with an answer that names the limit.

A 7000 x 7000 PNG of one colour is 160 KB on the wire and 147 MB decoded: sixteen of them
at once once took the gateway to 2.9 GB and the worker to 12.3 GB. The peaks are each
process's VmHWM (its children's too: the gateway runs two uvicorn workers, as its
Deployment does), summed, which is no less than what the pod held at any moment.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

from skinscreen.runtime.commands import WORKER_COMMAND
from tests.conftest import DESIGN_EXAMPLE, REPO
from tests.serving.conftest import Process, create_keys, start_worker

from .conftest import start_gateway

MANIFESTS = REPO / "deploy" / "k8s" / "base"
# As the gateway's Deployment runs it (deploy/k8s/base/gateway.yaml).
GATEWAY_OPTIONS = ("--workers", "2")
SIDE = 7000
N_PNGS = 16
N_JPEGS = 4
UNITS = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}


def memory_limit(manifest: str, container: str) -> int:
    """The container's memory limit in bytes, as its manifest declares it."""
    for document in yaml.safe_load_all((MANIFESTS / manifest).read_text()):
        if document and document["kind"] == "Deployment":
            for spec in document["spec"]["template"]["spec"]["containers"]:
                if spec["name"] == container:
                    value: str = spec["resources"]["limits"]["memory"]
                    return int(value[:-2]) * UNITS[value[-2:]]
    raise AssertionError(f"no container {container} in a Deployment of {manifest}")


def process_tree(pid: int) -> list[int]:
    """The process and all its descendants (Linux: /proc)."""
    pids = [pid]
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        children = [
            int(child) for task in tasks for child in (task / "children").read_text().split()
        ]
    except (FileNotFoundError, ProcessLookupError):
        return pids
    for child in children:
        pids.extend(process_tree(child))
    return pids


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


def memory(process: Process, field: str) -> int:
    """`field` (VmHWM: the peak, VmRSS: now) summed over the process and its children."""
    assert process.popen is not None
    return sum(_status(pid, field) for pid in process_tree(process.popen.pid))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def variants(data: bytes, count: int, fmt: str) -> list[bytes]:
    """`count` files with the same pixels and different bytes (a text chunk, a comment)."""
    if fmt == "PNG":
        end = data.rindex(b"IEND") - 4
        return [data[:end] + _png_chunk(b"tEXt", b"n\0%d" % i) + data[end:] for i in range(count)]
    comment = [b"%d" % i for i in range(count)]
    return [data[:2] + b"\xff\xfe" + struct.pack(">H", 2 + len(c)) + c + data[2:] for c in comment]


@pytest.fixture(scope="module")
def photos() -> dict[str, list[bytes]]:
    """Worst cases: tiny PNGs of 49 megapixels, 2 MB JPEGs of as many, one over the limit."""
    pixels = np.full((SIDE, SIDE, 3), (200, 150, 120), np.uint8)
    pixels[::97] = 30  # stripes: a JPEG with something to code
    image = Image.fromarray(pixels)
    png, jpeg = io.BytesIO(), io.BytesIO()
    image.save(png, "PNG", compress_level=6)
    image.save(jpeg, "JPEG", quality=90)
    del image, pixels
    over = io.BytesIO()
    Image.new("RGB", (8000, 6251)).save(over, "PNG", compress_level=1)
    return {
        "png": variants(png.getvalue(), N_PNGS, "PNG"),
        "jpeg": variants(jpeg.getvalue(), N_JPEGS, "JPEG"),
        "over": [over.getvalue()],
    }


def post(url: str, headers: dict[str, str], data: bytes, name: str) -> httpx.Response:
    """POST as a phone app would; a 503 (decode memory busy) is tried again after Retry-After."""
    with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
        for _ in range(10):
            response = client.post(
                "/v1/screenings",
                files={"image": (name, data, "application/octet-stream")},
                data={"clinical": json.dumps(DESIGN_EXAMPLE)},
            )
            if response.status_code != 503:
                return response
            time.sleep(float(response.headers["Retry-After"]))
    return response


def test_worst_case_photos_at_once_stay_under_the_pods_memory_limits(
    deploy_env: dict[str, str], photos: dict[str, list[bytes]], tmp_path: Path
) -> None:
    gateway_limit = memory_limit("gateway.yaml", "gateway")
    worker_limit = memory_limit("inference.yaml", "inference")
    env = {**deploy_env, "CONCURRENCY": "16", "MAX_BATCH_SIZE": "16"}
    keys = create_keys(deploy_env["DATABASE_URL"])
    worker = Process(WORKER_COMMAND, env, tmp_path / "worker.log")
    worker.start()
    gateway = None
    try:
        start_worker(worker)
        gateway, url = start_gateway(env, tmp_path / "gateway.log", *GATEWAY_OPTIONS)
        uploads = [(data, "big.png") for data in photos["png"]]
        uploads += [(data, "big.jpg") for data in photos["jpeg"]]
        uploads += [(data, "over.png") for data in photos["over"]]
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(len(uploads)) as pool:
            answers = list(pool.map(lambda upload: post(url, keys.clinician, *upload), uploads))
        accepted: list[str] = []
        for (_, name), answer in zip(uploads, answers, strict=True):
            if answer.status_code == 202:
                assert name != "over.png", answer.text
                accepted.append(answer.headers["Location"])
            else:
                # Refused: too many pixels for the budget's limit, and the answer says so.
                assert answer.status_code == 413, answer.text
                detail: Any = answer.json()["detail"]
                assert "at most 50000000 allowed" in str(detail), detail
        assert len(accepted) == N_PNGS + N_JPEGS
        with httpx.Client(base_url=url, headers=keys.clinician, timeout=60) as client:
            for location in accepted:
                deadline = time.monotonic() + 90
                while True:
                    result = client.get(location, params={"wait": 20}).json()
                    if result["status"] in ("done", "failed") or time.monotonic() > deadline:
                        break
                assert result["status"] == "done", result
        elapsed = time.monotonic() - started
        gateway_peak, worker_peak = memory(gateway, "VmHWM"), memory(worker, "VmHWM")
        time.sleep(2)  # the budget trims when its last decode ends
        worker_after = memory(worker, "VmRSS")
        print(
            f"\n{len(uploads)} worst-case photos in {elapsed:.0f} s: gateway peak "
            f"{gateway_peak / 2**20:.0f} MiB (limit {gateway_limit / 2**20:.0f}), worker peak "
            f"{worker_peak / 2**20:.0f} MiB (limit {worker_limit / 2**20:.0f}), "
            f"worker after {worker_after / 2**20:.0f} MiB"
        )
        assert gateway_peak < gateway_limit
        assert worker_peak < worker_limit
        # What the burst decoded went back: the worker holds little more than its model.
        assert worker_after < worker_limit / 4
    finally:
        if gateway is not None:
            gateway.stop()
        worker.stop()
