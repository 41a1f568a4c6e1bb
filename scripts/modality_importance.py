#!/usr/bin/env python
"""Per-example modality importance of a trained classifier on a test split, checked against the split's ablation:
the mean importance of each modality (the drop of the predicted label's score when it is left out) beside the
accuracy lost when it is removed from every example (metrics.json), and the cost of asking for importance. For
heads that weigh the modalities (weighted_sum, gated, attention), their mean weight per modality too: the second view.
A bootstrap over the examples says how often the two rankings put the same modality first.

    python scripts/modality_importance.py outputs/demo/model --dataset outputs/demo/data [--split test]
        [--output modality_importance.json]

The cost, twice: the ratio of CPU time of `model.modality_importance(**batch)` to `model(**batch)` on the same batches
of 16, the two alternating batch by batch (preprocessing left out), and of a pipeline call on the raw examples with
`return_modality_importance=True` to the same call without it (`pipeline_cost_ratio`: what a user pays).
"""

from __future__ import annotations

import argparse
import json
import time

import datasets
import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoProcessor, PreTrainedModel, ProcessorMixin, pipeline

import hf_multimodal  # noqa: F401  (registers the classes)
from hf_multimodal.data_collator import MultimodalDataCollator


def modality_importance_report(model_dir: str, dataset_dir: str, split: str = "test", batch_size: int = 16) -> dict:
    """`{"modalities": {m: {"mean_importance", "num_examples", "ablation_accuracy_drop", "mean_fusion_weight"}},
    "cost_ratio", ...}` (the mean fusion weight, over the examples that have the modality, is None for heads without
    weights)."""
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    part = datasets.load_from_disk(dataset_dir)[split]
    modalities = model.config.modalities
    collator = MultimodalDataCollator(processor, modalities, max_audio_seconds=2.0)
    importances, weights, plain_seconds, importance_seconds = [], [], 0.0, 0.0
    drops = []  # per example and modality: 1 if it is right with every modality and wrong without that one, -1 if
    # the reverse, else 0 (their mean is the ablation's accuracy drop)
    with torch.inference_mode():
        for start in range(0, len(part), batch_size):
            batch = collator([part[i] for i in range(start, min(start + batch_size, len(part)))])
            labels = batch.pop("labels")
            variants = {name: logits.argmax(-1) == labels for name, logits in model.ablation_logits(**batch).items()}
            drops.append(torch.stack([variants["all"].int() - variants[f"without_{m}"].int() for m in modalities], 1))
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
    report = {
        "split": split,
        "num_examples": len(part),
        "cost_ratio": importance_seconds / plain_seconds,
        "pipeline_cost_ratio": pipeline_cost_ratio(model, processor, part, batch_size),
        "bootstrap": bootstrap_first_modality(importance, torch.cat(drops).numpy(), modalities),
        "modalities": {},
    }
    for index, modality in enumerate(modalities):
        values = importance[:, index][~np.isnan(importance[:, index])]
        ablation = metrics.get("ablation", {}).get(f"without_{modality}")
        report["modalities"][modality] = {
            "mean_importance": float(values.mean()) if len(values) else None,
            "num_examples": int(len(values)),
            "ablation_accuracy_drop": metrics["test"]["accuracy"] - ablation["accuracy"] if ablation else None,
            "mean_fusion_weight": None if weight is None else float(np.nanmean(weight[:, index])),
        }
    return report


def bootstrap_first_modality(
    importance: np.ndarray, drops: np.ndarray, modalities: tuple[str, ...], resamples: int = 2000, seed: int = 0
) -> dict:
    """How stable "the modality with the highest mean importance" and "the one whose removal costs the most accuracy"
    are over `resamples` bootstrap resamples of the examples: `{"agreement"}` (the share of resamples where the two
    are the same), `{"first_by_importance"}` and `{"first_by_ablation"}` (each modality's share of resamples in
    first place). `importance` and `drops` are `(examples, modalities)`; NaN importance (an absent modality) is left
    out of its mean, as in the report.

    Example:

    ```python
    >>> importance = np.array([[0.5, 0.1], [0.4, np.nan], [0.6, 0.2]])
    >>> bootstrap_first_modality(importance, np.array([[1, 0], [1, 0], [0, 0]]), ("text", "audio"), resamples=10)
    {'agreement': 1.0, 'first_by_importance': {'text': 1.0, 'audio': 0.0}, 'first_by_ablation': {'text': 1.0, 'audio': 0.0}}
    ```
    """
    rng = np.random.default_rng(seed)
    first = {"importance": np.zeros(len(modalities)), "ablation": np.zeros(len(modalities))}
    agreeing = 0
    for _ in range(resamples):
        rows = rng.integers(0, len(importance), len(importance))
        by_importance, by_ablation = np.nanmean(importance[rows], 0).argmax(), drops[rows].mean(0).argmax()
        first["importance"][by_importance] += 1
        first["ablation"][by_ablation] += 1
        agreeing += int(by_importance == by_ablation)
    shares = {key: dict(zip(modalities, (counts / resamples).tolist())) for key, counts in first.items()}
    return {
        "agreement": agreeing / resamples,
        "first_by_importance": shares["importance"],
        "first_by_ablation": shares["ablation"],
    }


def pipeline_cost_ratio(
    model: PreTrainedModel, processor: ProcessorMixin, part: datasets.Dataset, batch_size: int = 16,
    num_batches: int = 10,
) -> float:
    """CPU time of `pipeline("multimodal-classification")` calls (on `model` and `processor`) on the split's raw
    examples (encoded image and audio files, as a user passes them) with `return_modality_importance=True`, over the
    same calls without it: the first `num_batches` batches of `batch_size`, one call each, the two alternating batch
    by batch after a warm-up call."""
    classifier = pipeline("multimodal-classification", model=model, processor=processor)
    modalities = model.config.modalities
    examples = [
        {m: row[m]["bytes"] if isinstance(row[m], dict) else row[m] for m in modalities if row[m] is not None}
        for row in part.select(range(min(len(part), batch_size * num_batches)))
    ]
    batches = [examples[start : start + batch_size] for start in range(0, len(examples), batch_size)]
    seconds = {False: 0.0, True: 0.0}
    classifier(batches[0], batch_size=batch_size, return_modality_importance=True)  # warm-up
    for batch in batches:
        for importance in (False, True):
            began = time.process_time()
            classifier(batch, batch_size=batch_size, top_k=1, return_modality_importance=importance)
            seconds[importance] += time.process_time() - began
    return seconds[True] / seconds[False]


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
    bootstrap = report["bootstrap"]
    print(f"bootstrap (2,000 resamples of the examples): the same modality first in {bootstrap['agreement']:.1%}; "
          f"first by importance {bootstrap['first_by_importance']}, by the ablation {bootstrap['first_by_ablation']}")
    print(f"CPU time of model.modality_importance / model forward, batch 16: {report['cost_ratio']:.3f}")
    print(f"CPU time of a pipeline call with / without return_modality_importance, batch 16: "
          f"{report['pipeline_cost_ratio']:.3f}")
    if args.output:
        with open(args.output, "w") as file:
            json.dump(report, file, indent=2)


if __name__ == "__main__":
    main()
