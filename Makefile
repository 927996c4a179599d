# Two entry points: `make demo` (set up + run the whole DVC pipeline on the embedded benchmark, CPU)
# and `make test` (set up + run the test suite). Both create .venv once and reuse it afterwards.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.alignzeg-installed
export HF_HUB_OFFLINE := 1
export DVC_NO_ANALYTICS := 1
export MPLBACKEND := Agg

.PHONY: demo test install clean-venv

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml experiments/tools/build_mmcv.sh
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade "pip>=23.2"
	$(VPY) -m pip install -q -r requirements.txt
	bash experiments/tools/build_mmcv.sh $(VPY)
	$(VPY) -m pip install -q --no-deps --no-build-isolation -e .
	$(VPY) -c "import mmseg.models, open_clip, alignzeg; print('environment OK')"
	@touch $(STAMP)

# Stages call `alignzeg` and `python`: run them from the venv.
demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/dvc repro

test: $(STAMP)
	$(VPY) -m pytest -q tests

clean-venv:
	rm -rf $(VENV)
