# Steerflow: `make run` (the main job) and `make test` (every test), from a clean clone.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
WEB_BUILD := web/dist/index.html
WEB_SOURCES := $(shell find web/src web/index.html web/package.json web/package-lock.json \
                 web/vite.config.ts web/tsconfig.json -type f 2>/dev/null)

.PHONY: run serve test venv web browser lint bench clean

venv: $(STAMP)

# torch first and pinned, so the other requirements keep that build (pip takes the CPU
# wheel from a CPU index when pip is configured with one; on PyPI alone torch is the CUDA build).
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	# only for its bpe vocabulary (scripts/derive_clip_tokenizer.py); its torchvision
	# requirement would replace our torch, hence --no-deps
	$(BIN)/pip install --quiet --no-deps open-clip-torch==3.3.0
	# upscale models (ComfyUI's loader library); it declares torchvision, which only its
	# LaMa and RestoreFormer need and which would replace our torch: --no-deps, and its
	# other requirements (einops, ...) are pinned in pyproject.toml
	$(BIN)/pip install --quiet --no-deps spandrel==0.4.2
	touch $(STAMP)

web: $(WEB_BUILD)

$(WEB_BUILD): $(WEB_SOURCES)
	@command -v npm >/dev/null || { echo "error: npm not found (Node.js >= 20.19 is required)"; exit 1; }
	cd web && npm ci --no-audit --no-fund --loglevel=error && npm run build

# Debian's chromium for the browser tests; never a browser downloaded by a tool.
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "error: install Debian's chromium (sudo apt-get install chromium)"; exit 1; fi; }

# The main job: the server with the canvas on the built-in model (Ctrl+C stops it).
run: venv web
	$(BIN)/steerflow serve --host 127.0.0.1 --port $${PORT:-8188}

# pytest-xdist: one worker per core (at most 4: each holds its own models), a test file
# per worker so module fixtures are built once; the suite takes 15-25 min on 2 cores (machine load).
test: venv web browser
	$(BIN)/ruff check .
	cd web && npm test --silent
	$(BIN)/pytest -q -n auto --maxprocesses 4 --dist loadfile

lint: venv
	$(BIN)/ruff check .

bench: venv web browser
	$(BIN)/python bench/bench_engine.py
	$(BIN)/python bench/bench_controlled.py
	$(BIN)/python bench/bench_server.py
	$(BIN)/python bench/bench_canvas.py

clean:
	rm -rf $(VENV) web/node_modules web/dist
