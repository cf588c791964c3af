"""Real servers for the serving tests: embedded PostgreSQL and Redis, a worker and gateways.

Nothing is faked: the gateway runs under uvicorn, the worker is a real Celery
worker on a real Redis, results land in a real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID

import asyncpg
import httpx
import numpy as np
import onnxruntime as ort
import pytest
from redis import Redis

from skinscreen.core.card import ModelCard, read_card, verified_model
from skinscreen.core.clinical import ClinicalInput, encode_many
from skinscreen.core.decision import DecisionRule
from skinscreen.core.imaging import load_and_preprocess
from skinscreen.core.pad_ufes import DIAGNOSES, load_pad_ufes
from skinscreen.dev.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from skinscreen.runtime import accounts
from skinscreen.runtime.accounts import Scope
from skinscreen.runtime.artifacts import ArtifactStore
from skinscreen.runtime.commands import (
    PRESTART_COMMAND,
    TRAINER_COMMAND,
    WORKER_COMMAND,
    gateway_command,
)
from tests.conftest import REPO, SHARED_DATA
from tests.scrape import Scrape
from tests.waiting import wait_until

MODEL_NAME = "skinscreen-fusion"
# Short, so the fault test sees a killed worker's tasks come back within seconds.
VISIBILITY_TIMEOUT_S = 6
# Short, so a screening whose task was lost is queued again within seconds; longer than a
# batch takes on a slow machine, so the reconciler sees only screenings that are stuck.
RECONCILE_AFTER_S = 15


@dataclass
class Photo:
    path: Path
    clinical: ClinicalInput
    # 1 for a skin cancer (BCC, MEL, SCC), 0 otherwise, as PAD-UFES-20 labels it.
    label: int = 0


def both_classes(photos: list[Photo], per_class: int) -> list[Photo]:
    """The first `per_class` cancers and benign lesions, alternating."""
    cancers = [photo for photo in photos if photo.label == 1][:per_class]
    benign = [photo for photo in photos if photo.label == 0][:per_class]
    assert len(cancers) == len(benign) == per_class
    return [photo for pair in zip(cancers, benign, strict=True) for photo in pair]


def ranking_auc(probabilities: list[float], labels: list[int]) -> float:
    """ROC AUC: the share of (cancer, benign) pairs in which the cancer scores higher (ties
    count half). A model that gives every photo the same value scores 0.5."""
    positives = [p for p, label in zip(probabilities, labels, strict=True) if label == 1]
    negatives = [p for p, label in zip(probabilities, labels, strict=True) if label == 0]
    assert positives, "an AUC needs cancers"
    assert negatives, "an AUC needs benign lesions"
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


@dataclass(frozen=True)
class Keys:
    """API keys on one stack's database: a clinician's key of `clinic_id`, and an operator's.
    `clinician` and `operator` are the headers that send them."""

    clinic_id: UUID
    clinician_key: str
    operator_key: str

    @property
    def clinician(self) -> dict[str, str]:
        return bearer(self.clinician_key)

    @property
    def operator(self) -> dict[str, str]:
        return bearer(self.operator_key)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


_clinics = itertools.count(1)


def create_key(database_url: str, clinic_id: UUID | None, *scopes: Scope) -> str:
    """One more key, with `scopes`, of `clinic_id`."""

    async def create() -> str:
        connection = await asyncpg.connect(database_url)
        try:
            made = await accounts.create_key(connection, scopes=scopes, clinic_id=clinic_id)
        finally:
            await connection.close()
        return made.secret

    return asyncio.run(create())


def create_keys(database_url: str, clinic: str | None = None) -> Keys:
    """A new clinic with a clinician key, and an operator key (of no clinic), straight in the
    database as skinscreen-gateway-admin makes them."""

    async def create() -> Keys:
        connection = await asyncpg.connect(database_url)
        try:
            made = await accounts.create_clinic(connection, clinic or f"clinic {next(_clinics)}")
            clinician = await accounts.create_key(
                connection, scopes=[Scope.CLINICIAN], clinic_id=made.id
            )
            operator = await accounts.create_key(
                connection, scopes=[Scope.OPERATOR], clinic_id=None
            )
        finally:
            await connection.close()
        return Keys(made.id, clinician.secret, operator.secret)

    return asyncio.run(create())


class Process:
    """A service run as a child process, with its log in a file for when a test fails."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.command = command
        # Each worker serves /metrics on its own port, or the second one on a machine fails.
        self.env = {**env, "METRICS_PORT": env.get("METRICS_PORT") or str(free_port())}
        self.log = log
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.popen = subprocess.Popen(
                self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO
            )

    def kill(self) -> None:
        """SIGKILL: no warm shutdown, nothing acknowledged or given back."""
        assert self.popen is not None
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait()

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


