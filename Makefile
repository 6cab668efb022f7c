# mfetch developer tasks. Everything runs from the project's own .venv, which
# `make install` creates on a fresh clone (Python >= 3.11 needed on PATH).
#
#   make demo        tracker + 3 agents on 127.0.0.1, fetch one file from all of them
#   make test        the whole test suite
#   make lint        ruff + mypy on the packages
#   make bench       benchmark over shaped links, 3 rounds per case (root: network namespaces)
#   make bench-tracker  tracker load test, SQLite and Redis (needs redis-server)
#   make bench-swarm    one origin, eight fetchers feeding each other (root: namespaces)
#   make fuzz        fuzz the Range parser and the tracker's validation, FUZZ_SECONDS each
#   make proto       regenerate common/api/ from proto/
#   make clean       remove .venv, demo-run/ and caches

SHELL := /bin/bash

VENV     := .venv
VPY      := $(VENV)/bin/python
STAMP    := $(VENV)/.installed
PACKAGES := common tracker agent client

# The interpreter that creates the venv: $(PYTHON) if given, else the first of
# python3.11, python3 that is >= 3.11 (empty if none is).
PYTHON ?= $(shell for p in python3.11 python3; do \
	if command -v $$p >/dev/null 2>&1 && \
	   $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then \
	  command -v $$p; break; fi; done)

.PHONY: all venv install bytecode demo test bench bench-quick bench-tracker bench-swarm proto lint fuzz clean

all: install

venv install: $(STAMP)

# Rebuilt only when pyproject.toml changes (or the venv is gone).
$(STAMP): pyproject.toml
	@if [ -z "$(PYTHON)" ]; then \
	  echo "error: mfetch needs Python >= 3.11: neither python3.11 nor python3 on PATH is." >&2; \
	  echo "       Install one, or run: make PYTHON=/path/to/python3.11 install" >&2; \
	  exit 1; fi
	@if [ ! -x $(VPY) ]; then \
	  echo "creating $(VENV) with $(PYTHON) ($$($(PYTHON) -V 2>&1))"; \
	  $(PYTHON) -m venv $(VENV); fi
	@echo "installing mfetch and its test tools into $(VENV) (pip log: $(VENV)/pip.log)"
	@# editable_mode=compat: a plain path in a .pth file, where the default mode's import
	@# hook costs every tracker, agent and mfetch start ~30 ms (pathlib and more, before
	@# mfetch's head start can send anything). Setuptools calls it transitional: if a
	@# later one refuses it, the default mode does.
	@$(VPY) -m pip install --disable-pip-version-check -e '.[test]' \
	    --config-settings editable_mode=compat >$(VENV)/pip.log 2>&1 || \
	  $(VPY) -m pip install --disable-pip-version-check -e '.[test]' >>$(VENV)/pip.log 2>&1 || \
	  { tail -n 40 $(VENV)/pip.log >&2; echo "error: pip install failed (see $(VENV)/pip.log)" >&2; exit 1; }
	@touch $@

# Byte-compiled modules, as a regular pip install leaves them. Without them every
# run of mfetch compiles its modules again (~0.1 s of start-up) wherever Python may
# not write them itself (PYTHONDONTWRITEBYTECODE=1, a read-only checkout).
# Forced (~0.3 s): compileall skips a module whose .pyc has its source's mtime, to the
# second, and a source rewritten within that second (git checkout, git stash) was then
# compiled again by every run, as Python also checks the size.
bytecode: $(STAMP)
	@$(VPY) -m compileall -q -f $(PACKAGES) >/dev/null

demo: bytecode
	$(VPY) scripts/demo.py $(DEMO_ARGS)

test: bytecode
	$(VPY) -m pytest -q

bench: bytecode
	$(VPY) bench/run.py

bench-quick: bytecode
	$(VPY) bench/run.py --quick

bench-tracker: bytecode
	$(VPY) bench/tracker_load.py $(BENCH_ARGS)

bench-swarm: bytecode
	$(VPY) bench/swarm.py $(BENCH_ARGS)

# atheris (coverage-guided) if it installs; else the targets fall back to hypothesis.
FUZZ_SECONDS ?= 120
fuzz: $(STAMP)
	@$(VPY) -c 'import atheris' 2>/dev/null || $(VPY) -m pip install -q atheris || \
	  echo "atheris did not install: fuzzing with hypothesis instead"
	$(VPY) tests/fuzz/fuzz_ranges.py $(FUZZ_SECONDS)
	$(VPY) tests/fuzz/fuzz_announce.py $(FUZZ_SECONDS)

proto: $(STAMP)
	$(VPY) scripts/genproto.py

lint: $(STAMP)
	$(VENV)/bin/ruff check $(PACKAGES)
	$(VENV)/bin/mypy $(PACKAGES)

clean:
	rm -rf $(VENV) demo-run build .pytest_cache .mypy_cache .ruff_cache *.egg-info
	find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
