# The course's commands. Each target builds .venv itself from a bare python3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-parity bench memory lint format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

## setup: create .venv with the course and its dev tools
setup: $(STAMP)

TINY := capstone/assets/tiny/params.npz

## demo: fine-tune the tiny PaliGemma on long captions and show before/after
demo: $(STAMP) $(TINY)
	$(BIN)/python -m capstone.finetune --out runs/demo

# The shipped model; rebuilt from scratch (tens of CPU minutes) only when absent.
$(TINY): | $(STAMP)
	$(BIN)/python -m capstone.pretrain

## test: the whole test suite (parity tests skip without the parity extra)
test: $(STAMP)
	$(BIN)/python -m pytest -q

## test-parity: install the parity extra (torch CPU, transformers) and run those tests
test-parity: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,parity]"
	$(BIN)/python -m pytest -q -m parity

## bench: training and decoding speed, ours next to transformers' (installs the parity extra)
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,parity]"
	$(BIN)/python -m capstone.bench --vs-transformers

## memory: will the real 3B model fit? Peak memory of one training step, nothing allocated
memory: $(STAMP)
	$(BIN)/python -m capstone.memory --model paligemma-3b-pt-224 --batch-size 8 --seqlen 128 --trainable attn

## lint: ruff check and format check
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
