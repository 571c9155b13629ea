# Entry points named in the README.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install test test-full lint demo

install:
	bash tools/install.sh

test: install
	$(PY) -m pytest -q tests

# the same suite plus the long variants (tests/conftest.py --full)
test-full: install
	$(PY) -m pytest -q tests --full

demo:
	bash tools/demo.sh

lint: install
	$(VENV)/bin/ruff check projects tools tests configs
