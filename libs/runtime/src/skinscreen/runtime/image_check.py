"""The last step of every image build: what the service needs imports, what it must not hold
is absent.

    python -m skinscreen.runtime.image_check --imports skinscreen.gateway.main \
        --absent torch onnxruntime

Run in the runtime stage, as the image's user, on the image's own Python: a missing shared
library or dependency fails the build, not the first pod; so does a distribution that a
lock change or a stray dependency brought into an image that must stay without it (the
gateway without torch or onnxruntime, inference without torch). Exit status 1 names each.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Sequence
from importlib import metadata


def normalized(name: str) -> str:
    """A distribution's name as PEP 503 compares them (no runtime dependency on packaging)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def problems(imports: Sequence[str], absent: Sequence[str]) -> list[str]:
    """Every module of `imports` that fails to import and every distribution of `absent`
    that is installed, each as one line."""
    found: list[str] = []
    for module in imports:
        try:
            importlib.import_module(module)
        except Exception as exc:  # any failure to import is the finding
            found.append(f"{module} does not import: {type(exc).__name__}: {exc}")
    installed = {normalized(dist.metadata["Name"]): dist for dist in metadata.distributions()}
    for name in absent:
        dist = installed.get(normalized(name))
        if dist is not None:
            found.append(f"{name} {dist.version} is installed, and this image must not hold it")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skinscreen.runtime.image_check")
    parser.add_argument("--imports", nargs="+", default=[], metavar="MODULE",
                        help="modules the image's service runs; each must import")  # fmt: skip
    parser.add_argument("--absent", nargs="+", default=[], metavar="DISTRIBUTION",
                        help="distributions the image must not hold")  # fmt: skip
    args = parser.parse_args(argv)
    found = problems(args.imports, args.absent)
    for line in found:
        print(f"image check: {line}", file=sys.stderr)
    if not found:
        print(f"image check: {len(args.imports)} modules import, "
              f"none of {len(args.absent)} forbidden distributions is installed")  # fmt: skip
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
