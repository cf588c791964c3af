"""`make images`: build the service images from the Dockerfiles that ship, here, with podman.

No container daemon and no registry are needed. What it does, in order:

1. installs what it needs when it is missing (Debian's podman, buildah, debootstrap, runc);
2. writes the engine's settings (containers.conf, in var/containers): runc rather than crun,
   which fails on this kind of machine's hybrid cgroups; cgroupfs; no default ulimits, which a
   container here may not set;
3. builds the base, Debian 12 from Debian's own mirror (`debootstrap --variant=minbase`,
   slimmed as Debian's registry image is: no documentation, manuals or locales, no apt
   caches), and imports it as BASE_IMAGE. The machine's image store keeps it, and each
   image's layers, for the next run;
4. builds each image with `podman build` from its Dockerfile, the base passed as the
   Dockerfile's BASE_IMAGE, and prints its size and what each layer costs. Each Dockerfile's
   last step (skinscreen.runtime.image_check) fails the build if the service does not import
   on the image's own Python or the image holds what it must not.

Two things of the machine go into the build, never into an image: the TLS proxy's CA bundle
(when PIP_CERT or SSL_CERT_FILE names one), and the folder holding the torch wheel uv.lock was
made from (the trainer's TORCH_WHEELS), both mounted read-only into the build's steps.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

REPO: Final = Path(__file__).resolve().parents[4]
CONTAINERS_DIR: Final = REPO / "var" / "containers"
BASE_IMAGE: Final = "localhost/skinscreen-debian:bookworm"
TAG: Final = "local"
TOOLS: Final = {
    "podman": "podman",
    "buildah": "buildah",
    "debootstrap": "debootstrap",
    "runc": "runc",
}
DEBIAN_MIRROR: Final = "http://deb.debian.org/debian"
DEBIAN_SUITE: Final = "bookworm"


@dataclass(frozen=True)
class Image:
    name: str
    dockerfile: str

    @property
    def reference(self) -> str:
        return f"localhost/{self.name}:{TAG}"


IMAGES: Final = {
    image.name: image
    for image in (
        Image("skinscreen-gateway", "services/gateway/Dockerfile"),
        Image("skinscreen-inference", "services/inference/Dockerfile"),
        Image("skinscreen-trainer", "services/trainer/Dockerfile"),
        Image("skinscreen-inference-gpu", "services/inference/Dockerfile.gpu"),
        # Debian's PostgreSQL and Redis, for the stack from the images here (tests/images).
        Image("skinscreen-dev-servers", "dev/containers/servers.Dockerfile"),
    )
}
# The GPU image is built on request (--only): onnxruntime-gpu's CUDA libraries are large, and
# no GPU here can run it.
DEFAULT_IMAGES: Final = (
    "skinscreen-gateway",
    "skinscreen-inference",
    "skinscreen-trainer",
    "skinscreen-dev-servers",
)

# The engine's settings: runc, cgroupfs, no ulimits a container here may not set.
CONTAINERS_CONF: Final = """\
# Written by skinscreen.dev.images (make images); podman reads it through CONTAINERS_CONF.
[containers]
# Setting rlimits in a container is not permitted on these machines.
default_ulimits = []

[engine]
# crun fails on hybrid cgroups here; runc works.
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""

# As Debian's own slim image: no documentation, manual pages or translations installed later,
# and apt keeps no package files or caches in a layer.
DPKG_EXCLUDES: Final = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
"""
APT_CLEAN: Final = """\
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT::Install-Recommends "false";
"""
SOURCES: Final = f"""\
deb {DEBIAN_MIRROR} {DEBIAN_SUITE} main
deb {DEBIAN_MIRROR} {DEBIAN_SUITE}-updates main
deb http://deb.debian.org/debian-security {DEBIAN_SUITE}-security main
"""


def engine_env() -> dict[str, str]:
    """The environment every podman call runs with: the settings this module writes."""
    conf = CONTAINERS_DIR / "containers.conf"
    if not conf.is_file() or conf.read_text() != CONTAINERS_CONF:
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def podman(
    *arguments: str, check: bool = True, capture: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run podman with this module's settings, its output and errors captured unless
    `capture` is false (a build's steps go to the terminal)."""
    return subprocess.run(
        ["podman", *arguments], env=engine_env(), check=check, text=True, capture_output=capture
    )


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def install_tools() -> None:
    """Debian's podman, buildah, debootstrap and runc, when any is missing."""
    missing = missing_tools()
    if not missing:
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise SystemExit(
            f"make images needs {', '.join(missing)}: install them (Debian: apt-get install "
            f"{' '.join(TOOLS[tool] for tool in missing)}), as root"
        )
    print(f"installing {', '.join(missing)} from Debian's packages", flush=True)
    quiet = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=quiet)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *TOOLS.values()],
        check=True,
        env=quiet,
    )


