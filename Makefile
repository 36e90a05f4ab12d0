# pg-runbooks: `make demo` and `make test` on a fresh clone; both bootstrap .venv with pip.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench lab clean sandbox-stop

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/runbooks demo

lint: $(STAMP)
	$(BIN)/ruff check runbooks_lib tests benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/latency_catalog.py
	$(BIN)/python benchmarks/log_scan.py

# Jupyter refuses to run as root without --allow-root; it listens on loopback only, as the sandbox.
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

lab: $(STAMP)
	$(BIN)/python -m pip install --quiet jupyterlab
	$(BIN)/runbooks sandbox start
	DATABASE_URL="$$($(BIN)/runbooks sandbox url --role monitor)" \
	  $(BIN)/jupyter lab --ip=127.0.0.1 $(LAB_ROOT) notebooks/

sandbox-stop: $(STAMP)
	$(BIN)/runbooks sandbox stop

clean:
	rm -rf $(VENV) reports .pytest_cache .mypy_cache .ruff_cache
