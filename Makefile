# skinscreen: every command a user or CI runs. Each installs what it needs first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= ../shared/data/pad-ufes-20
STORE ?= var/models
RUNS ?= runs
INSTALLED := $(VENV)/.installed

.PHONY: install run bench train test lint format

SERVICE_PROJECTS := libs/core/pyproject.toml libs/runtime/pyproject.toml \
	services/trainer/pyproject.toml services/gateway/pyproject.toml \
	services/inference/pyproject.toml

$(INSTALLED): $(SERVICE_PROJECTS) requirements-dev.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "skinscreen needs Python 3.11 or newer"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==26.3
	$(PY) -m pip install --quiet -e libs/core -e 'libs/runtime[embedded]' -e services/trainer \
		-e services/gateway -e 'services/inference[bench]' -r requirements-dev.txt
	touch $@

install: $(INSTALLED)

# The whole stack (gateway, inference worker) on embedded PostgreSQL and Redis in var/,
# unless DATABASE_URL / REDIS_URL are set; serves the newest model in models/. Ctrl-C stops it.
run: $(INSTALLED)
	$(VENV)/bin/skinscreen-stack --data var

# Real photos through the whole path from many clients, beside raw ONNX Runtime throughput.
bench: $(INSTALLED)
	$(VENV)/bin/skinscreen-bench --photos $(DATA)

train: $(INSTALLED)
	$(VENV)/bin/skinscreen-trainer train --data $(DATA) --runs $(RUNS) --store $(STORE)

test: $(INSTALLED)
	$(PY) -m pytest

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy libs/core/src libs/runtime/src services/trainer/src services/gateway/src \
		services/inference/src tests

format: $(INSTALLED)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
