# One task runner for developers and CI. Every target installs what it needs.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
export UV_LINK_MODE ?= copy
# uv may live in .tools/ (installed by bootstrap.sh); tests call it too.
export PATH := $(CURDIR)/.tools/bin:$(PATH)

.PHONY: setup demo test lint fmt bench soak clean

setup:  ## Debian packages, uv, and the workspace's locked Python packages
	@./deploy/local/bootstrap.sh
	@$(UV) sync --locked --quiet

demo: setup  ## broker, InfluxDB, a simulated fleet and the pipeline, with a live view
	@$(UV) run --locked fieldline demo

test: setup lint  ## the whole test suite against real Mosquitto and InfluxDB
	$(UV) run --locked pytest

bench: setup  ## benchmarks on loopback (< 15 min): bench/results/latest.json, see docs/performance.md
	$(UV) run --locked python -m bench

soak: setup  ## 30 minutes of steady load with random kills (FIELDLINE_SOAK_SECONDS to change)
	$(UV) run --locked pytest -m soak tests/soak -s -p no:randomly --timeout 0

lint: setup  ## ruff and mypy, as CI runs them
	$(UV) run --locked ruff check .
	$(UV) run --locked ruff format --check .
	$(UV) run --locked mypy

fmt: setup
	$(UV) run --locked ruff format .
	$(UV) run --locked ruff check --fix .

clean:
	rm -rf .venv .tools .pytest_cache .mypy_cache .ruff_cache
