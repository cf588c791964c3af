# skinscreen: every command a user or CI runs. Each installs what it needs first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= ../shared/data/pad-ufes-20
STORE ?= var/models
RUNS ?= runs
INSTALLED := $(VENV)/.installed

.PHONY: install run train test lint format

$(INSTALLED): libs/core/pyproject.toml services/trainer/pyproject.toml requirements-dev.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "skinscreen needs Python 3.11 or newer"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==26.3
	$(PY) -m pip install --quiet -e libs/core -e services/trainer -r requirements-dev.txt
	touch $@

install: $(INSTALLED)

# Until the serving side exists, the main job is training the default model.
run: train

train: $(INSTALLED)
	$(VENV)/bin/skinscreen-trainer train --data $(DATA) --runs $(RUNS) --store $(STORE)

test: $(INSTALLED)
	$(PY) -m pytest

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy libs/core/src services/trainer/src tests

format: $(INSTALLED)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
