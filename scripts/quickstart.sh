#!/usr/bin/env bash
# Set up, then run the whole study offline on the bundled defaults (Wikipedia sample,
# all-MiniLM-L6-v2, 20,000 tokens). Extra arguments go to `tnb run`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec .venv/bin/tnb run "$@"
