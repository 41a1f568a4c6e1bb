#!/usr/bin/env bash
# Set up .venv with the test dependencies, then run the whole test suite (offline, CPU, a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh test
HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q "$@"
