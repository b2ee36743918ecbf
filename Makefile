# cunliang — the README names two targets: `make up` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: up test check lint typecheck unit install clean

# Install everything (CPU serving extra) and start the embedded stack.
up: $(STAMP)
	$(VENV)/bin/cunliang up

# Install everything plus the system packages the tests use, then lint, type-check and test.
test: $(STAMP)
	bash scripts/system-deps.sh
	$(MAKE) --no-print-directory check

check: lint typecheck unit

lint:
	$(VENV)/bin/ruff format --check scheduler workers tests bench
	$(VENV)/bin/ruff check scheduler workers tests bench

typecheck:
	$(VENV)/bin/mypy

unit:
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh scripts/llamacpp-wheel.sh scripts/llamacpp-no-common.cmake
	bash scripts/install.sh $(PYTHON) $(VENV)
	touch $(STAMP)

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache
