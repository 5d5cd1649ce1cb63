# dogmacache: `make test` and `make demo` are all a fresh machine needs (both run `setup` when .venv is missing).
PYTHON     ?= python3
VENV       ?= .venv
# A GPU box installs its CUDA build instead, e.g. TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"
TORCH_SPEC ?= torch==2.13.0
BIN        := $(VENV)/bin
PY         ?= $(BIN)/python
STAMP      := $(VENV)/.dogmacache-installed
OUT        ?= out

# embed / train arguments (defaults: the demo's outputs, so both run offline after `make demo`; MODEL_PATH: the
# demo's tiny model of that name where there is one, else empty (the model's hub weights); GENOME for dna only)
INPUT      ?= $(OUT)/demo/recipe/cdt/dna_windows.parquet
MODALITY   ?= dna
MODEL      ?= enformer
MODEL_PATH ?= $(wildcard $(OUT)/demo/models/$(MODEL))
GENOME     ?= $(OUT)/demo/recipe/genome.fa
CACHE      ?= $(OUT)/cache/$(MODALITY)-$(MODEL).zarr
EMBED_ARGS ?=
CONFIG     ?= $(OUT)/demo/train_cdt.toml
TRAIN_ARGS ?=

# bench-gpu: every accelerator measurement in one command (bench/gpu.py), sized by BENCH_SIZE. full: full-size
# Enformer fp32/bf16 sweep, ESM-2 650M-sized proteins/s (fixed length, and ragged lengths bucketed vs naive), CDT
# paper preset steps/s with the DNA table on the device and the projected 50 epochs, cache -> device loader; TFLOP/s
# and MFU beside every rate. tiny: the same code in seconds (on a CPU too), to check it runs. GPU_PARTS: some of
# them only, comma-separated (enformer, borzoi, esm2, esm2_ragged, cdt, loader, train_stage; default all). Each
# part's result is written to $(OUT)/bench-gpu/gpu.partial.json as it ends, so a run stopped midway keeps them.
BENCH_SIZE ?= full
GPU_PARTS  ?=

# test-gpu: the `gpu`-marked tests (tests/test_gpu_*.py: every adapter on CUDA against the CPU, compiled against
# eager, a killed CUDA embed resumed), JUnit XML in $(OUT)/test-gpu/. gpu-check: what a GPU machine checks, in one
# command: gpu-setup, test-gpu, then bench-gpu (GPU_TESTS=no or GPU_BENCH=no leaves one out), each step's log in
# $(OUT)/gpu-check/.
# gpu-setup installs the project into the environment of GPU_PYTHON, a python whose torch is a CUDA build (kept as
# it is): from PyPI, or offline from the wheels that `make gpu-wheels` downloaded into WHEELS on a machine with
# network (the packages a CUDA image with Python 3.12 lacks, at constraints.txt's versions; polars, which only
# enformer-pytorch's unused data loader imports, at 0.20.31: 2.1's runtime wheel alone is 54 MB).
GPU_PYTHON ?= python3
GPU_BENCH  ?= yes
GPU_TESTS  ?= yes
GPU_ENV     = $(shell $(GPU_PYTHON) -c 'import sys; print(sys.prefix)')
GPU_LOGS   ?= $(OUT)/gpu-check
# make in GPU_PYTHON's environment, taking it as set up (-o: never the CPU `setup`, which would install torch)
# and PY=$(GPU_PYTHON): a system python's prefix (/usr) holds neither `python` nor the scripts pip installs
GPU_MAKE    = $(MAKE) --no-print-directory VENV=$(GPU_ENV) PY=$(GPU_PYTHON) -o $(GPU_ENV)/.dogmacache-installed
WHEELS     ?= .whl
GPU_WHEEL_TAGS := --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
	--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any
GPU_WHEEL_PACKAGES ?= borzoi-pytorch crc32c dask discrete-key-value-bottleneck-pytorch distributed donfig einops \
	einx enformer-pytorch frozendict google-crc32c huggingface_hub lazy-importer liftover locket loguru numcodecs \
	partd platformdirs pyfaidx setuptools tblib tokenizers torch-einops-utils tornado transformers tzdata \
	vector-quantize-pytorch zarr zict

