#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install the package with the given extras.
# Usage: source-free; `bash scripts/setup_env.sh test` or `bash scripts/setup_env.sh demo,test`.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# The CPU build of torch 2.13.0 is the one wheel of torch on this machine's disk; any other pulls a CUDA build.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[${extras}]"