def image_exists(reference: str) -> bool:
    return podman("image", "exists", reference, check=False).returncode == 0


def missing_images(names: Sequence[str] = DEFAULT_IMAGES) -> list[str]:
    """Those of `names` not built here: all of them where podman is not installed."""
    if shutil.which("podman") is None:
        return list(names)
    return [name for name in names if not image_exists(IMAGES[name].reference)]


def build_base(reference: str = BASE_IMAGE) -> None:
    """Debian 12 from Debian's mirror, slimmed as its registry image is, imported as
    `reference`. Kept by the machine's image store; built again only when it is gone."""
    if image_exists(reference):
        print(f"base {reference}: kept from an earlier run", flush=True)
        return
    print(f"base {reference}: debootstrap {DEBIAN_SUITE} from {DEBIAN_MIRROR}", flush=True)
    with tempfile.TemporaryDirectory(prefix="skinscreen-base-") as folder:
        root = Path(folder) / "rootfs"
        subprocess.run(
            ["debootstrap", "--variant=minbase", DEBIAN_SUITE, str(root), DEBIAN_MIRROR],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        for pattern in ("usr/share/doc/*/*", "usr/share/man/*", "usr/share/info/*",
                        "usr/share/locale/*", "var/cache/apt/archives/*.deb",
                        "var/cache/apt/*.bin", "var/lib/apt/lists/*", "var/log/*.log"):  # fmt: skip
            for path in root.glob(pattern):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                elif path.name != "copyright":
                    path.unlink()
        (root / "etc/dpkg/dpkg.cfg.d/skinscreen-slim").write_text(DPKG_EXCLUDES)
        (root / "etc/apt/apt.conf.d/skinscreen-slim").write_text(APT_CLEAN)
        (root / "etc/apt/sources.list").write_text(SOURCES)
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(
            ["podman", "import", "--message", f"debootstrap --variant=minbase {DEBIAN_SUITE}",
             "-", reference],
            stdin=tar.stdout, env=engine_env(), check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        assert tar.stdout is not None
        tar.stdout.close()
        if tar.wait() != 0:
            raise SystemExit(f"tar of {root} failed")


def ca_bundle() -> Path | None:
    """The CA bundle this machine's pip trusts, when one is set: a TLS proxy's."""
    for variable in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        value = os.environ.get(variable)
        if value and Path(value).is_file():
            return Path(value)
    return None


def torch_wheels() -> Path | None:
    """The folder uv.lock took the CPU torch wheel from, when this machine has it."""
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    for package in lock["package"]:
        if package["name"] == "torch":
            registry = package.get("source", {}).get("registry", "")
            if registry.startswith("/") and Path(registry).is_dir():
                return Path(registry)
    return None


def build_arguments(image: Image, base: str) -> list[str]:
    """`podman build`'s arguments for `image` on `base`."""
    arguments = [
        "build",
        # Docker's format keeps HEALTHCHECK, which OCI's drops.
        "--format", "docker",
        "--network", "host",
        "--layers",
        "--file", str(REPO / image.dockerfile),
        "--tag", image.reference,
    ]  # fmt: skip
    if image.name == "skinscreen-inference-gpu":
        # Its build and runtime stages have bases of their own (Ubuntu, NVIDIA's CUDA).
        arguments += ["--build-arg", f"BUILD_BASE={base}", "--build-arg", f"RUNTIME_BASE={base}"]
    else:
        arguments += ["--build-arg", f"BASE_IMAGE={base}"]
    # Each mount goes only to a Dockerfile that takes it (an ARG of that name).
    dockerfile = (REPO / image.dockerfile).read_text()
    bundle = ca_bundle() if "ARG PIP_CERT" in dockerfile else None
    if bundle is not None:
        arguments += ["--volume", f"{bundle}:/run/skinscreen-build-ca.pem:ro",
                      "--build-arg", "PIP_CERT=/run/skinscreen-build-ca.pem"]  # fmt: skip
    wheels = torch_wheels() if "ARG TORCH_WHEELS" in dockerfile else None
    if wheels is not None:
        arguments += ["--volume", f"{wheels}:/run/skinscreen-wheels:ro",
                      "--build-arg", "TORCH_WHEELS=/run/skinscreen-wheels"]  # fmt: skip
    return [*arguments, str(REPO)]


def megabytes(size: int) -> str:
    return f"{size / 1e6:,.0f} MB"


def report(image: Image, base: str) -> str:
    """The image's size and what each of its layers above the base costs."""
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image.reference).stdout)
    base_size = int(podman("image", "inspect", "--format", "{{.Size}}", base).stdout)
    lines = [f"{image.reference}: {megabytes(size)} ({megabytes(base_size)} of it the base)"]
    history = podman("history", "--no-trunc", "--format", "{{.Size}}\t{{.CreatedBy}}",
                     image.reference).stdout  # fmt: skip
    for row in reversed(history.splitlines()):
        layer_size, _, created_by = row.partition("\t")
        if layer_size.strip() in ("0B", "0 B"):
            continue
        step = " ".join(created_by.removeprefix("/bin/sh -c ").removeprefix("#(nop) ").split())
        lines.append(f"  {layer_size.strip():>9}  {step[:100]}")
    if image.name != "skinscreen-dev-servers":
        # Most of an image is its environment: what in it costs most.
        largest = podman("run", "--rm", "--network", "none", "--no-healthcheck",
                         "--entrypoint", "sh", image.reference,
                         "-c", "du -sk /opt/skinscreen/lib/python3*/site-packages/* "
                         "| sort -rn | head -6").stdout  # fmt: skip
        packages = [
            f"{Path(path).name} {int(kilobytes) / 1e3:,.0f} MB"
            for kilobytes, path in (row.split("\t", 1) for row in largest.splitlines())
        ]
        lines.append(f"  largest in /opt/skinscreen: {', '.join(packages)}")
    return "\n".join(lines)


