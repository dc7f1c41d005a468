# Every target installs what it needs first, so each works on a fresh clone with only Python >= 3.11.
SHELL := /bin/bash
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
RUN := $(UV) run --frozen
OUT ?= out

.PHONY: help uv install sample test lint format typecheck bench check clean

help:  ## List targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

uv:  ## Install uv when it is missing (pip install uv)
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || \
		$(PYTHON) -m pip install --quiet --user uv 2>/dev/null || \
		$(PYTHON) -m pip install --quiet --user --break-system-packages uv || \
		$(PYTHON) -m pip install --quiet uv

install: uv  ## Create .venv from uv.lock (runtime + dev tools)
	@$(UV) sync --frozen --quiet

sample: install  ## Run the pipeline on the bundled samples with the offline model -> out/evolutions.jsonl
	$(RUN) service-ambitions run --input-file samples/services.jsonl --output-file $(OUT)/evolutions.jsonl \
		--model offline --cache-dir $(OUT)/cache
	@echo "wrote $(OUT)/evolutions.jsonl"

test: install  ## Run the whole test suite
	$(RUN) pytest -q

lint: install  ## ruff lint + format check, log wording lint
	$(RUN) ruff check src tests scripts
	$(RUN) ruff format --check src tests scripts

format: install  ## Apply ruff formatting and safe fixes
	$(RUN) ruff format src tests scripts
	$(RUN) ruff check --fix src tests scripts

typecheck: install  ## mypy --strict over src, tests and scripts
	$(RUN) mypy

bench: install  ## Benchmark: services/s, calls/s, CPU ms per call, peak RSS (offline model)
	$(RUN) python scripts/bench.py

check: lint typecheck test  ## What CI runs

clean:  ## Remove build and run artefacts
	rm -rf $(OUT) .pytest_cache .mypy_cache .ruff_cache dist build
