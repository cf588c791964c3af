"""Each service installs and imports only what it needs (docs/DESIGN.md, Where each concern lives).

The gateway never loads torch or onnxruntime; the inference worker never loads
torch or fastapi; neither loads the other; what they share loads none of these;
no service loads the development tooling (skinscreen.dev) or the papers'
experiments (skinscreen.research), nor declares them. tests/deploy/k8s/test_images.py
checks the same of what each image installs from uv.lock.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib import metadata

import pytest

# Neither a service nor what the services share may load or require these.
TOOLING = ("skinscreen.dev", "skinscreen.research")

# Distribution -> (its import package, modules it must never load).
BOUNDARIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "skinscreen-runtime": (
        "skinscreen.runtime",
        ("torch", "onnxruntime", "fastapi", "skinscreen.gateway", "skinscreen.inference", *TOOLING),
    ),
    "skinscreen-gateway": (
        "skinscreen.gateway",
        ("torch", "onnxruntime", "skinscreen.inference", *TOOLING),
    ),
    "skinscreen-inference": (
        "skinscreen.inference",
        ("torch", "fastapi", "uvicorn", "skinscreen.gateway", *TOOLING),
    ),
    "skinscreen-trainer": (
        "skinscreen.trainer",
        ("fastapi", "uvicorn", "skinscreen.gateway", "skinscreen.inference", *TOOLING),
    ),
}

# Imports every module of the package argv[1] in this fresh interpreter, then prints which
# of the modules listed in argv[2] came along.
PROBE = """
import importlib, json, pkgutil, sys
name, forbidden = sys.argv[1], json.loads(sys.argv[2])
package = importlib.import_module(name)
for module in pkgutil.walk_packages(package.__path__, name + "."):
    importlib.import_module(module.name)
print(json.dumps(sorted(module for module in forbidden if module in sys.modules)))
"""


@pytest.mark.parametrize("distribution", list(BOUNDARIES))
def test_importing_every_module_loads_nothing_forbidden(distribution: str) -> None:
    package, forbidden = BOUNDARIES[distribution]
    # The worker reads its settings at import; nothing connects to these URLs here.
    env = {
        **os.environ,
        "DATABASE_URL": "postgresql://127.0.0.1:1/skinscreen",
        "REDIS_URL": "redis://127.0.0.1:1/0",
    }
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, package, json.dumps(forbidden)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout.splitlines()[-1]) == []


@pytest.mark.parametrize("distribution", list(BOUNDARIES))
def test_no_forbidden_dependency_is_declared(distribution: str) -> None:
    _, forbidden = BOUNDARIES[distribution]
    # Extras included: `pip install skinscreen-runtime[s3]` must not pull them in either.
    required = {
        re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower()
        for requirement in metadata.requires(distribution) or []
    }
    for module in forbidden:
        name = module.replace(".", "-")
        # onnxruntime-gpu is onnxruntime too.
        assert not {r for r in required if r == name or r.startswith(f"{name}-")}, name
