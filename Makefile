# The two commands a new user types: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench soak clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/orchd serve

lint: $(STAMP)
	$(BIN)/ruff check orchd tests
	$(BIN)/ruff format --check orchd tests
	$(BIN)/mypy --strict orchd

test: lint
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/orchd bench

clean:
	rm -rf $(VENV) orchd.egg-info
