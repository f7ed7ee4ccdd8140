#!/usr/bin/env bash
# Set up with the test extras, lint, then run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
# the report test opens the HTML report in headless Chromium, installed where it can be (root,
# apt-get; setup.sh installs jemalloc, which the allocator tests use, the same way)
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; the test that needs it will be skipped" >&2
fi
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# lint first: a lint error fails CI before the (long) suite starts; tests/test_lint.py checks it too
.venv/bin/ruff check tnb flows tests bench
# types: mypy on tnb/ and flows/ (settings in pyproject.toml)
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
