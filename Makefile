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

.PHONY: help install build-corpus source generate mine verify write train eval status test test-fast bench clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# Every extra (dense, train, plots) and the test tools; constraints.txt pins torch to the CPU
	# wheel the suite is tested with (the package itself does not pin torch).
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[all,dev]'
	touch $@

install: $(VENV)/.installed ## create .venv and install infir with every extra and its test tools

build-corpus: install ## the whole pipeline on data/sample, offline (no key, no network)
	$(INFIR) build --config $(CONFIG) $(RUNFLAG)

source: install ## stage 1: queries, passages, qrels
	$(INFIR) source --config $(CONFIG) $(RUNFLAG)

generate: install ## stage 2: positive instructions
	$(INFIR) generate --config $(CONFIG) $(RUNFLAG)

mine: install ## stage 3: poisoned instructions/queries and hard negatives
	$(INFIR) mine --config $(CONFIG) $(RUNFLAG)

verify: install ## stage 4: the judge
	$(INFIR) verify --config $(CONFIG) $(RUNFLAG)

write: install ## stage 5: the versioned release
	$(INFIR) write --config $(CONFIG) $(RUNFLAG)

train: install ## stage 6: fine-tune MiniLM and evaluate instruction following
	$(INFIR) train --config $(CONFIG) $(RUNFLAG)

status: install ## per-stage progress of the run
	$(INFIR) status runs/$(or $(RUN),sample)

test: install ## the test suite
	$(PY) -m pytest -q

test-fast: install ## the suite without slow tests
	$(PY) -m pytest -q -m "not slow"

bench: install ## benchmarks; rewrites BENCHMARKS.md
	$(PY) bench/run_all.py --out BENCHMARKS.md

clean: ## remove runs and releases (never the LLM cache in .cache/)
	rm -rf runs releases .pytest_cache