# esmc-reference: ESM-C's native encoder against the `esm` package, which needs Python 3.12 and a venv of its own
# (ESMC_VENV, several GB: PyPI's torch for Linux is a CUDA build). ESMC_PYTHON: a python3.12 that runs, found on the
# PATH or under pyenv unless given.
ESMC_VENV   ?= .venv-esmc-ref
ESMC_PYTHON ?= $(firstword $(foreach p,python3.12 $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12),\
	$(shell $(p) -c 'import sys; print(sys.version_info[:2] == (3, 12))' 2>/dev/null | grep -qx True && echo $(p))))
ESMC_ESM    ?= esm==3.2.3

.PHONY: setup test test-all lint demo embed train bench bench-gpu test-gpu gpu-setup gpu-check gpu-wheels \
	esmc-reference clean

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
		$(if $(MODEL_PATH),--model-path $(MODEL_PATH)) $(if $(filter dna,$(MODALITY)),$(if $(GENOME),--genome $(GENOME))) \
		--out $(CACHE) $(EMBED_ARGS)

train: setup
	$(BIN)/dogmacache train --config $(CONFIG) $(TRAIN_ARGS)

bench: setup
	$(BIN)/dogmacache bench --out $(OUT)/bench

bench-gpu: setup
	$(if $(filter $(BENCH_SIZE),full tiny),,$(error BENCH_SIZE=$(BENCH_SIZE) is not full or tiny))
	$(PY) -m dogmacache.cli bench --only gpu --gpu-size $(BENCH_SIZE) $(if $(GPU_PARTS),--gpu-parts $(GPU_PARTS)) \
		--out $(OUT)/bench-gpu

test-gpu: setup
	mkdir -p $(OUT)/test-gpu
	$(PY) -m pytest -m gpu -v -rs --durations=10 --junitxml=$(OUT)/test-gpu/junit.xml \
		tests/test_gpu_embed.py tests/test_gpu_compile.py

gpu-setup:
	$(GPU_PYTHON) -c 'import torch; assert torch.cuda.is_available(), f"torch {torch.__version__} of $(GPU_PYTHON) sees no CUDA device; set GPU_PYTHON to a python with a CUDA build of torch"'
	$(GPU_PYTHON) -m pip install --quiet --no-compile $(if $(wildcard $(WHEELS)/*.whl),--no-index --find-links $(WHEELS)) \
		"setuptools>=77"
	$(GPU_PYTHON) -m pip install --quiet --no-compile $(if $(wildcard $(WHEELS)/*.whl),--no-index --find-links $(WHEELS)) \
		--no-build-isolation -e .

gpu-check:
	mkdir -p $(GPU_LOGS)
	bash -c 'set -o pipefail; status=0; \
		$(MAKE) --no-print-directory gpu-setup 2>&1 | tee $(GPU_LOGS)/setup.log || exit 1; \
		$(if $(filter yes,$(GPU_TESTS)),$(GPU_MAKE) test-gpu 2>&1 | tee $(GPU_LOGS)/test-gpu.log || status=1;) \
		$(if $(filter yes,$(GPU_BENCH)),$(GPU_MAKE) bench-gpu 2>&1 | tee $(GPU_LOGS)/bench-gpu.log || status=1;) \
		exit $$status'

gpu-wheels:
	rm -rf $(WHEELS)
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: $(GPU_WHEEL_TAGS) -c constraints.txt \
		-d $(WHEELS) $(GPU_WHEEL_PACKAGES)
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: $(GPU_WHEEL_TAGS) -d $(WHEELS) polars==0.20.31
	$(PYTHON) -m pip wheel --quiet --no-deps -c constraints.txt -w $(WHEELS) intervaltree
	du -sh $(WHEELS)

esmc-reference: setup
	@test -n "$(ESMC_PYTHON)" || { echo "esmc-reference needs Python 3.12 (esm 3.2.3 requires >=3.12,<3.13) and found none on the PATH or under ~/.pyenv/versions: install one (e.g. pyenv install 3.12) or set ESMC_PYTHON=/path/to/python3.12"; exit 1; }
	test -x $(ESMC_VENV)/bin/python || $(ESMC_PYTHON) -m venv $(ESMC_VENV)
	$(ESMC_VENV)/bin/python -m pip install --quiet -r bench/esmc_reference_requirements.txt
	$(ESMC_VENV)/bin/python -m pip install --quiet --no-deps $(ESMC_ESM)
	$(ESMC_VENV)/bin/python -P bench/esmc_reference.py build $(OUT)/esmc-reference
	$(BIN)/python -m dogmacache.bench.esmc_reference compare $(OUT)/esmc-reference

clean:
	rm -rf $(OUT)
