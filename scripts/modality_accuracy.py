#!/usr/bin/env python
"""How well each modality is read inside a trained classifier: accuracy with that modality alone, on the test
examples where it is clean (per label too), e.g. "audio alone names the digit of a clean recording 97% of the time".

    python scripts/modality_accuracy.py outputs/demo/model --dataset outputs/demo/data \
        --splits test test_unseen_speaker [--output modality_accuracy.json]

The other modalities are hidden through the presence masks, exactly as a missing modality is at inference; rows are
kept where the dataset's `<modality>_state` column says `clean` (all rows when the dataset has no such column).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import datasets
import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoProcessor

import hf_multimodal  # noqa: F401  (registers the classes)
from hf_multimodal.data_collator import MultimodalDataCollator
from hf_multimodal.processing_multimodal import is_missing


def modality_accuracy(
    model_dir: str, dataset_dir: str, splits: Sequence[str], batch_size: int = 64, max_audio_seconds: float = 2.0
) -> dict:
    """`{split: {modality: {"accuracy", "num_examples", "per_label": {label: accuracy}}}}`."""
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    labels = [model.config.id2label[index] for index in sorted(model.config.id2label)]
    data = datasets.load_from_disk(dataset_dir)
    results = {}
    for split in splits:
        part = data[split]
        results[split] = {}
        for modality in model.config.modalities:
            state_column = f"{modality}_state"
            rows = [
                index for index, value in enumerate(part[modality])
                if not is_missing(value) and (state_column not in part.column_names or part[state_column][index] == "clean")
            ]
            if not rows:
                continue
            collator = MultimodalDataCollator(processor, (modality,), max_audio_seconds=max_audio_seconds)
            subset = part.select(rows)
            predictions = []
            with torch.inference_mode():
                for start in range(0, len(subset), batch_size):
                    batch = collator([subset[i] for i in range(start, min(start + batch_size, len(subset)))])
                    batch.pop("labels")
                    predictions += model(**batch).logits.argmax(-1).tolist()
            truth = np.array(subset["label"])
            predictions = np.array(predictions)
            results[split][modality] = {
                "accuracy": float((predictions == truth).mean()),
                "num_examples": len(rows),
                "per_label": {
                    labels[label]: float((predictions[truth == label] == label).mean())
                    for label in sorted(set(truth.tolist()))
                },
            }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="A trained classifier folder (output of scripts/train.py).")
    parser.add_argument("--dataset", required=True, help="The demo dataset folder it was trained on.")
    parser.add_argument("--splits", nargs="+", default=["test"])
    parser.add_argument("--output", help="Also write the results to this JSON file.")
    args = parser.parse_args()
    results = modality_accuracy(args.model, args.dataset, args.splits)
    for split, by_modality in results.items():
        for modality, scores in by_modality.items():
            per_label = ", ".join(f"{label} {value:.2f}" for label, value in scores["per_label"].items())
            print(f"{split} | {modality} alone, clean inputs: {scores['accuracy']:.3f} ({scores['num_examples']}) | {per_label}")
    if args.output:
        with open(args.output, "w") as file:
            json.dump(results, file, indent=2)


if __name__ == "__main__":
    main()