class Launcher:
    """How the suite starts each service: here, as a child process on this interpreter.
    tests/images starts each from its image instead (the `launcher` fixture there), so the
    same tests run against the containers."""

    def prestart(self, env: dict[str, str]) -> None:
        subprocess.run(PRESTART_COMMAND, env=env, check=True, timeout=120)

    def worker(self, env: dict[str, str], log: Path) -> Process:
        return Process(WORKER_COMMAND, env, log)

    def trainer(self, env: dict[str, str], log: Path) -> Process:
        return Process(TRAINER_COMMAND, env, log)

    def gateway(self, env: dict[str, str], log: Path, port: int, *options: str) -> Process:
        """A gateway on 127.0.0.1:`port`; `options` go to uvicorn."""
        return Process(gateway_command("127.0.0.1", port, *options), env, log)


HOST = Launcher()


@pytest.fixture(scope="session")
def launcher() -> Launcher:
    return HOST


class Database:
    """Synchronous reads for assertions; each call opens a short-lived connection."""

    def __init__(self, url: str) -> None:
        self.url = url

    def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async def run() -> list[asyncpg.Record]:
            connection = await asyncpg.connect(self.url)
            try:
                return list(await connection.fetch(sql, *args))
            finally:
                await connection.close()

        return asyncio.run(run())

    def value(self, sql: str, *args: Any) -> Any:
        rows = self.fetch(sql, *args)
        return rows[0][0] if rows else None


def with_application_name(url: str, name: str) -> str:
    """The database URL with an application_name, which pg_stat_activity shows for each of
    the process's connections (asyncpg sends unknown URL parameters as server settings)."""
    parts = urlsplit(url)
    query = "&".join(filter(None, [parts.query, f"application_name={name}"]))
    return urlunsplit(parts._replace(query=query))


def database_clock(database: Database) -> datetime:
    """Now, on the database's clock."""
    now: datetime = database.value("SELECT clock_timestamp()")
    return now


def wait_until_a_long_poll_is_held(database: Database, since: datetime, application: str) -> None:
    """Until the gateway whose connections carry `application` has read the screening and
    put the connection back (idle since `since`): a long poll subscribes to the screening's
    notification before it reads it, so it now waits on that notification. Its own
    listening connection (LISTEN) is left out; nothing else may use that gateway meanwhile."""

    def activity() -> list[asyncpg.Record]:
        return database.fetch(
            "SELECT query, query_start, state FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = $1",
            application,
        )

    wait_until(
        lambda: any(
            row["state"] == "idle"
            # A pool connection that has run nothing yet has no query_start.
            and row["query_start"] is not None
            and row["query_start"] >= since
            and not row["query"].startswith("LISTEN")
            for row in activity()
        ),
        lambda: (
            f"the gateway read the screening for its long poll; {application}: " + repr(activity())
        ),
    )


@dataclass
class HeldLongPoll:
    """A `GET <screening>?wait=30` running in a thread, held by the gateway; `answer`
    gets its response, or the exception that ended it (not lost with the thread)."""

    thread: threading.Thread
    answer: dict[str, httpx.Response | BaseException]


