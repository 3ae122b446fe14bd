# Two commands on a fresh machine with only Python 3.11+:  make demo  and  make test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian packages the tests need: Mosquitto is the real MQTT broker of the broker tests;
# mosquitto_pub (mosquitto-clients) is the external client of the central's end-to-end test.
DEBIAN_PACKAGES := mosquitto mosquitto-clients
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-packages demo test lint bench clean

setup: $(VENV)/.installed

# Build dependencies go into the venv first so the Cython extension is built once, in place.
$(VENV)/.installed: pyproject.toml setup.py $(wildcard cext/*.pyx)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "setuptools>=77" "cython>=3.1" "numpy>=2.0"
	$(BIN)/pip install --quiet --no-build-isolation -e '.[test]'
	touch $@

system-packages:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

# The one-command demo: embedded broker, a central with every disease module, 50 simulated
# homes, and the nurse dashboard (quit with q). Headless: make demo DEMO_ARGS="--headless".
demo: setup
	$(BIN)/telemon demo $(DEMO_ARGS)

lint: setup
	$(BIN)/ruff check .

# The suite runs twice: with the compiled core, then with the pure-Python reference. The
# second pass leaves out the tests marked slow (pip installs of telemon and of generated
# plugins, the kill tests of edge and central): none of them runs the signal processing.
test: setup system-packages lint
	$(BIN)/pytest
	TELEMON_PUREPYTHON=1 $(BIN)/pytest -m "not slow"
	$(BIN)/pytest benchmarks --benchmark-disable -q

# The peers (pandas, neurokit2, wfdb) are installed only here; `make test` skips their rows.
bench: setup
	$(BIN)/pip install --quiet --no-build-isolation -e '.[test,bench]'
	$(BIN)/pytest benchmarks --benchmark-group-by=group --benchmark-columns=min,median,ops

clean:
	rm -rf $(VENV) build *.egg-info cext/*.c cext/*.so
