# The two commands a newcomer runs: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-linux test-arm64 bench-arm64 guests deps bench lint clean compile fuzz install-autostart shim

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# Bytecode for the editable install, written even where PYTHONDONTWRITEBYTECODE is set:
# without it every `xenopus` command recompiles what it imports. Then the table of the
# dataclass methods a domain process generates (src/xenopus/codecache.py), likewise.
compile: $(STAMP)
	$(PY) -m compileall -q src >/dev/null
	$(PY) -m xenopus.toolstack.spare --write-methods >/dev/null

deps:
	scripts/install-deps

guests:
	$(MAKE) -C guests
	@if command -v aarch64-linux-gnu-gcc >/dev/null; then $(MAKE) -C guests/arm64; \
	else echo "guests/arm64 skipped: no aarch64-linux-gnu-gcc (scripts/install-deps-arm64)"; fi

run: $(STAMP) compile guests
	$(VENV)/bin/xenopus create -c guests/hello.cfg

test: $(STAMP) compile deps guests
	$(VENV)/bin/ruff check src tests benchmarks fuzz
	scripts/fetch-grub-xen
	scripts/fetch-xen-utils
	$(PY) -m pytest -q tests --ignore=tests/linux --ignore=tests/arm64 -m 'not arm64_fetched'
	scripts/fetch-linux
	LINUX_SMOKE=1 scripts/test-linux

# Opt-in: Debian's kernels booted to userspace under xenopus (tests/linux). Where this
# host's KVM cannot run Linux, inside a nested test host (scripts/nested-host); NESTED=0/1
# forces the choice, PYTEST_ARGS passes pytest arguments.
# Opt-in: the arm64 suite (tests/arm64) inside an emulated arm64 host with KVM/arm64
# (scripts/arm64-host: QEMU TCG with EL2, Debian's arm64 6.12 kernel and Python).
test-arm64: $(STAMP) compile
	scripts/install-deps-arm64
	scripts/fetch-arm64
	$(MAKE) -C guests/arm64
	$(PY) -m pytest -q -m arm64_fetched tests/unit tests/vm
	scripts/arm64-host --timeout 900 -- python3 -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) tests/arm64

# Opt-in: Debian's arm64 kernel to userspace under xenopus and under QEMU -accel kvm, inside
# the same emulated arm64 host (benchmarks/arm64_startup.py).
bench-arm64: $(STAMP) compile
	scripts/install-deps-arm64
	scripts/fetch-arm64
	scripts/arm64-host --timeout 1500 -- python3 benchmarks/arm64_startup.py $(BENCH_ARGS)

test-linux: $(STAMP) compile deps guests shim
	scripts/fetch-linux
	scripts/fetch-qemu10
	scripts/fetch-grub-xen
	scripts/test-linux

# Xen's PV shim from Debian's Xen source (type = "pv" with pvshim = 1), built once into
# build/shim/xen-shim: scripts/build-shim.
shim: deps
	scripts/build-shim

bench: $(STAMP) compile deps
	$(PY) benchmarks/startup.py
	$(PY) benchmarks/exits.py
	$(PY) benchmarks/blk.py
	$(PY) benchmarks/hypercall.py
	$(PY) benchmarks/xenstore.py

# Coverage-guided fuzzing (atheris) of the XenStore wire parser, the virtqueue walker, the
# xl.cfg parser, a DomainConfig's JSON form and the kernel loaders, FUZZ_SECONDS each, from fuzz/corpus (fuzz/run.py).
FUZZ_SECONDS ?= 60
fuzz: $(STAMP) compile
	$(PY) -m fuzz.run --seconds $(FUZZ_SECONDS)

# /etc/xen/auto-style autostart at boot (dist/xenopus-autostart.service), for this checkout's
# venv; then `systemctl enable --now xenopus-autostart`. Not part of `make run`.
UNITDIR ?= /etc/systemd/system
install-autostart: $(STAMP) compile
	sed -e 's|@PYTHON@|$(abspath $(PY))|g' -e 's|@SRCDIR@|$(CURDIR)|g' \
		dist/xenopus-autostart.service.in > $(UNITDIR)/xenopus-autostart.service.new
	mv $(UNITDIR)/xenopus-autostart.service.new $(UNITDIR)/xenopus-autostart.service
	mkdir -p /etc/xen/auto
	-systemctl daemon-reload

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks fuzz

clean:
	$(MAKE) -C guests clean
	rm -rf $(VENV) build src/*.egg-info
