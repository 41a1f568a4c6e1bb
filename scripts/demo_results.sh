#!/usr/bin/env bash
# The README's results table: the demo (scripts/demo.sh) once per fusion type and once per single modality, on the
# same data, then one Markdown table of test accuracy / macro F1 and the per-modality ablation of each run.
# About an hour on 2 CPU cores. Runs go to outputs/results/<name>; finished runs are reused, interrupted ones resumed.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=()
for fusion in concat weighted_sum gated attention transformer bilstm low_rank_tensor; do
    OUTPUT="outputs/results/$fusion" bash scripts/demo.sh --fusion_type "$fusion"
    runs+=("outputs/results/$fusion")
done
for modality in text image audio; do
    OUTPUT="outputs/results/only_$modality" bash scripts/demo.sh --modalities "$modality"
    runs+=("outputs/results/only_$modality")
done
.venv/bin/python scripts/compare_runs.py "${runs[@]}" \
    | tee outputs/results/table.md
