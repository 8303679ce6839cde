# infir: one target per stage. `make build-corpus` and `make test` do all set-up themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INFIR := $(VENV)/bin/infir
CONFIG ?= configs/sample.toml
RUN ?=
RUNFLAG := $(if $(RUN),--run $(RUN),)
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

# One target per stage, read from the pipeline declaration (pipeline/declaration.py: the lines
# `    <stage>.STAGE,`), so a new stage is a new target with no edit here.
STAGES := $(shell sed -n 's/^ *\([a-z_]*\)\.STAGE,$$/\1/p' pipeline/declaration.py)

.PHONY: help install build-corpus $(STAGES) eval status test test-fast bench clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'
	@for s in $(STAGES); do printf "  %-14s stage: infir %s\n" $$s $$s; done

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# Every extra (dense, train, plots) and the test tools; constraints.txt pins torch to the CPU
	# wheel the suite is tested with (the package itself does not pin torch).
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[all,ray,dev]'
	touch $@

install: $(VENV)/.installed ## create .venv and install infir with every extra and its test tools

build-corpus: install ## the whole pipeline on data/sample, offline (no key, no network)
	$(INFIR) build --config $(CONFIG) $(RUNFLAG)

$(STAGES): install
	$(INFIR) $@ --config $(CONFIG) $(RUNFLAG)

status: install ## per-stage progress of the run
	$(INFIR) status runs/$(or $(RUN),sample)

test: install ## the test suite
	$(PY) -m pytest -q --durations=25

test-fast: install ## the suite without slow tests
	$(PY) -m pytest -q -m "not slow"

bench: install ## benchmarks; rewrites BENCHMARKS.md
	$(PY) bench/run_all.py --out BENCHMARKS.md

clean: ## remove runs and releases (never the LLM cache in .cache/)
	rm -rf runs releases .pytest_cache
