# Steerflow: `make run` (the main job) and `make test` (every test), from a clean clone.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test venv web browser lint bench clean

venv: $(STAMP)

# torch first and pinned: a bare torch requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	# only for its bpe vocabulary (scripts/derive_clip_tokenizer.py); its torchvision
	# requirement would replace our torch, hence --no-deps
	$(BIN)/pip install --quiet --no-deps open-clip-torch==3.3.0
	touch $(STAMP)

run: venv
	$(BIN)/steerflow run workflows/txt2img.json

test: venv
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: venv
	$(BIN)/ruff check .

bench: venv
	$(BIN)/python bench/bench_engine.py

clean:
	rm -rf $(VENV) web/node_modules web/dist
