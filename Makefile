# Entry points named in the README.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install test lint demo

install:
	bash tools/install.sh

test: install
	$(PY) -m pytest -q tests

demo:
	bash tools/demo.sh

lint: install
	$(VENV)/bin/ruff check projects tools tests configs