def build(names: Sequence[str], base: str | None) -> list[str]:
    """Build `names` on `base` (the local Debian when None); their reports."""
    install_tools()
    if base is None:
        build_base()
        base = BASE_IMAGE
    reports = []
    for name in names:
        image = IMAGES[name]
        print(f"building {image.reference} from {image.dockerfile}", flush=True)
        try:
            podman(*build_arguments(image, base), capture=False)
        except subprocess.CalledProcessError as exc:
            raise SystemExit(
                f"building {image.reference} from {image.dockerfile} failed (podman build exit "
                f"{exc.returncode}); the step that failed and its output are above"
            ) from None
        reports.append(report(image, base))
    return reports


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="skinscreen-images", description="Build skinscreen's service images with podman."
    )
    parser.add_argument("--only", nargs="+", choices=sorted(IMAGES), default=list(DEFAULT_IMAGES),
                        metavar="IMAGE", help="images to build (default: "
                        f"{' '.join(DEFAULT_IMAGES)}; also: skinscreen-inference-gpu)")  # fmt: skip
    parser.add_argument("--base", default=None, metavar="IMAGE",
                        help="the base image (default: Debian 12 built here with debootstrap, "
                        f"kept as {BASE_IMAGE})")  # fmt: skip
    args = parser.parse_args(argv)
    reports = build(args.only, args.base)
    print("\n" + "\n\n".join(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