def hold_long_poll(
    url: str, location: str, database: Database, application: str, headers: dict[str, str]
) -> HeldLongPoll:
    """Start a long poll on the screening at `location` (sending `headers`: the key) and
    return once the gateway whose database connections carry `application` holds it."""
    answer: dict[str, httpx.Response | BaseException] = {}

    def long_poll() -> None:
        try:
            answer["response"] = httpx.get(
                f"{url}{location}", params={"wait": 30}, headers=headers, timeout=60
            )
        except BaseException as exc:
            answer["response"] = exc

    since = database_clock(database)
    thread = threading.Thread(target=long_poll)
    thread.start()
    wait_until_a_long_poll_is_held(database, since, application)
    return HeldLongPoll(thread, answer)


@pytest.fixture(scope="session")
def model_store() -> Path:
    """The store of the model shipped with the project, the one `make run` serves."""
    store = REPO / "models"
    assert any((store / MODEL_NAME).glob("*/card.json")), f"no {MODEL_NAME} shipped in {store}"
    return store


def served_model(database: Database, name: str) -> tuple[Path, ModelCard]:
    """The model file and card of `name`'s active version in the stack's registry: what the
    workers serve, whichever versions models/ holds by now."""
    uri = database.value(
        "SELECT artifact_uri FROM model_versions WHERE name = $1 AND status = 'active'", name
    )
    assert uri is not None, f"no active version of {name}"
    return verified_model(Path(uri.removeprefix("file://")))


@pytest.fixture(scope="session")
def dual_output_model(pad_ufes_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A published model with both outputs (cancer_probability, diagnosis_probabilities),
    trained now by the real trainer: a smoke run on 120 real photos, 2 folds, 1 epoch (with
    fewer, a fold may hold no melanoma to choose the melanoma threshold on)."""
    root = tmp_path_factory.mktemp("dual-output")
    trained = subprocess.run(
        [
            sys.executable, "-m", "skinscreen.trainer.cli", "train",
            "--data", str(pad_ufes_dir), "--target", "diagnosis", "--max-samples", "120",
            "--folds", "2", "--epochs", "1", "--ensemble", "1", "--views", "1",
            "--runs", str(root / "runs"), "--store", str(root / "store"),
        ],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-4000:]
    (published,) = (root / "store" / MODEL_NAME).iterdir()
    assert read_card(published).outputs == ("cancer_probability", "diagnosis_probabilities")
    return published


@pytest.fixture(scope="session")
def photos(pad_ufes_dir: Path) -> list[Photo]:
    """Real PAD-UFES-20 photos with their clinical answers, read by the trainer's loader."""
    dataset = load_pad_ufes(pad_ufes_dir)
    return [Photo(sample.image_path, sample.clinical, sample.label) for sample in dataset.samples]


@dataclass
class Servers:
    database_url: str
    redis_url: str


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """A real PostgreSQL and a real redis-server for the whole session."""
    folder = tmp_path_factory.mktemp("servers")
    postgres = EmbeddedPostgres(folder / "postgres", delete_on_stop=True)
    redis = EmbeddedRedis(folder / "redis")
    try:
        yield Servers(database_url=postgres.start(), redis_url=redis.start())
    finally:
        redis.stop()
        postgres.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server of the test's own, for a fault test that kills and restarts it (it
    keeps its port and its append-only file); the session's Redis stays up for the rest."""
    redis = EmbeddedRedis(tmp_path / "redis")
    redis.start()
    yield redis
    redis.stop()


