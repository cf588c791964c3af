"""Real services for the deploy tests: the serving tests' servers, gateways started as in pods.

The servers and the model store are the serving tests' fixtures, imported so
this package gets its own PostgreSQL and Redis; each test module takes a fresh
database on them and a Redis database of its own, so queues never mix.
"""

from __future__ import annotations

import functools
import itertools
import os
from pathlib import Path

import httpx
import pytest

from skinscreen.core.pad_ufes import Sample, load_pad_ufes
from skinscreen.dev.embedded import free_port
from tests.conftest import PAD_UFES
from tests.scrape import Scrape  # noqa: F401  (the deploy tests read it from here)
from tests.serving.conftest import (  # noqa: F401  (fixtures, used by name)
    HOST,
    MODEL_NAME,
    Launcher,
    Process,
    Servers,
    launcher,
    model_store,
    own_database,
    servers,
)
from tests.waiting import wait_until

_stacks = itertools.count(1)


@functools.cache
def _real_photos() -> list[Sample]:
    return load_pad_ufes(PAD_UFES).samples


def photo(index: int) -> bytes:
    """The index-th real PAD-UFES-20 phone photo (`deploy_env` skips when the data is absent)."""
    return _real_photos()[index].image_path.read_bytes()


def submit(client: httpx.Client, index: int) -> httpx.Response:
    """POST the index-th real photo with its own clinical answers, as a phone app would."""
    sample = _real_photos()[index]
    return client.post(
        "/v1/screenings",
        files={"image": (sample.image_path.name, photo(index), "image/jpeg")},
        data={"clinical": sample.clinical.model_dump_json()},
    )


@pytest.fixture(scope="module")
def deploy_env(
    servers: Servers,  # noqa: F811  (the imported fixture)
    model_store: Path,  # noqa: F811
    pad_ufes_dir: Path,
    launcher: Launcher,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    """The environment a module's services run with, migrated by the pre-start step."""
    number = next(_stacks)
    env = {
        **os.environ,
        "DATABASE_URL": own_database(servers, f"deploy{number}"),
        "REDIS_URL": servers.redis_url.rsplit("/", 1)[0] + f"/{number}",
        "BLOB_DIR": str(tmp_path_factory.mktemp("blobs")),
        "MODEL_STORE": str(model_store),
        "MODEL_NAME": MODEL_NAME,
        "MAX_BATCH_SIZE": "8",
        "CONCURRENCY": "8",
        "MAX_WAIT_MS": "20",
        "INTRA_OP_THREADS": "1",
        "RETRY_BACKOFF_S": "0.2",
        "CELERY_VISIBILITY_TIMEOUT_S": "60",
    }
    launcher.prestart(env)
    return env


def start_gateway(
    env: dict[str, str],
    log: Path,
    *options: str,
    launcher: Launcher = HOST,  # noqa: F811  (not the fixture: how to start it)
) -> tuple[Process, str]:
    """A gateway under uvicorn, started as the Deployment starts it (`options`: --workers, ...)."""
    port = free_port()
    process = launcher.gateway(env, log, port, "--log-level", "warning", *options)
    process.start()
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert process.popen is not None
        if process.popen.poll() is not None:
            raise RuntimeError(f"gateway exited; log:\n{log.read_text()[-4000:]}")
        try:
            return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, lambda: f"gateway not ready; log:\n{log.read_text()[-4000:]}", 120)
    return process, url
