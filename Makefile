# Two commands: `make demo` and `make test`. Each sets up .venv by itself (again only when
# pyproject.toml or constraints.txt changed) and builds the project's MicroPython (again only
# when its pins, flags or manifest changed).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Eight workers on CI's 2 cores: the virtual-board tests mostly wait on I/O, on held buttons and
# on the virtual radio's connection events (the machine is about 60 % busy with six). pytest took
# 4 min 13 s with six, 3 min 37 s with eight. Eight used to fail a timing-bound test now and then;
# each such failure was a helper that only worked on an idle machine, since fixed (the bench's
# boot answer, the demo test's siren, the test console's hang). Two tests at a time per worker,
# the longest first (tests/durations.json, `make durations`), so that the run ends on short tests,
# not one long one. PYTEST_WORKERS= for one process.
PYTEST_WORKERS ?= -n 8 --maxschedchunk 2
# The venv install and the MicroPython build are independent (.venv/ vs build/micropython-*/):
# they run side by side, two jobs; JOBS=1 for one at a time. Only with one goal on the command
# line: `make clean test` must remove before it rebuilds, `make test demo` runs one, then the other.
JOBS ?= 2
ifeq ($(word 2,$(MAKECMDGOALS)),)
MAKEFLAGS += -j$(JOBS)
endif

.PHONY: all test demo firmware micropython bench referee venv labgrid clean lock durations

all: test

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	@touch $@

venv: $(STAMP)

# labgrid (coordinator, exporter, client) in a venv of its own: it needs its pyserial fork, which
# would replace the project's pyserial in .venv. The rig finds labgrid-client here (or on PATH).
LABGRID_VENV := .venv-labgrid
LABGRID_STAMP := $(LABGRID_VENV)/.installed
$(LABGRID_STAMP): constraints-labgrid.txt
	@test -x $(LABGRID_VENV)/bin/python || $(PYTHON) -m venv $(LABGRID_VENV)
	$(LABGRID_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r constraints-labgrid.txt
	@touch $@

labgrid: $(LABGRID_STAMP)

# Compile every firmware and board module with mpy-cross; fails with file:line on any error.
firmware: $(STAMP)
	$(BIN)/jikimi build

# The interpreters: MicroPython v1.28.0's Unix port with the real `bluetooth` module on NimBLE,
# built from the pinned source into build/: 64-bit for tests, virtual boards, demo and bench, and
# 32-bit with the firmware frozen in for the heap budget (about 55 s for all, the 64-bit and the
# 32-bit side by side, once; then a no-op, or a few seconds for the 32-bit one after a firmware change). Runs with the system Python, before
# the venv. Offline: JIKIMI_MICROPYTHON_SOURCE=<the pinned tarball or a git checkout>; else it
# fetches upstream. Needs gcc, make (build-essential) and gcc-multilib.
micropython:
	$(PYTHON) host/jikimi_host/toolchain/mpbuild.py

# pytest exits 5 when it collected no tests: that must fail too.
test: firmware micropython labgrid
	@$(BIN)/python -m pytest $(PYTEST_WORKERS) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests ran" >&2; exit 1; fi; exit $$rc

# Measure each test again for the run's order (tests/durations.json): after adding slow tests.
durations: firmware micropython labgrid
	$(BIN)/python -m pytest $(PYTEST_WORKERS) $(PYTEST_ARGS) --write-durations tests/durations.json

demo: $(STAMP) micropython
	$(BIN)/jikimi demo

bench: $(STAMP) micropython
	$(BIN)/python bench/bench_protocol.py
	$(BIN)/python bench/bench_core.py
	$(BIN)/python bench/bench_sim.py
	$(BIN)/python bench/bench_app.py
	$(BIN)/python bench/bench_relay.py
	$(BIN)/python bench/bench_radios.py
	$(BIN)/python bench/bench_attacks.py
	$(BIN)/python bench/bench_heap.py
	$(BIN)/python bench/bench_ui.py
	$(BIN)/python bench/bench_modem_faults.py
	$(BIN)/python bench/bench_location.py
	$(BIN)/python bench/bench_labgrid.py

# MicroPython's own two-device BLE tests (tests/multi_bluetooth, aioble's multitests) on two
# virtual boards: the table of what passes (tests/test_referee.py runs the same in `make test`).
referee: $(STAMP) micropython
	$(BIN)/python -m jikimi_host.sim.referee

# Refresh constraints.txt (the pinned versions of every indirect dependency) from a fresh venv.
lock:
	rm -rf /tmp/jikimi-lock && $(PYTHON) -m venv /tmp/jikimi-lock
	/tmp/jikimi-lock/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
	{ echo '# Exact versions of every dependency, direct and indirect. Regenerate with: make lock'; \
	  /tmp/jikimi-lock/bin/pip freeze --exclude-editable; } > constraints.txt

clean:
	rm -rf $(VENV) $(LABGRID_VENV) build .pytest_cache .hypothesis
