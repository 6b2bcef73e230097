#!/usr/bin/env bash
# The benchmark's own environment (.venv-bench): grpo plus TRL, which is never a grpo dependency. Same torch and
# transformers as .venv, so the two sides of bench/bench_step_vs_trl.py run on the same stack.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-bench}
TORCH=${TORCH:-torch==2.13.0}
if [ ! -f "$VENV/.installed" ]; then
  test -x "$VENV/bin/python" || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -c "import torch" 2>/dev/null || "$VENV/bin/python" -m pip install -q "$TORCH"
  "$VENV/bin/python" -m pip install -q -e . "trl==1.16.0"
  touch "$VENV/.installed"
fi