@pytest.fixture(scope="session")
def stack_env(
    servers: Servers,
    model_store: Path,
    launcher: Launcher,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    """The environment both services run with; the schema is migrated by the pre-start step."""
    env = {
        **os.environ,
        "DATABASE_URL": servers.database_url,
        "REDIS_URL": servers.redis_url,
        "BLOB_DIR": str(tmp_path_factory.mktemp("blobs")),
        "MODEL_STORE": str(model_store),
        "MODEL_NAME": MODEL_NAME,
        "MAX_BATCH_SIZE": "16",
        "MAX_WAIT_MS": "20",
        "RETRY_BACKOFF_S": "0.2",
        "CELERY_VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S),
        "RECONCILE_AFTER_S": str(RECONCILE_AFTER_S),
        "RECONCILE_INTERVAL_S": "1",
        "INTRA_OP_THREADS": "2",
        # The suite's load tests must not be refused; test_rate_limits.py gives its own
        # clinic tiny limits.
        "RATE_LIMIT_SCREENINGS": "1000000/minute",
        "RATE_LIMIT_READS": "1000000/minute",
    }
    launcher.prestart(env)
    return env


def _wait_until(condition: Any, timeout_s: float, what: str, process: Process) -> None:
    """Until `condition` holds; a process that exits meanwhile fails at once, with its log."""

    def holds() -> bool:
        assert process.popen is not None
        if process.popen.poll() is not None:
            raise RuntimeError(f"{what} exited; log:\n{process.log.read_text()[-4000:]}")
        return bool(condition())

    wait_until(holds, lambda: f"{what} not ready; log:\n{process.log.read_text()[-4000:]}",
               timeout_s)  # fmt: skip


def _log_mentions(log: Path, text: str) -> bool:
    return log.is_file() and text in log.read_text(errors="replace")


@pytest.fixture(scope="session")
def worker(
    stack_env: dict[str, str], launcher: Launcher, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Process]:
    log = tmp_path_factory.mktemp("logs") / "worker.log"
    process = launcher.worker(stack_env, log)
    process.start()
    start_worker(process)
    yield process
    process.stop()


def start_worker(process: Process) -> None:
    """(Re)start the worker and wait until it consumes; Celery logs 'ready.' then."""
    if process.popen is None or process.popen.poll() is not None:
        process.log.write_text("")
        process.start()
    _wait_until(lambda: _log_mentions(process.log, "ready."), 180, "inference worker", process)


def start_gateway(
    env: dict[str, str], log: Path, log_level: str = "warning", launcher: Launcher = HOST
) -> tuple[Process, str]:
    """A gateway under uvicorn on a free port, once it answers /healthz: its process and URL."""
    port = free_port()
    process = launcher.gateway(env, log, port, "--log-level", log_level)
    process.start()
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    _wait_until(healthy, 120, "gateway", process)
    return process, url


@pytest.fixture(scope="session")
def gateway_service(
    stack_env: dict[str, str],
    worker: Process,
    launcher: Launcher,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Process, str]]:
    """A gateway whose queue a worker consumes: its process and base URL."""
    log = tmp_path_factory.mktemp("logs") / "gateway.log"
    process, url = start_gateway(stack_env, log, launcher=launcher)
    yield process, url
    process.stop()


@pytest.fixture(scope="session")
def gateway(gateway_service: tuple[Process, str]) -> str:
    """The base URL of a gateway whose queue a worker consumes."""
    return gateway_service[1]


@pytest.fixture(scope="session")
def gateway_metrics(gateway_service: tuple[Process, str]) -> str:
    """That gateway's /metrics, on its own port (METRICS_PORT), never on the API's."""
    return f"http://127.0.0.1:{gateway_service[0].env['METRICS_PORT']}/metrics"


IDLE_REDIS_DB = 1
# The idle gateway's connections, by name in pg_stat_activity.
IDLE_GATEWAY = "skinscreen-idle-gateway"


