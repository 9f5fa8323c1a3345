# The two commands a new user types: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# What running needs, and what testing needs on top (linters, pytest, schemathesis).
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed
# The bundled examples talk to this fake OSS; `make run` starts it beside the daemon.
OSS_PORT ?= 8471

.PHONY: install run test lint tools pgtools browser bench soak clean

$(RUN_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e .
	touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP)
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

# The unit-file tests need systemd-analyze; install systemd's tools when they are missing
# (as root on Debian-like systems; otherwise those tests skip and say why).
tools:
	@command -v systemd-analyze >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null) || \
	  echo "systemd-analyze not available: the unit-file tests will be skipped"; }

# The PostgreSQL tests use a server on 127.0.0.1:5432 (trust auth, user postgres) or
# $$ORCHD_TEST_PG; without one they start a private cluster with the server binaries, installed
# here when missing (as root on Debian-like systems; otherwise those tests skip and say why).
pgtools:
	@pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) || \
	  echo "no PostgreSQL server nor its binaries: the PostgreSQL tests will be skipped"; }

# The console's browser tests drive the distribution's Chromium through Playwright (which
# cannot download its own browser here); install it when missing, as root on Debian-like
# systems, otherwise those tests skip and say why.
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "chromium not available: the console's browser tests will be skipped"; }

test: lint tools pgtools browser
	$(BIN)/pytest

bench: $(RUN_STAMP)
	$(BIN)/orchd bench

# The long crash test: 100 kills over 5,000 processes (make test runs a short one).
soak: $(STAMP)
	ORCHD_SOAK=long $(BIN)/pytest tests/test_soak.py -m soak -s

clean:
	rm -rf $(VENV) orchd.egg-info
