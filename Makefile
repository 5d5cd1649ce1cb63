# dogmacache: `make test` and `make demo` are all a fresh machine needs (both run `setup` when .venv is missing).
PYTHON     ?= python3
VENV       ?= .venv
# A GPU box installs its CUDA build instead, e.g. TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"
TORCH_SPEC ?= torch==2.13.0
BIN        := $(VENV)/bin
STAMP      := $(VENV)/.dogmacache-installed
OUT        ?= out

# embed / train arguments (defaults: the demo's outputs, so both run offline after `make demo`)
INPUT      ?= $(OUT)/demo/recipe/cdt/dna_windows.parquet
MODALITY   ?= dna
MODEL      ?= enformer
MODEL_PATH ?= $(OUT)/demo/models/enformer
GENOME     ?= $(OUT)/demo/recipe/genome.fa
CACHE      ?= $(OUT)/cache/$(MODALITY)-$(MODEL).zarr
EMBED_ARGS ?=
CONFIG     ?= $(OUT)/demo/train_cdt.toml
TRAIN_ARGS ?=

# bench-gpu: every accelerator measurement in one command (bench/gpu.py), sized by BENCH_SIZE. full: full-size
# Enformer fp32/bf16 sweep, ESM-2 650M-sized proteins/s, CDT paper preset steps/s with the DNA table on the device and
# the projected 50 epochs, cache -> device loader. tiny: the same code in seconds (on a CPU too), to check it runs.
BENCH_SIZE ?= full

# esmc-reference: ESM-C's native encoder against the `esm` package, which needs Python 3.12 and a venv of its own
# (ESMC_VENV, several GB: PyPI's torch for Linux is a CUDA build). ESMC_PYTHON: a python3.12 that runs, found on the
# PATH or under pyenv unless given.
ESMC_VENV   ?= .venv-esmc-ref
ESMC_PYTHON ?= $(firstword $(foreach p,python3.12 $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12),\
	$(shell $(p) -c 'import sys; print(sys.version_info[:2] == (3, 12))' 2>/dev/null | grep -qx True && echo $(p))))
ESMC_ESM    ?= esm==3.2.3

.PHONY: setup test test-all lint demo embed train bench bench-gpu esmc-reference clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), f"dogmacache needs Python >= 3.11, found {sys.version.split()[0]}; set PYTHON=python3.11"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,explain]"
	touch $@

test: setup
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python -m pytest -q -m ""

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

demo: setup
	$(BIN)/dogmacache demo --out $(OUT)/demo

embed: setup
	$(BIN)/dogmacache embed --input $(INPUT) --modality $(MODALITY) --model $(MODEL) \
		$(if $(MODEL_PATH),--model-path $(MODEL_PATH)) $(if $(GENOME),--genome $(GENOME)) --out $(CACHE) $(EMBED_ARGS)

train: setup
	$(BIN)/dogmacache train --config $(CONFIG) $(TRAIN_ARGS)

bench: setup
	$(BIN)/dogmacache bench --out $(OUT)/bench

bench-gpu: setup
	$(if $(filter $(BENCH_SIZE),full tiny),,$(error BENCH_SIZE=$(BENCH_SIZE) is not full or tiny))
	$(BIN)/dogmacache bench --only gpu --gpu-size $(BENCH_SIZE) --out $(OUT)/bench-gpu

esmc-reference: setup
	@test -n "$(ESMC_PYTHON)" || { echo "esmc-reference needs Python 3.12 (esm 3.2.3 requires >=3.12,<3.13) and found none on the PATH or under ~/.pyenv/versions: install one (e.g. pyenv install 3.12) or set ESMC_PYTHON=/path/to/python3.12"; exit 1; }
	test -x $(ESMC_VENV)/bin/python || $(ESMC_PYTHON) -m venv $(ESMC_VENV)
	$(ESMC_VENV)/bin/python -m pip install --quiet -r bench/esmc_reference_requirements.txt
	$(ESMC_VENV)/bin/python -m pip install --quiet --no-deps $(ESMC_ESM)
	$(ESMC_VENV)/bin/python -P bench/esmc_reference.py build $(OUT)/esmc-reference
	$(BIN)/python -m dogmacache.bench.esmc_reference compare $(OUT)/esmc-reference

clean:
	rm -rf $(OUT)
