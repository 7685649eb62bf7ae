# diskvault: `make demo` installs everything and runs the demo; `make test` installs and runs the tests.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install-system-deps.sh
	bash scripts/install-system-deps.sh
	python3 -m venv $(VENV) || { apt-get install -y -qq python3-venv && python3 -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m compileall -q src/diskvault  # as a wheel install would: start-up reads bytecode, not source
	touch $(STAMP)

demo: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh

test: install
	$(VENV)/bin/pytest -q

bench: install
	bash scripts/install-system-deps.sh --bench
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) bench/bench_image.py

clean:
	rm -rf $(VENV) build src/*.egg-info
