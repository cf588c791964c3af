"""The gateway keeps the promises of its own OpenAPI document, checked by Schemathesis against
the real stack: no 5xx, no status code, content type, header or body the document does not
declare, 405 with Allow for undeclared methods, and OPTIONS listing exactly the declared ones.

Schemathesis runs as its command line does (`schemathesis run`, every phase but the stateful
one: the document declares no links between operations), not through its pytest plugin,
whose fixture-based loader (`schemathesis.pytest.from_fixture`, the only one that can read
a URL known at run time) sets `Function._nodeid`, which pytest 9 no longer has. Bounded and
repeatable: at most 25 generated requests per operation plus the deterministic coverage
cases, derandomized from a fixed seed, no example database on disk.

Operator operations (promote, rollback, training runs and their cancel, recording a
diagnosis) change what other tests in the session rely on (the active model, the trainer's
queue), and the session's gateway asks no operator token. They are checked on a second
gateway of the same stack that has a token, which Schemathesis never sends: each answer is a
refusal (401) or a rejected body (400, 422), so nothing changes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from tests.conftest import REPO
from tests.serving.conftest import start_gateway

# The operations behind the operator token: those whose OpenAPI declares its bearer scheme
# (promote, rollback, start and cancel a training run, record a diagnosis).
OPERATOR_OPERATIONS: Final = '/security == [{"HTTPBearer": []}]'
OPERATOR_COUNT: Final = 5
OPERATOR_TOKEN: Final = "schemathesis-never-sends-this-token"

CHECKS: Final = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "unsupported_method",
    "allow_header_conformance",
)
MAX_EXAMPLES: Final = 25
SEED: Final = 14


def schemathesis_run(url: str, report: Path, *filters: str) -> dict[str, Any]:
    """`schemathesis run` against the gateway at `url`; fails the test on any failure, with
    Schemathesis' own account of it. Returns the run's JSON report."""
    config = report.with_suffix(".toml")
    # The example database stays off the disk (Hypothesis would write .hypothesis/ here).
    config.write_text('[generation]\ndatabase = "none"\ndeterministic = true\n')
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
        f"{url}/openapi.json",
        "--checks", ",".join(CHECKS),
        "--phases", "examples,coverage,fuzzing",
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", str(SEED),
        "--workers", "2",
        "--request-timeout", "30",
        "--report", "json", "--report-json-path", str(report),
        *filters,
    ]  # fmt: skip
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-12000:] + run.stderr[-4000:]
    result: dict[str, Any] = json.loads(report.read_text())
    return result


@pytest.fixture(scope="module")
def guarded_gateway(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A second gateway on the session's stack, with an operator token."""
    log = tmp_path_factory.mktemp("logs") / "schemathesis-guarded-gateway.log"
    process, url = start_gateway({**stack_env, "OPERATOR_TOKEN": OPERATOR_TOKEN}, log)
    yield url
    process.stop()


def test_the_gateway_keeps_its_openapi_promises(gateway: str, tmp_path: Path) -> None:
    report = schemathesis_run(
        gateway, tmp_path / "gateway.json", "--exclude-by", OPERATOR_OPERATIONS
    )
    operations = report["operations"]
    assert operations["tested"] == operations["selected"] == operations["total"] - OPERATOR_COUNT
    assert report["test_cases"]["generated"] > 100


def test_operator_operations_change_nothing_without_the_token(
    guarded_gateway: str, tmp_path: Path, database
) -> None:
    state = (
        "SELECT (SELECT count(*) FROM model_activations), (SELECT count(*) FROM training_runs),"
        " (SELECT count(*) FROM diagnoses)"
    )
    before = database.fetch(state)
    report = schemathesis_run(
        guarded_gateway, tmp_path / "operator.json", "--include-by", OPERATOR_OPERATIONS
    )
    assert report["operations"]["tested"] == report["operations"]["selected"] == OPERATOR_COUNT
    assert report["test_cases"]["generated"] > 100
    assert database.fetch(state) == before
