#!/usr/bin/env bash
# Create .venv and install tnb into it (idempotent). Usage: scripts/setup.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# torch first, pinned: on the project machine pip takes the local CPU wheel, never a CUDA build
.venv/bin/pip install -q "torch==2.13.0"
if [ "${1:-}" = "--test" ]; then
  .venv/bin/pip install -q -e ".[test]"
else
  .venv/bin/pip install -q -e .
fi
