# mmfisher: `make demo` (train + test the tiny detector), `make test` (the test suite). Both set up .venv first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export MMFISHER_VENV := $(abspath $(VENV))

.PHONY: setup data demo test clean-work

setup:  ## create/refresh .venv (idempotent; about 1 s when up to date)
	bash scripts/setup_env.sh

data: setup  ## generate the bundled toy data sets into data/generated (seconds, idempotent)
	$(PY) tools/make_data.py

demo: setup  ## the main job (tools/demo.py): data, then train and test the tiny detector on the CPU
	$(PY) tools/demo.py

test: setup  ## the test suite
	$(PY) -m pytest tests -q -p no:cacheprovider --durations=15 $(PYTEST_ARGS)

clean-work:  ## remove training outputs (work_dirs/)
	rm -rf work_dirs
