# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The data path compiled with mypyc (setup.py), in place in src/ for the editable install:
# rebuilt whenever a source file or the build's own files change.
BUILT := $(VENV)/.built
BUILD_INPUTS := $(shell find src -name '*.py') pyproject.toml setup.py
# The same source as pure Python, installed (not editable: the extension modules in src/ would
# win) into a second venv, so that build is tested too and cannot rot.
PURE := .venv-pure
PURE_STAMP := $(PURE)/.installed
PURE_BUILT := $(PURE)/.built
# What runs against the pure-Python build as well: everything that exercises the data path,
# its policies and its metrics. tests/deploy checks packaging and manifests, the same for both.
PURE_TESTS := tests/dataplane tests/unit tests/integration tests/resilience tests/hardening tests/tls tests/soak

.PHONY: run test lint unit build bench soak clean

# Dependencies and tools, with the package installed editable but not compiled: $(BUILT)
# compiles, once they are there.
$(STAMP): pyproject.toml
	bash scripts/install-build-tools.sh $(PYTHON)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	SIDECAR_PROXY_COMPILE=0 $(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# An extension module outlives its source (a renamed or deleted module's would still import),
# so each build starts with none in src/. SIDECAR_PROXY_COMPILE=1: fail rather than fall back.
$(BUILT): $(STAMP) $(BUILD_INPUTS)
	find src -name '*.so' -delete
	SIDECAR_PROXY_COMPILE=1 $(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(BUILT)

$(PURE_STAMP): pyproject.toml
	$(PYTHON) -m venv $(PURE)
	$(PURE)/bin/pip install -q --upgrade pip
	SIDECAR_PROXY_COMPILE=0 $(PURE)/bin/pip install -q '.[test]'
	touch $(PURE_STAMP)

# build/lib is setuptools' staging copy of the pure package; a module deleted from src/ would
# stay in it and be installed again.
$(PURE_BUILT): $(PURE_STAMP) $(BUILD_INPUTS)
	rm -rf build/lib
	SIDECAR_PROXY_COMPILE=0 $(PURE)/bin/pip install -q --no-deps --no-build-isolation \
		--force-reinstall .
	touch $(PURE_BUILT)

build: $(BUILT)

run: $(BUILT)
	$(BIN)/sidecar-proxy demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples setup.py
	$(BIN)/ruff format --check src tests bench examples setup.py
	$(BIN)/mypy

test: $(BUILT) $(PURE_BUILT)
	bash scripts/install-test-tools.sh
	$(MAKE) lint
	SIDECAR_PROXY_EXPECT_BUILD=compiled $(BIN)/pytest -q
	SIDECAR_PROXY_EXPECT_BUILD="pure Python" $(PURE)/bin/pytest -q -m "not build" $(PURE_TESTS)

bench: $(BUILT) $(PURE_BUILT)
	bash scripts/install-test-tools.sh
	$(BIN)/python -m bench.run --pure $(PURE)/bin/sidecar-proxy
	$(BIN)/python -m bench.h2
	$(BIN)/python -m bench.grpc

soak: $(BUILT)
	$(BIN)/python -m bench.soak

clean:
	rm -rf $(VENV) $(PURE) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
	find src -name '*.so' -delete
