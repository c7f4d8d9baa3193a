# popflow's entry points. `make test` is what CI runs (.ci/run); `make demo` is the quick start.
#   make test                 system packages, venv, databases, then lint + type check + tests
#   make test PYTEST_ARGS='-k clamav -x'
#   make lint / make typecheck / make pytest   (venv only, no system setup)
#   make demo DEMO_ARGS='--dir /tmp/demo'
#   make bench
#   make interop              real POP3 servers from Debian vs popflow (root; not part of make test)
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

VENV ?= .venv
export VENV
BIN := $(VENV)/bin
# Per-test limit (pytest-timeout); a hung server fixture fails one test instead of the whole run.
TEST_TIMEOUT ?= 300
PYTEST_ARGS ?=
DEMO_ARGS ?=
# Plugin packages under plugins/ are type-checked too (the core's mypy config names only popflow).
PLUGIN_PACKAGES := $(patsubst %/__init__.py,%,$(wildcard plugins/*/popflow_*/__init__.py))

.PHONY: test setup setup-test-env lint typecheck pytest demo bench clean interop

test: setup-test-env
	$(MAKE) --no-print-directory lint typecheck pytest

setup:
	scripts/setup-dev.sh

setup-test-env:
	scripts/setup-test-env.sh

lint: setup
	$(BIN)/ruff check .

typecheck: setup
	$(BIN)/mypy
	$(if $(PLUGIN_PACKAGES),$(BIN)/mypy $(PLUGIN_PACKAGES))
	$(BIN)/mypy interop

pytest: setup
	$(BIN)/pytest -q -p no:cacheprovider --timeout=$(TEST_TIMEOUT) $(PYTEST_ARGS)

demo: setup
	$(BIN)/popflow demo $(DEMO_ARGS)

bench: setup
	if [[ -x bench/run.sh || -f bench/run.sh ]]; then bash bench/run.sh; \
	else echo "bench/run.sh does not exist yet: nothing to run"; fi

clean:
	rm -rf .mypy_cache .ruff_cache .pytest_cache build dist *.egg-info plugins/*/*.egg-info

# The interop suite (docs/interop.md): real POP3 servers unpacked from Debian packages, run by hand on
# loopback ports, polled by popflow in keep and delete modes. Needs root; not part of `make test`.
# popa3d comes from scripts/setup-test-env.sh (make test's setup); its row says so if it is missing.
#   make interop                          every server
#   make interop INTEROP_SERVERS='mailutils solid'
INTEROP_SERVERS ?=
INTEROP_OUT ?= interop-matrix.md
interop: setup
	interop/fetch.sh
	$(BIN)/python -m interop.run --out $(INTEROP_OUT) $(INTEROP_SERVERS)
