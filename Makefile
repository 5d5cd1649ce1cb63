# dogmacache: `make test` and `make demo` are all a fresh machine needs (both run `setup` when .venv is missing).
PYTHON     ?= python3
VENV       ?= .venv
# A GPU box installs its CUDA build instead, e.g. TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"
TORCH_SPEC ?= torch==2.13.0
BIN        := $(VENV)/bin
STAMP      := $(VENV)/.dogmacache-installed
OUT        ?= out

# embed / train / bench arguments (override on the command line)
RECIPE     ?= demo
MODEL      ?= enformer
MODALITY   ?= dna
INPUT      ?= $(OUT)/recipe/dna_windows.parquet
CACHE      ?= $(OUT)/cache/$(MODALITY)-$(MODEL).zarr
CONFIG     ?= configs/demo_cdt.toml

.PHONY: setup test test-all lint demo embed train bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), f"dogmacache needs Python >= 3.11, found {sys.version.split()[0]}; set PYTHON=python3.11"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

test: setup
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python -m pytest -q -m ""

lint: setup
	$(BIN)/ruff check .

demo: setup
	$(BIN)/dogmacache demo --out $(OUT)/demo

embed: setup
	$(BIN)/dogmacache embed --input $(INPUT) --modality $(MODALITY) --model $(MODEL) --out $(CACHE)

train: setup
	$(BIN)/dogmacache train --config $(CONFIG)

bench: setup
	$(BIN)/dogmacache bench --out $(OUT)/bench

clean:
	rm -rf $(OUT)
