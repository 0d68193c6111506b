# Two commands do all set-up on a fresh machine:
#   make demo   - install, then run the demo sagas on a local Ray
#   make test   - install, then lint, type-check, check the import layers and run every test
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: demo test lint unit integration chaos bench bench-quick clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

$(VENV)/.bench: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[test,bench]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/coordinator demo

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest -q -ra

unit: $(VENV)/.installed
	$(PY) -m pytest -q tests/unit

bench: $(VENV)/.bench
	$(PY) -m bench

bench-quick: $(VENV)/.bench
	$(PY) -m bench --quick

clean:
	rm -rf $(VENV) coordinator-data bench-results.json
