# skinscreen: every command a user or CI runs. Each installs what it needs first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= ../shared/data/pad-ufes-20
STORE ?= var/models
RUNS ?= runs
INSTALLED := $(VENV)/.installed

.PHONY: install run bench train test lint format k8s-check

# uv installs the workspace's lock (uv.lock) into $(VENV): every service, library and tool at
# the exact versions locked. uv itself is pinned here and in pyproject.toml (required-version).
UV_VERSION := 0.13.9
UV := $(VENV)/bin/uv
WORKSPACE := pyproject.toml uv.lock libs/core/pyproject.toml libs/runtime/pyproject.toml \
	services/trainer/pyproject.toml services/gateway/pyproject.toml \
	services/inference/pyproject.toml dev/pyproject.toml research/pyproject.toml

$(INSTALLED): $(WORKSPACE)
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "skinscreen needs Python 3.11 or newer"'
	[ -x $(PY) ] || $(PYTHON) -m venv --without-pip $(VENV)
	$(UV) --version 2>/dev/null | grep -q '^uv $(UV_VERSION)\b' \
		|| $(PYTHON) -m pip --python $(PY) install --quiet uv==$(UV_VERSION)
	UV_PROJECT_ENVIRONMENT=$(abspath $(VENV)) $(UV) sync --frozen
	touch $@

install: $(INSTALLED)

# The whole stack (gateway, inference and trainer workers) on embedded PostgreSQL and Redis in
# var/, unless DATABASE_URL / REDIS_URL are set; models/ seeds the store var/models, training
# runs read data sources from the folder holding $(DATA). Ctrl-C stops it.
run: $(INSTALLED)
	TRAINING_DATA_DIR=$${TRAINING_DATA_DIR:-$(dir $(DATA))} $(VENV)/bin/skinscreen-stack --data var

# Real photos through the whole path from many clients, beside raw ONNX Runtime throughput.
bench: $(INSTALLED)
	$(VENV)/bin/skinscreen-bench --photos $(DATA)

train: $(INSTALLED)
	$(VENV)/bin/skinscreen-trainer train --data $(DATA) --runs $(RUNS) --store $(STORE)

.PHONY: experiments dermoscopy dermoscopy-lite0
HAM10000 ?= ../shared/data/ham10000
# The settings of docs/experiments/fusion (CPU, cached mode; the last three were the
# defaults when it was made); with a GPU, e.g.
# EXPERIMENTS_OPTIONS="--target cancer --ensemble 1 --mode full --device cuda".
EXPERIMENTS_OPTIONS ?= --target cancer --views 4 --ensemble 1 --epochs 12 \
	--mode cached --test-time-views 1 --recall-target 0.95

# The fusion paper's tables and t-SNE figures, from $(DATA), into a run folder in $(RUNS).
experiments: $(INSTALLED)
	$(VENV)/bin/skinscreen-research experiments --data $(DATA) --runs $(RUNS) $(EXPERIMENTS_OPTIONS)

# The dermoscopy paper on $(HAM10000); publishes skinscreen-dermoscopy into $(STORE).
# glibc hands the network's large freed buffers back to the system and faults them in
# again at every step (31 % of a run's CPU time); keeping them trains 1.75x faster.
dermoscopy: export MALLOC_MMAP_THRESHOLD_ := 4294967296
dermoscopy: export MALLOC_TRIM_THRESHOLD_ := 4294967296
dermoscopy: $(INSTALLED)
	$(VENV)/bin/skinscreen-research dermoscopy --data $(HAM10000) --runs $(RUNS) --store $(STORE)

# EfficientNet-Lite0 fully fine-tuned against the shipped skinscreen-dermoscopy (REFERENCE), on
# the split it was trained on: docs/experiments/dermoscopy-lite0 (71 min on 2 CPU cores);
# on a GPU, add --device cuda to LITE0_OPTIONS.
REFERENCE ?= $(lastword $(sort $(wildcard models/skinscreen-dermoscopy/*)))
LITE0_OPTIONS ?= --lite0-mode full --lite0-image-size 192 --lite0-epochs 12 --lite0-learning-rate 3e-4
dermoscopy-lite0: export MALLOC_MMAP_THRESHOLD_ := 4294967296
dermoscopy-lite0: export MALLOC_TRIM_THRESHOLD_ := 4294967296
dermoscopy-lite0: $(INSTALLED)
	$(VENV)/bin/skinscreen-research dermoscopy-lite0 --data $(HAM10000) --reference $(REFERENCE) \
		--runs $(RUNS) $(LITE0_OPTIONS)

# Debian's Chromium, which the browser tests (tests/serving/test_app.py) drive through Playwright;
# where it cannot be installed (not root, no apt-get) they skip and say why.
CHROMIUM := /usr/bin/chromium
.PHONY: chromium
chromium:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends chromium) \
		|| echo "could not install Debian's chromium: the browser tests will skip"; \
	else echo "no $(CHROMIUM), and apt-get as root is not available to install Debian's chromium: the browser tests will skip"; fi

# The service images, built here with podman from the Dockerfiles that ship: no daemon, no
# registry. Installs Debian's podman, buildah, debootstrap and runc when missing (as root),
# builds Debian 12 from Debian's mirror as the base (kept for the next run), then each image,
# and prints its size and what each layer costs. IMAGES_OPTIONS="--only skinscreen-inference-gpu"
# builds the GPU image; "--base IMAGE" builds on a registry's Debian instead.
.PHONY: images
images: $(INSTALLED)
	$(VENV)/bin/skinscreen-images $(IMAGES_OPTIONS)

# `make run` from the images: every service in its container, as its manifest runs it, on
# PostgreSQL and Redis in containers; the gateway on http://127.0.0.1:8000. Ctrl-C stops it.
.PHONY: run-images
run-images: images
	$(VENV)/bin/skinscreen-image-stack --data var/image-stack

# tests/images runs the stack from the images.
test: $(INSTALLED) chromium images
	$(PY) -m pytest

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy libs/core/src libs/runtime/src services/trainer/src services/gateway/src \
		services/inference/src dev/src research/src tests

K8S_VENV ?= .venv-k8s
K8S_INSTALLED := $(K8S_VENV)/.installed
KUBECTL ?= kubectl

# checkov, kubernetes-validate and hadolint, apart from the services: checkov's pins clash.
$(K8S_INSTALLED): deploy/requirements-k8s.txt
	$(PYTHON) -m venv $(K8S_VENV)
	$(K8S_VENV)/bin/python -m pip install --quiet --upgrade pip==26.3
	$(K8S_VENV)/bin/python -m pip install --quiet -r deploy/requirements-k8s.txt
	touch $@

# Every overlay builds and validates (Kubernetes schemas, the custom resources' schemas),
# checkov and hadolint find nothing, the rendered objects have the properties docs/deploy.md lists.
# `make test` runs the same tests; they build .venv-k8s through this Makefile when missing.
k8s-check: $(INSTALLED) $(K8S_INSTALLED)
	KUBECTL=$(KUBECTL) $(PY) -m pytest tests/deploy/k8s -q

format: $(INSTALLED)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
