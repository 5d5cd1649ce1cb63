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

# bench-gpu: the sections with CUDA parts, sized by BENCH_SIZE. full: the full-size Enformer's batch sweep, bf16
# deviation and runner path; the CDT at the paper preset, both implementations, with bf16 steps. tiny: the same
# commands in seconds (on a CPU the CUDA parts are skipped), to check that they run.
BENCH_SIZE ?= full
BENCH_GPU_EMBED_full :=
BENCH_GPU_CDT_full   := --cdt-preset paper --allow-paper-reference
BENCH_GPU_EMBED_tiny := --embed-items 4 --embed-workers 0 --gpu-batches 1,2 --gpu-windows 8
BENCH_GPU_CDT_tiny   := --cdt-preset tiny --cdt-batch 2 --cdt-steps 1

.PHONY: setup test test-all lint demo embed train bench bench-gpu clean

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
	$(BIN)/dogmacache embed --input $(INPUT) --modality $(MODALITY) --model $(MODEL) \
		$(if $(MODEL_PATH),--model-path $(MODEL_PATH)) $(if $(GENOME),--genome $(GENOME)) --out $(CACHE) $(EMBED_ARGS)

train: setup
	$(BIN)/dogmacache train --config $(CONFIG) $(TRAIN_ARGS)

bench: setup
	$(BIN)/dogmacache bench --out $(OUT)/bench

bench-gpu: setup
	$(if $(BENCH_GPU_CDT_$(BENCH_SIZE)),,$(error BENCH_SIZE=$(BENCH_SIZE) is not full or tiny))
	$(BIN)/dogmacache bench --only embed --out $(OUT)/bench-gpu $(BENCH_GPU_EMBED_$(BENCH_SIZE))
	$(BIN)/dogmacache bench --only cdt --out $(OUT)/bench-gpu $(BENCH_GPU_CDT_$(BENCH_SIZE))

clean:
	rm -rf $(OUT)
