# paraphrx — every target creates the virtual environment first if it is missing.
# CPU boxes (and CI) get the CPU torch wheel; on a GPU machine use `make env TORCH=torch` (or your CUDA build).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0

DATA_PATHS ?= data/alpaca_gemma-2-2b-it.json
DATASET    ?= data/paraphrx-alpaca
PREP_ARGS  ?=

.PHONY: env prep demo test clean

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

# Stage 1: source JSON -> one Hub-layout dataset folder with a split per bucket range.
prep: env
	$(BIN)/python -m prep --data_paths $(DATA_PATHS) --output_dir $(DATASET) $(PREP_ARGS)

# The offline demo: everything runs on this machine, nothing is downloaded.
demo: prep

test: env
	$(BIN)/python -m pytest -q

clean:
	rm -rf outputs logs $(DATASET)
