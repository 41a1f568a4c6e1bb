#!/usr/bin/env python
"""Per-example modality importance of a trained classifier on a test split, checked against the split's ablation:
the mean importance of each modality (the drop of the predicted label's score when it is left out) beside the
accuracy lost when it is removed from every example (metrics.json), and the cost of asking for importance. For
heads that weigh the modalities (weighted_sum, gated, attention), their mean weight per modality too: the second view.

    python scripts/modality_importance.py outputs/demo/model --dataset outputs/demo/data [--split test]
        [--output modality_importance.json]

The cost is the ratio of CPU time of `model.modality_importance(**batch)` to `model(**batch)` on the same batches of
16, the two alternating batch by batch (preprocessing, which a pipeline call adds to both, is left out, so the share
of a pipeline call is smaller still).
"""

from __future__ import annotations

import argparse
import json
import time

import datasets
import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoProcessor

import hf_multimodal  # noqa: F401  (registers the classes)
from hf_multimodal.data_collator import MultimodalDataCollator


def modality_importance_report(model_dir: str, dataset_dir: str, split: str = "test", batch_size: int = 16) -> dict:
    """`{"modalities": {m: {"mean_importance", "num_examples", "ablation_accuracy_drop", "mean_fusion_weight"}},
    "cost_ratio", ...}` (the mean fusion weight, over the examples that have the modality, is None for heads without
    weights)."""
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    part = datasets.load_from_disk(dataset_dir)[split]
    collator = MultimodalDataCollator(processor, model.config.modalities, max_audio_seconds=2.0)
    importances, weights, plain_seconds, importance_seconds = [], [], 0.0, 0.0
    with torch.inference_mode():
        for start in range(0, len(part), batch_size):
            batch = collator([part[i] for i in range(start, min(start + batch_size, len(part)))])
            batch.pop("labels")
            began = time.process_time()
            model(**batch)
            plain_seconds += time.process_time() - began
            began = time.process_time()
            output = model.modality_importance(**batch)
            importance_seconds += time.process_time() - began
            importances.append(output.importance)
            if output.fusion_weights is not None:
                # the weights of present modalities only (absent ones are 0, not part of the mean)
                present = torch.stack([batch[f"has_{m}"] for m in model.config.modalities], dim=1)
                weights.append(output.fusion_weights.masked_fill(~present, float("nan")))
    importance = torch.cat(importances).numpy()
    weight = torch.cat(weights).numpy() if weights else None
    with open(f"{model_dir}/metrics.json") as file:
        metrics = json.load(file)
    report = {"split": split, "num_examples": len(part), "cost_ratio": importance_seconds / plain_seconds, "modalities": {}}
    for index, modality in enumerate(model.config.modalities):
        values = importance[:, index][~np.isnan(importance[:, index])]
        ablation = metrics.get("ablation", {}).get(f"without_{modality}")
        report["modalities"][modality] = {
            "mean_importance": float(values.mean()) if len(values) else None,
            "num_examples": int(len(values)),
            "ablation_accuracy_drop": metrics["test"]["accuracy"] - ablation["accuracy"] if ablation else None,
            "mean_fusion_weight": None if weight is None else float(np.nanmean(weight[:, index])),
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="A trained classifier folder (output of scripts/train.py, with metrics.json).")
    parser.add_argument("--dataset", required=True, help="The dataset folder it was evaluated on.")
    parser.add_argument("--split", default="test", help="The split its metrics.json ablation was measured on.")
    parser.add_argument("--output", help="Also write the report to this JSON file.")
    args = parser.parse_args()
    report = modality_importance_report(args.model, args.dataset, args.split)
    print("| modality | mean importance (examples) | accuracy drop without it | mean fusion weight |\n|---|---|---|---|")
    for modality, row in report["modalities"].items():
        drop = "-" if row["ablation_accuracy_drop"] is None else f"{row['ablation_accuracy_drop']:.3f}"
        weight = "-" if row["mean_fusion_weight"] is None else f"{row['mean_fusion_weight']:.3f}"
        print(f"| {modality} | {row['mean_importance']:.3f} ({row['num_examples']}) | {drop} | {weight} |")
    rows = [(m, r) for m, r in report["modalities"].items() if r["ablation_accuracy_drop"] is not None]
    if rows:
        by_importance = max(rows, key=lambda item: item[1]["mean_importance"])[0]
        by_ablation = max(rows, key=lambda item: item[1]["ablation_accuracy_drop"])[0]
        print(f"highest mean importance: {by_importance}; largest accuracy drop: {by_ablation}; "
              f"{'they agree' if by_importance == by_ablation else 'they DISAGREE'}")
        if rows[0][1]["mean_fusion_weight"] is not None:
            by_weight = max(rows, key=lambda item: item[1]["mean_fusion_weight"])[0]
            print(f"highest mean fusion weight: {by_weight}; "
                  f"{'agrees' if by_weight == by_ablation else 'DISAGREES'} with the ablation")
    print(f"CPU time of model.modality_importance / model forward, batch 16: {report['cost_ratio']:.3f}")
    if args.output:
        with open(args.output, "w") as file:
            json.dump(report, file, indent=2)


if __name__ == "__main__":
    main()
