# paraphrx — every target creates the virtual environment first if it is missing.
# TORCH is installed first and on its own: on this project's CI machines `torch==2.13.0` resolves to the CPU wheel
# kept on disk. Elsewhere, for a CPU build add TORCH_INDEX=https://download.pytorch.org/whl/cpu (plain PyPI gives the
# CUDA build); on a GPU machine use e.g. `make env TORCH='torch>=2.11,<2.14'`. Changing TORCH reinstalls.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
TORCH_INDEX ?=

DATA_PATHS ?= data/alpaca_gemma-2-2b-it.json
DATASET    ?= data/paraphrx-alpaca
PREP_ARGS  ?=

.PHONY: env install prep demo test clean eval eval-tiny

# The stamp holds the TORCH it was built with; a newer pyproject.toml or another TORCH rebuilds.
env:
	@if [ ! -f $(VENV)/.installed ] || [ pyproject.toml -nt $(VENV)/.installed ] \
		|| [ "$$(cat $(VENV)/.installed)" != "$(TORCH) $(TORCH_INDEX)" ]; then $(MAKE) --no-print-directory install; fi

install:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e ".[dev]"
	echo "$(TORCH) $(TORCH_INDEX)" > $(VENV)/.installed

# Stage 1: source JSON -> one Hub-layout dataset folder with a split per bucket range.
prep: env
	$(BIN)/python -m prep --data_paths $(DATA_PATHS) --output_dir $(DATASET) $(PREP_ARGS)

# Prep at users' scale (synthetic 10k prompts x 300 paraphrases, ~1.8 GB, under /tmp) vs the naive way; see benchmarks/RESULTS.md.
.PHONY: bench-prep
BENCH_PREP_ARGS ?=
bench-prep: env
	$(BIN)/python benchmarks/bench_prep.py $(BENCH_PREP_ARGS)

# Stage 2: QLoRA SFT, one run per recipe -> outputs/<run_name>/ (docs/training.md).
# Offline runs use a tiny Gemma-2 built here from the shipped data (no download).
TINY_MODEL        ?= models/tiny-gemma2
BUCKET_RECIPES    := bucket1 bucket1-2 bucket1-3 bucket1-4 bucket1-5
ACCELERATE_CONFIG ?= accelerate_configs/single_gpu.yaml
TRAIN_ARGS        ?=

.PHONY: tiny-model train-tiny train-all
tiny-model: $(TINY_MODEL)/config.json

$(TINY_MODEL)/config.json: | env
	$(BIN)/python -m paraphrx.tiny_gemma --output_dir $(TINY_MODEL)

# Several seeds per recipe: SEEDS="1 2 3" trains each recipe once per seed, as <run>-seed<N> (outputs/<run>-seed<N>/);
# the evaluation report averages runs that differ only in seed. Without SEEDS: one run per recipe, its own seed.
SEEDS ?=
SEED_LOOP = for s in $(or $(SEEDS),""); do
SEED_ARGS = $${s:+--seed $$s --run_name $$name --output_dir outputs/$$name}

# The five tiny recipes on the CPU (a few seconds each); reruns replace the previous tiny runs.
train-tiny: tiny-model prep
	for r in $(BUCKET_RECIPES); do $(SEED_LOOP) name=tiny-$$r$${s:+-seed$$s}; \
		$(BIN)/python train_sft.py recipes/tiny/$$r.yaml --dataset_name $(DATASET) \
			--model_name_or_path $(TINY_MODEL) --overwrite_output_dir true $(SEED_ARGS) $(TRAIN_ARGS) || exit 1; \
	done; done

# The five gemma-2-2b-it runs (x SEEDS), one after another; finished runs are skipped, killed ones resume.
train-all: env
	for r in $(BUCKET_RECIPES); do $(SEED_LOOP) name=$$r$${s:+-seed$$s}; \
		if [ -f outputs/$$name/run_complete.json ]; then echo "outputs/$$name is finished, skipping"; continue; fi; \
		$(BIN)/accelerate launch --config_file $(ACCELERATE_CONFIG) train_sft.py recipes/$$r.yaml \
			--dataset_name $(DATASET) $(SEED_ARGS) $(TRAIN_ARGS) || exit 1; \
	done; done

# The offline demo: everything runs on this machine, nothing is downloaded. Its split holds out 30% of the 12
# shipped Alpaca prompts for testing, seeded so that prompt 10, the only one with bucket-5 rows, is among them:
# the report then has every bucket, a gap and intervals over 4 prompts (the default 80/10/10 holds out one prompt).
DEMO_PREP_ARGS ?= --split 60/10/30 --seed 2
demo:
	$(MAKE) --no-print-directory prep train-tiny eval-tiny PREP_ARGS="$(DEMO_PREP_ARGS) $(PREP_ARGS)"

# Evaluation: the base model and each adapter answer every test paraphrase -> outputs/eval/<name>/report.md.
# Adapters: every outputs/bucket*/ (real runs); the tiny demo's outputs/tiny-bucket*/ with short answers (~1 min).
EVAL_ARGS    ?=
TINY_ADAPTERS = $(sort $(patsubst %/adapter_config.json,%,$(wildcard outputs/tiny-bucket*/adapter_config.json)))

eval: env
	$(BIN)/python evaluate_paraphrx.py --dataset $(DATASET) $(EVAL_ARGS)

eval-tiny: env
	$(BIN)/python evaluate_paraphrx.py --dataset $(DATASET) --adapters $(TINY_ADAPTERS) --output_name tiny \
		--max_new_tokens 16 --max_paraphrases_per_prompt 60 $(EVAL_ARGS)

test: env
	$(BIN)/python -m pytest -q

# ruff, configured in pyproject.toml: lint rules and the formatter (`ruff format .` rewrites in place).
.PHONY: lint
lint: env
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Also the hidden leftovers of a killed prep or tiny-model build (`.<name>.tmp-*`, `.<name>.old-*`), which the next
# run of either removes as well.
LEFTOVERS = $(foreach d,$(DATASET) $(TINY_MODEL),$(dir $(d)).$(notdir $(d)).tmp-* $(dir $(d)).$(notdir $(d)).old-*)

clean:
	rm -rf outputs logs $(DATASET) $(LEFTOVERS)
