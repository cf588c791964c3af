"""The gateway keeps the promises of its own OpenAPI document, checked by Schemathesis against
the real stack: no 5xx, no status code, content type, header or body the document does not
declare, 405 with Allow for undeclared methods, and OPTIONS listing exactly the declared ones.

Schemathesis runs as its command line does (`schemathesis run`, every phase but the stateful
one: the document declares no links between operations), not through its pytest plugin,
whose fixture-based loader (`schemathesis.pytest.from_fixture`, the only one that can read
a URL known at run time) sets `Function._nodeid`, which pytest 9 no longer has. Bounded and
repeatable: at most 25 generated requests per operation plus the deterministic coverage
cases, derandomized from a fixed seed, no example database on disk.

Every request carries a clinician's API key (the session's clinic). Operator operations
(promote, rollback, training runs, clinics and keys) would change what other tests in the
session rely on (the active model, the trainer's queue, the keys), so they are sent the same
clinician's key, which they refuse: each answer is a refusal (403) or an unparsable body
(400), so nothing changes. That every operation documents its 401 and 403 is checked in
tests/serving/test_clinic_accounts.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

from tests.conftest import REPO
from tests.serving.conftest import Keys

# The operations only an operator's key may call: those whose security requirement admits the
# operator scope alone (promote, rollback; start, list, read and cancel training runs; create
# and list clinics, change one (its rate limits); create, list and revoke keys; the audit trail).
OPERATOR_OPERATIONS: Final = '/security == [{"HTTPBearer": ["operator"]}]'
OPERATOR_COUNT: Final = 13

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


def schemathesis_run(url: str, report: Path, key: str, *filters: str) -> dict[str, Any]:
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
        # One worker: two threads parsing lambda sources at once inside Hypothesis hit CPython
        # 3.11's "AST constructor recursion depth mismatch" (SystemError) now and then.
        "--workers", "1",
        "--request-timeout", "30",
        "--header", f"Authorization: Bearer {key}",
        "--report", "json", "--report-json-path", str(report),
        *filters,
    ]  # fmt: skip
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-12000:] + run.stderr[-4000:]
    result: dict[str, Any] = json.loads(report.read_text())
    return result


def test_the_gateway_keeps_its_openapi_promises(gateway: str, keys: Keys, tmp_path: Path) -> None:
    report = schemathesis_run(
        gateway, tmp_path / "gateway.json", keys.clinician_key, "--exclude-by", OPERATOR_OPERATIONS
    )
    operations = report["operations"]
    assert operations["tested"] == operations["selected"] == operations["total"] - OPERATOR_COUNT
    assert report["test_cases"]["generated"] > 100


def test_operator_operations_change_nothing_for_a_clinicians_key(
    gateway: str, keys: Keys, tmp_path: Path, database
) -> None:
    state = (
        "SELECT (SELECT count(*) FROM model_activations), (SELECT count(*) FROM training_runs),"
        " (SELECT count(*) FROM clinics), (SELECT count(*) FROM api_keys),"
        " (SELECT count(*) FROM api_keys WHERE revoked_at IS NOT NULL)"
    )
    before = database.fetch(state)
    report = schemathesis_run(
        gateway, tmp_path / "operator.json", keys.clinician_key, "--include-by", OPERATOR_OPERATIONS
    )
    assert report["operations"]["tested"] == report["operations"]["selected"] == OPERATOR_COUNT
    assert report["test_cases"]["generated"] > 100
    assert database.fetch(state) == before
