# make demo: set up and run the demo on embedded defaults.  make test: set up and run every test.
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# PostgreSQL for the chain-store tests (the tests start their own server).
system-deps:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null; \
	fi

demo: $(STAMP)
	$(BIN)/twinledger demo

lint: $(STAMP)
	$(BIN)/ruff check twinledger tests

test: $(STAMP) system-deps lint
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/twinledger bench ledger --txs 20000
	$(BIN)/twinledger bench network --validators 4 --txs 20000

clean:
	rm -rf $(VENV) demo-node .pytest_cache .hypothesis
