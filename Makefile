# The set-up commands of the README:
#   make run          installs into .venv and runs the runtime on its embedded default
#   make test         installs into .venv (with the test, bridge and ros2 extras), runs the whole suite
#   make test-fast    the tests that start no runtime process (the edit-test loop, under a minute)
#   make system-deps  the Debian packages of the C client's tests (apt-get, as root or with sudo)
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin
EXTRAS = test,bridge,ros2
# What the C client of the protocol (examples/c_client) builds with; without them its tests skip.
SYSTEM_PACKAGES = gcc make pkg-config libzmq3-dev libjansson-dev
SUDO = $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

install: $(BIN)/.installed

run: $(BIN)/.installed
	$(BIN)/iapc-runtime $(ARGS)

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m "not process and not slow" $(PYTEST_ARGS)

system-deps:
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
		$(SYSTEM_PACKAGES) >/dev/null

.PHONY: install run test test-fast system-deps
