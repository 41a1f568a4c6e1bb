#!/usr/bin/env bash
# Set up .venv with the test dependencies, then run the whole test suite (offline, CPU, a few minutes): two pytest
# workers (one per core of the CI machine, one torch thread each), each test file on one worker so that a file's
# shared fixtures (a tiny training run, the local Hub) are built once, the longest files first (tests/conftest.py:
# START_FIRST). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh test
HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q --numprocesses "${PYTEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