@pytest.fixture(scope="session")
def idle_gateway(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A gateway whose queue (another Redis database) no worker reads, so queued tasks stay."""
    redis_url = stack_env["REDIS_URL"].rsplit("/", 1)[0] + f"/{IDLE_REDIS_DB}"
    database_url = with_application_name(stack_env["DATABASE_URL"], IDLE_GATEWAY)
    env = {**stack_env, "REDIS_URL": redis_url, "DATABASE_URL": database_url}
    process, url = start_gateway(env, tmp_path_factory.mktemp("logs") / "idle-gateway.log")
    yield url
    process.stop()


@pytest.fixture
def idle_redis(stack_env: dict[str, str]) -> Iterator[Redis]:
    client = Redis.from_url(stack_env["REDIS_URL"].rsplit("/", 1)[0] + f"/{IDLE_REDIS_DB}")
    yield client
    client.close()


@pytest.fixture(scope="session")
def keys(stack_env: dict[str, str]) -> Keys:
    """The session stack's keys: a clinic's clinician key and an operator key."""
    return create_keys(stack_env["DATABASE_URL"], "the session's clinic")


@pytest.fixture(scope="session")
def database(stack_env: dict[str, str]) -> Database:
    return Database(stack_env["DATABASE_URL"])


@pytest.fixture(scope="session")
def blob_dir(stack_env: dict[str, str]) -> Path:
    return Path(stack_env["BLOB_DIR"])


def submit(client: httpx.Client, photo: Photo) -> httpx.Response:
    """POST one real photo with its clinical answers, as a phone app would."""
    return client.post(
        "/v1/screenings",
        files={"image": (photo.path.name, photo.path.read_bytes(), "image/jpeg")},
        data={"clinical": photo.clinical.model_dump_json()},
    )


@pytest.fixture
def submit_photo() -> Any:
    return submit


@pytest.fixture
def restart_worker() -> Any:
    return start_worker


@dataclass
class Lifecycle:
    """A stack of its own (database, Redis database, artifact store) that tests may switch."""

    env: dict[str, str]
    url: str
    database: Database
    store: ArtifactStore
    worker: Process
    shipped_version: str
    keys: Keys


def own_database(servers: Servers, name: str) -> str:
    """A fresh database on the session's server: registry changes stay in one module."""

    async def create() -> None:
        connection = await asyncpg.connect(servers.database_url)
        try:
            await connection.execute(f"DROP DATABASE IF EXISTS {name}")
            await connection.execute(f"CREATE DATABASE {name}")
        finally:
            await connection.close()

    asyncio.run(create())
    parts = urlsplit(servers.database_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


_lifecycle_stacks = itertools.count(2)

# Workers of a lifecycle stack learn of a new active version by its announcement on Redis
# alone: re-reading the registry is effectively off, so a test that sees a worker switch
# has seen the announcement work (tests/serving/test_model_switching.py tests polling).
NO_POLLING_S = "86400"


@contextmanager
def lifecycle_stack(
    servers: Servers,
    model_store: Path,
    tmp_path_factory: pytest.TempPathFactory,
    launcher: Launcher = HOST,
    **overrides: str,
) -> Iterator[Lifecycle]:
    """Pre-start, an inference worker and a gateway over a copy of the shipped models, on a
    database and a Redis database of their own; `overrides` change the environment."""
    number = next(_lifecycle_stacks)
    folder = tmp_path_factory.mktemp(f"lifecycle{number}")
    env = {
        **os.environ,
        "DATABASE_URL": own_database(servers, f"lifecycle{number}"),
        "REDIS_URL": servers.redis_url.rsplit("/", 1)[0] + f"/{number}",
        "BLOB_DIR": str(folder / "blobs"),
        "MODEL_STORE": str(folder / "models"),
        "SHIPPED_MODELS": str(model_store),
        "MODEL_NAME": MODEL_NAME,
        "TRAINING_DATA_DIR": str(SHARED_DATA),
        "RUNS_DIR": str(folder / "runs"),
        "MODEL_POLL_S": NO_POLLING_S,
        "MAX_BATCH_SIZE": "8",
        "MAX_WAIT_MS": "20",
        "RETRY_BACKOFF_S": "0.2",
        "CELERY_VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S),
        "INTRA_OP_THREADS": "1",
        "HEARTBEAT_S": "1",
        **overrides,
    }
    launcher.prestart(env)
    store = ArtifactStore(env["MODEL_STORE"])
    worker = launcher.worker(env, folder / "worker.log")
    worker.start()
    gateway: Process | None = None
    try:
        start_worker(worker)
        gateway, url = start_gateway(env, folder / "gateway.log", launcher=launcher)
        yield Lifecycle(
            env,
            url,
            Database(env["DATABASE_URL"]),
            store,
            worker,
            store.versions(MODEL_NAME)[-1],
            create_keys(env["DATABASE_URL"]),
        )
    finally:
        if gateway is not None:
            gateway.stop()
        worker.stop()


@pytest.fixture(scope="module")
def lifecycle(
    servers: Servers,
    model_store: Path,
    launcher: Launcher,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Lifecycle]:
    """A stack of the module's own whose active version its tests may switch."""
    with lifecycle_stack(servers, model_store, tmp_path_factory, launcher) as stack:
        yield stack


def served_version(worker: Process) -> str | None:
    """The version a running inference worker serves now, read from its /metrics."""
    try:
        scrape = Scrape(f"http://127.0.0.1:{worker.env['METRICS_PORT']}/metrics")
    except httpx.HTTPError:
        return None
    info = scrape.labels("skinscreen_inference_model_info")
    return info[0]["model_version"] if len(info) == 1 else None


def wait_until_served(worker: Process, version: str, timeout_s: float = 120) -> None:
    wait_until(
        lambda: served_version(worker) == version,
        lambda: (
            f"the worker still serves {served_version(worker)}, not {version}; log:\n"
            + worker.log.read_text()[-3000:]
        ),
        timeout_s,
    )


@dataclass
class DirectRun:
    """A published model run straight through ONNX Runtime on the photos a test submits."""

    cancer: np.ndarray  # [N]
    diagnoses: np.ndarray | None  # [N, 6] in the order of DIAGNOSES, or None


def direct_run(model_path: Path, card: ModelCard, photos: list[Photo]) -> DirectRun:
    """The card's outputs for the same preprocessed input the worker feeds the model."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    images = np.stack([load_and_preprocess(photo.path, card.input_size) for photo in photos])
    feeds = {"image": images, "clinical": encode_many([photo.clinical for photo in photos])}
    outputs = session.run(list(card.outputs), {name: feeds[name] for name in card.inputs})
    return DirectRun(np.asarray(outputs[0]), np.asarray(outputs[1]) if card.has_diagnoses else None)


def check_result(result: dict[str, Any], card: ModelCard, direct: DirectRun, index: int) -> None:
    """A served result is the direct run's (within 1e-5) under the card's decision rule.

    Its reasons are the rule applied to the probabilities it reports, so a probability a
    hair's breadth from a threshold cannot make the check flaky.
    """
    assert result["model_version"] == card.version
    assert abs(result["cancer_probability"] - float(direct.cancer[index])) <= 1e-5
    assert result["threshold"] == card.decision_threshold.value
    melanoma = card.melanoma_threshold
    assert result["melanoma_threshold"] == (None if melanoma is None else melanoma.value)
    served = None
    if direct.diagnoses is None:
        assert result["diagnoses"] is None
    else:
        assert [item["diagnosis"] for item in result["diagnoses"]] == list(DIAGNOSES)
        served = np.array([item["probability"] for item in result["diagnoses"]])
        np.testing.assert_allclose(served, direct.diagnoses[index], atol=1e-5)
    reasons = DecisionRule.from_card(card).reasons(result["cancer_probability"], served)
    assert result["reasons"] == list(reasons)
    assert result["suspicious"] == bool(reasons)
