# The course's commands. Each target builds .venv itself from a bare python3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo app app-timing test grade lab test-lessons docs serve-docs test-parity bench memory lint format clean

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

## app: the captioning app in your browser (http://localhost:8501)
app: $(STAMP) $(TINY)
	$(BIN)/streamlit run capstone/app.py

## app-timing: seconds per caption once warm, and from process start to the first caption
app-timing: $(STAMP) $(TINY)
	$(BIN)/python -m capstone.tools.app_timing

# The shipped model; rebuilt from scratch (tens of CPU minutes) only when absent.
$(TINY): | $(STAMP)
	$(BIN)/python -m capstone.factory.pretrain

## test: the whole test suite, lessons graded against the reference solutions
## (parity tests skip without the parity extra)
test: $(STAMP)
	$(BIN)/python -m pytest -q --impl solutions

## grade: grade your lessons (all, or one: make grade LESSON=5) and print the scoreboard
grade: $(STAMP)
	$(BIN)/python -m pytest -q tests/lessons $(if $(LESSON),-m lesson$(LESSON))

## lab: open the lessons in JupyterLab
lab: $(STAMP)
	$(BIN)/jupyter lab lessons

## test-lessons: run the nine lessons top to bottom with nbval, the reference solutions swapped in
test-lessons: $(STAMP)
	$(BIN)/python -m tests.execute_lessons --out build/lessons

## docs: build the course website into site/ (lesson outputs from build/lessons/ when present)
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

## serve-docs: serve the website at http://127.0.0.1:8000, rebuilding on every change
serve-docs: $(STAMP)
	$(BIN)/mkdocs serve

## test-parity: install the parity extra (torch CPU, transformers) and run those tests
test-parity: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,parity]"
	$(BIN)/python -m pytest -q -m parity

## bench: training and decoding speed, ours next to transformers' (installs the parity extra)
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,parity]"
	$(BIN)/python -m capstone.tools.bench --vs-transformers

## memory: will the real 3B model fit? Peak memory of one training step, nothing allocated
memory: $(STAMP)
	$(BIN)/python -m capstone.tools.memory --model paligemma-3b-pt-224 --batch-size 8 --seqlen 128 --trainable attn

## lint: ruff check and format check
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache build site *.egg-info
