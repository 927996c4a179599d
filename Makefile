# Two entry points: `make demo` (set up + run the whole DVC pipeline on the embedded benchmark, CPU)
# and `make test` (set up + run the test suite). Both create .venv once and reuse it afterwards; they
# install it again whenever the lock (requirements.txt), pyproject.toml or the mmcv build script change.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.alignzeg-installed
# requirements.in: the direct pins; requirements.txt: the hashed lock of the whole environment made
# from it by `make lock` (pip-tools, in a throwaway venv of its own, never in .venv).
LOCK := requirements.txt
LOCK_INPUT := requirements.in
PIP_TOOLS := pip-tools==7.6.2
LOCKTOOL ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/alignzeg/locktool
# The lock holds wheels for CPython 3.11 on Linux x86_64 (torch's nvidia-* wheels among them).
CHECK_PYTHON := import sys, sysconfig; v = "%d.%d" % sys.version_info[:2]; p = sysconfig.get_platform(); \
  (v, p) == ("3.11", "linux-x86_64") or sys.exit(f"$(LOCK) is resolved for CPython 3.11 on linux-x86_64, not {v} on {p}: \
  remove $(VENV) and run again with PYTHON=/path/to/python3.11 (or regenerate the lock on this Python with make lock)")
export HF_HUB_OFFLINE := 1
export DVC_NO_ANALYTICS := 1
export MPLBACKEND := Agg

.PHONY: demo test install lock clean-venv

install: $(STAMP)

# The lock pins everything pip installs, each file by its sha256 (--require-hashes). mmcv is not on it:
# build_mmcv.sh builds it from its sha256-checked source archive against the locked torch and reinstalls
# it whenever the installed one is not the wheel built for that torch (so a new torch pin rebuilds it).
$(STAMP): $(LOCK) pyproject.toml experiments/tools/build_mmcv.sh
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	@$(VPY) -c '$(CHECK_PYTHON)'
	$(VPY) -m pip install -q --require-hashes -r $(LOCK)
	bash experiments/tools/build_mmcv.sh $(VPY)
	$(VPY) -m pip install -q --no-deps --no-build-isolation -e .
	$(VPY) -m pip check
	$(VPY) -c "import mmseg.models, open_clip, alignzeg; print('environment OK')"
	@touch $(STAMP)

# Re-resolve the lock after editing requirements.in. Pins already in the lock are kept unless the input
# forces a change; `make lock LOCK_ARGS=--upgrade` refreshes every transitive pin.
lock:
	@test -x $(LOCKTOOL)/bin/pip-compile || { $(PYTHON) -m venv $(LOCKTOOL) && $(LOCKTOOL)/bin/pip install -q "$(PIP_TOOLS)"; }
	CUSTOM_COMPILE_COMMAND="make lock" $(LOCKTOOL)/bin/pip-compile -q --generate-hashes --allow-unsafe --strip-extras \
	  --no-emit-index-url --no-emit-find-links $(LOCK_ARGS) -o $(LOCK) $(LOCK_INPUT)

# Stages call `alignzeg` and `python`: run them from the venv. DEMO_JOBS stages run at once
# (experiments/repro.py: one `dvc repro` per stage, each after its upstream stages); DEMO_JOBS=1 runs them one by one.
DEMO_JOBS ?= 2
demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VPY) -m experiments.repro --jobs $(DEMO_JOBS)

test: $(STAMP)
	$(VPY) -m pytest -q tests

clean-venv:
	rm -rf $(VENV)
