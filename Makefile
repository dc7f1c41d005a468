# Every target installs what it needs first, so each works on a fresh clone with only Python >= 3.11.
SHELL := /bin/bash
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
RUN := $(UV) run --frozen
OUT ?= out

.PHONY: help uv install browser sample test lint format typecheck bench bench-check bench-shards check clean sbom licenses dist provenance audit docs

help:  ## List targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

uv:  ## Install uv when it is missing (pip install uv)
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || \
		$(PYTHON) -m pip install --quiet --user uv 2>/dev/null || \
		$(PYTHON) -m pip install --quiet --user --break-system-packages uv || \
		$(PYTHON) -m pip install --quiet uv

install: uv  ## Create .venv from uv.lock (runtime + dev tools), with bytecode compiled
	@$(UV) sync --frozen --quiet --compile-bytecode
	@$(UV) run --frozen python -m compileall -q src scripts >/dev/null

sample: install  ## Run the pipeline on the bundled samples with the offline model -> out/evolutions.jsonl
	$(RUN) service-ambitions run --input-file samples/services.jsonl --output-file $(OUT)/evolutions.jsonl \
		--model offline --cache-dir $(OUT)/cache
	@echo "wrote $(OUT)/evolutions.jsonl"

CHROMIUM ?= /usr/bin/chromium

browser:  ## Install Chromium (Debian package) for the report's browser tests when $(CHROMIUM) is missing
	@if [ -x "$(CHROMIUM)" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium with apt-get (for the report's browser tests)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "Chromium is missing at $(CHROMIUM) and cannot be installed here (needs root and apt-get):"; \
		echo "  install it (e.g. sudo apt-get install chromium) or set CHROMIUM=/path/to/chromium;"; \
		echo "  the browser tests are skipped without it (and fail under CI=true)"; \
	fi

test: install browser  ## Run the whole test suite (installs Chromium for the browser tests when missing)
	$(RUN) pytest -q

lint: install  ## ruff lint + format check, log wording lint
	$(RUN) ruff check src tests scripts
	$(RUN) ruff format --check src tests scripts
	$(RUN) python scripts/log_lint.py src
	$(RUN) lint-imports --no-cache

format: install  ## Apply ruff formatting and safe fixes
	$(RUN) ruff format src tests scripts
	$(RUN) ruff check --fix src tests scripts

typecheck: install  ## mypy --strict over src, tests and scripts
	$(RUN) mypy

docs: install  ## Regenerate docs/cli.md and the key tables of docs/configuration.md from the code
	$(RUN) python scripts/gen_docs.py

bench: install  ## Benchmark: services/s, calls/s, CPU ms per call, peak RSS, scheduler efficiency; gateway vs a local server
	$(RUN) python scripts/bench.py --sizes 100 1000 --regimes
	$(RUN) python scripts/bench_gateway.py

bench-check: install  ## Performance gate: fail on a >15% regression against benchmarks/golden.json
	$(RUN) python scripts/bench.py --check benchmarks/golden.json

bench-shards: install  ## Shards N=1,2,4 under one shared rate limit (fake server), merge time and RSS for 10,000 records
	$(RUN) python scripts/bench_shards.py

sbom: install  ## CycloneDX 1.6 SBOM of the runtime-only environment -> dist/sbom.cdx.json
	$(RUN) python scripts/supply_chain/sbom.py --output dist/sbom.cdx.json

licenses: install  ## Check runtime dependency licences against config/licenses-allow.txt
	$(RUN) python scripts/supply_chain/licenses.py

dist: install  ## Reproducible sdist + wheel of HEAD (SOURCE_DATE_EPOCH = last commit), built twice and compared
	$(RUN) python scripts/supply_chain/dist.py --out-dir dist

provenance: dist  ## SLSA v1 provenance for dist/ -> dist/provenance.intoto.json, then verify it
	$(RUN) python scripts/provenance.py generate --dist-dir dist
	$(RUN) python scripts/provenance.py verify --dist-dir dist

audit: install  ## pip-audit the locked runtime requirements (0 clean, 1 vulnerable, 2 error, 3 unavailable, 4 incomplete)
	$(RUN) python scripts/supply_chain/audit.py

check: lint typecheck test  ## What CI runs

clean:  ## Remove build and run artefacts
	rm -rf $(OUT) .pytest_cache .mypy_cache .ruff_cache dist build
