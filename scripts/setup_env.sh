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
# The demo and the tests read the pretrained speech_embedding network from openwakeword 0.5.1's wheel (its
# embedding_model.onnx, converted by scripts/convert_speech_embedding.py); its runtime dependencies (tflite-runtime
# among them) are not needed for that, so it is installed alone.
if [[ ",${extras}," == *",demo,"* || ",${extras}," == *",test,"* ]]; then
    .venv/bin/python -m pip install --quiet --no-deps "openwakeword==0.5.1"
fi
