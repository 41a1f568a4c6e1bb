#!/usr/bin/env python
"""Benchmark hf_multimodal (ratios measured side by side in one run): table, benchmark.json, benchmark.png.

    python scripts/benchmark.py                       # default model, CPU, a few minutes on 2 cores
    python scripts/benchmark.py --size tiny           # seconds: a smoke run
    python scripts/benchmark.py --device cuda --bf16 --compile --output-dir gpu_results
    python scripts/benchmark.py --only audio preprocessing

The logic lives in hf_multimodal.benchmarking.
"""

import sys

from hf_multimodal.benchmarking import main

if __name__ == "__main__":
    sys.exit(main())
