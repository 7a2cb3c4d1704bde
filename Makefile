# The two commands a newcomer runs: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-linux guests deps bench lint clean compile

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# Bytecode for the editable install, written even where PYTHONDONTWRITEBYTECODE is set:
# without it every `xenopus` command recompiles what it imports.
compile: $(STAMP)
	$(PY) -m compileall -q src >/dev/null

deps:
	scripts/install-deps

guests:
	$(MAKE) -C guests

run: $(STAMP) compile guests
	$(VENV)/bin/xenopus create -c guests/hello.cfg

test: $(STAMP) compile deps guests
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q tests --ignore=tests/linux
	scripts/fetch-linux
	LINUX_SMOKE=1 scripts/test-linux

# Opt-in: Debian's kernels booted to userspace under xenopus (tests/linux). Where this
# host's KVM cannot run Linux, inside a nested test host (scripts/nested-host); NESTED=0/1
# forces the choice, PYTEST_ARGS passes pytest arguments.
test-linux: $(STAMP) compile deps guests
	scripts/fetch-linux
	scripts/fetch-qemu10
	scripts/test-linux

bench: $(STAMP) compile deps
	$(PY) benchmarks/startup.py
	$(PY) benchmarks/exits.py
	$(PY) benchmarks/blk.py
	$(PY) benchmarks/hypercall.py
	$(PY) benchmarks/xenstore.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	$(MAKE) -C guests clean
	rm -rf $(VENV) build src/*.egg-info
