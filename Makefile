# The two commands a new user types: `make run` and `make test` (and `make check` while editing).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# What running needs, and what testing needs on top (linters, pytest, schemathesis).
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed
# The bundled examples talk to this fake OSS; `make run` starts it beside the daemon.
OSS_PORT ?= 8471

.PHONY: install run test check lint sysdeps tools pgtools browser bench soak clean

$(RUN_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e .
	touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP)
	@echo "installing the test tools into $(VENV) with pip (pyproject.toml's [test] extra)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The fake OSS as `make run` starts it. The daemon has no TCP listener there, so the fake OSS
# posts its job callbacks (provision_port) over the daemon's Unix socket.
OSS_ARGS = --port $(OSS_PORT) --latency 200ms --error-rate 0.05 --callback-socket $(CURDIR)/orchd.sock

# The daemon on its embedded default (./orchd.db, ./orchd.sock, the bundled examples), a fake
# OSS for the examples to talk to, and a few demo processes started once the daemon answers.
run: $(RUN_STAMP)
	@$(BIN)/orchd fake-oss $(OSS_ARGS) & oss=$$!; \
	trap 'kill $$oss 2>/dev/null' EXIT INT TERM; \
	ORCHD_OSS_URL=http://127.0.0.1:$(OSS_PORT) $(BIN)/python -m orchd.examples.demo & \
	ORCHD_OSS_URL=http://127.0.0.1:$(OSS_PORT) $(BIN)/orchd serve

lint: $(STAMP)
	$(BIN)/ruff check orchd tests
	$(BIN)/ruff format --check orchd tests
	$(BIN)/mypy --strict orchd

# System packages some tests need: systemd-analyze (the unit-file tests), a PostgreSQL server
# on 127.0.0.1:5432 (trust auth, user postgres), $$ORCHD_TEST_PG or the server binaries for a
# private one (the PostgreSQL tests), and the distribution's Chromium, which Playwright drives
# (the console's browser tests; Playwright cannot download its own browser here).
# tests/system-packages.sh says which are missing and what it installs before installing them
# with apt-get, only as root on Debian-like systems and never with NO_INSTALL=1; otherwise it
# installs nothing and names the tests that will skip (each says why when it does).
sysdeps:
	@tests/system-packages.sh systemd postgresql chromium
tools:
	@tests/system-packages.sh systemd
pgtools:
	@tests/system-packages.sh postgresql
CHROMIUM ?= /usr/bin/chromium
browser:
	@ORCHD_CHROMIUM=$(CHROMIUM) tests/system-packages.sh chromium

# The suite runs on JOBS xdist workers (the tests wait on daemons, sockets and PostgreSQL more
# than they compute, so more workers than cores); --dist loadgroup sends each test to the next
# free worker but keeps a file with module-scoped fixtures on one, and the load and timing
# tests (the groups "bench" and "nodes") one after another on one each, started first
# (tests/conftest.py). JOBS=0 runs serially.
JOBS ?= 6
PYTEST_JOBS = $(if $(filter 0,$(JOBS)),-p no:xdist,-n $(JOBS) --dist loadgroup)

test: lint sysdeps
	$(BIN)/pytest $(PYTEST_JOBS)

# The edit-test loop: the fast tiers (unit and engine: no daemon subprocess), in under a
# minute; `make lint` runs the linters, `make test` everything.
check: $(STAMP)
	$(BIN)/pytest $(PYTEST_JOBS) -q -m "unit or engine"

bench: $(RUN_STAMP)
	$(BIN)/orchd bench

# The long crash test: 100 kills over 5,000 processes (make test runs a short one).
soak: $(STAMP)
	ORCHD_SOAK=long $(BIN)/pytest tests/test_soak.py::test_long_soak -s

clean:
	rm -rf $(VENV) orchd.egg-info
