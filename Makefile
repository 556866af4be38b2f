# The two set-up commands of the README:
#   make run    installs into .venv and runs the runtime on its embedded default
#   make test   installs into .venv (with test extras) and runs the test suite
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,bridge]'
	touch $@

install: $(BIN)/.installed

run: $(BIN)/.installed
	$(BIN)/iapc-runtime $(ARGS)

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

.PHONY: install run test
