#!/usr/bin/env python
"""How well each modality is read inside a trained classifier: accuracy with that modality alone, on the test
examples where it is clean (per label too), e.g. "audio alone names the digit of a clean recording 97% of the time",
beside the accuracy with every modality the run used, on every example of the split that has one ("all").

    python scripts/modality_accuracy.py outputs/demo/model [more models ...] --dataset outputs/demo/data \
        --splits test test_unseen_speaker [--inference_frequency_warps 0.9 1 1.1] \
        [--output modality_accuracy.json]

The other modalities are hidden through the presence masks, exactly as a missing modality is at inference; rows are
kept where the dataset's `<modality>_state` column says `clean` (all rows when the dataset has no such column). The
modalities of "all" are the run's (`metrics.json` in the model folder: a model aligned on three modalities may have
been trained to classify from two), else the model's. `--inference_frequency_warps` switches the WaveNet audio
encoder's test-time ensemble on for this evaluation (`WaveNetConfig.inference_frequency_warps`). Several model folders
(classifiers of the same labels, e.g. trained with other seeds) are read as one ensemble: each through its own
processor, their class probabilities averaged; "all" reads the first run's modalities.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoProcessor, PreTrainedModel, ProcessorMixin

from hf_multimodal import WaveNetConfig
from hf_multimodal.data_collator import MultimodalDataCollator
from hf_multimodal.processing_multimodal import is_missing


def modality_accuracy(
    model_dirs: str | Sequence[str],
    dataset_dir: str,
    splits: Sequence[str],
    batch_size: int = 64,
    max_audio_seconds: float = 2.0,
    inference_frequency_warps: Sequence[float] | None = None,
) -> dict:
    """`{split: {"all" or modality: {"accuracy", "num_examples", "per_label": {label: accuracy}}}}`; several
    `model_dirs` are scored as an ensemble (mean class probabilities)."""
    model_dirs = [model_dirs] if isinstance(model_dirs, str) else list(model_dirs)
    members = [_load(model_dir, inference_frequency_warps) for model_dir in model_dirs]
    config = members[0][0].config
    for (model, _), model_dir in zip(members[1:], model_dirs[1:]):
        if model.config.id2label != config.id2label or model.config.modalities != config.modalities:
            raise ValueError(
                f"{model_dir} does not classify like {model_dirs[0]} (labels {model.config.id2label} on "
                f"{model.config.modalities} against {config.id2label} on {config.modalities}): an ensemble averages "
                "the probabilities of the same labels read from the same modalities; pass models of one task."
            )
    labels = [config.id2label[index] for index in sorted(config.id2label)]
    run = Path(model_dirs[0], "metrics.json")
    used = json.loads(run.read_text())["modalities"] if run.is_file() else list(config.modalities)
    data = datasets.load_from_disk(dataset_dir)
    results = {}
    for split in splits:
        part = data[split]
        columns = [part[modality] for modality in used]  # the used columns only, not every column of every row
        present = [index for index in range(len(part)) if any(not is_missing(values[index]) for values in columns)]
        results[split] = {
            "all": _accuracy(members, part.select(present), tuple(used), labels, batch_size, max_audio_seconds)
        }
        for modality in config.modalities:
            state_column = f"{modality}_state"
            rows = [
                index for index, value in enumerate(part[modality])
                if not is_missing(value) and (state_column not in part.column_names or part[state_column][index] == "clean")
            ]
            if rows:
                subset = part.select(rows)
                results[split][modality] = _accuracy(
                    members, subset, (modality,), labels, batch_size, max_audio_seconds
                )
    return results


def _load(model_dir: str, inference_frequency_warps: Sequence[float] | None) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A trained classifier in eval mode (its audio read at the given warps, if any) and its processor."""
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    if inference_frequency_warps is not None:
        switch_on_frequency_warps(model, inference_frequency_warps)
    return model, AutoProcessor.from_pretrained(model_dir)


def switch_on_frequency_warps(model: PreTrainedModel, warps: Sequence[float]) -> None:
    """Set the WaveNet audio encoder's `inference_frequency_warps` of a loaded model (validated as the config does)."""
    audio_config = model.config.audio_config
    if not isinstance(audio_config, WaveNetConfig):
        kind = type(audio_config).__name__ if audio_config is not None else "no audio encoder"
        raise ValueError(f"--inference_frequency_warps needs a WaveNet audio encoder; this model has {kind}.")
    checked = WaveNetConfig(**{**audio_config.to_dict(), "inference_frequency_warps": list(warps)})
    audio_config.inference_frequency_warps = checked.inference_frequency_warps


def _probabilities(model, processor, part, modalities, batch_size, max_audio_seconds) -> torch.Tensor:
    """Class probabilities `(len(part), num_labels)` of `model` on `part` reading `modalities` only."""
    collator = MultimodalDataCollator(processor, modalities, max_audio_seconds=max_audio_seconds)
    batches = []
    with torch.inference_mode():
        for start in range(0, len(part), batch_size):
            batch = collator([part[i] for i in range(start, min(start + batch_size, len(part)))])
            batch.pop("labels")
            batches.append(model(**batch).logits.float().softmax(-1))
    return torch.cat(batches)


def _accuracy(members, part, modalities, labels, batch_size, max_audio_seconds) -> dict:
    """Accuracy (overall and per label) of the mean class probabilities of `members` on `part` reading `modalities`."""
    total = sum(
        _probabilities(model, processor, part, modalities, batch_size, max_audio_seconds)
        for model, processor in members
    )
    truth, predictions = np.array(part["label"]), total.argmax(-1).numpy()
    return {
        "accuracy": float((predictions == truth).mean()),
        "num_examples": len(part),
        "per_label": {
            labels[label]: float((predictions[truth == label] == label).mean()) for label in sorted(set(truth.tolist()))
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "models", nargs="+",
        help="A trained classifier folder (output of scripts/train.py); several are scored as one ensemble.",
    )
    parser.add_argument("--dataset", required=True, help="The demo dataset folder it was trained on.")
    parser.add_argument("--splits", nargs="+", default=["test"])
    parser.add_argument(
        "--inference_frequency_warps", nargs="+", type=float,
        help="Read each recording at these frequency warps and average (the audio encoder's test-time ensemble).",
    )
    parser.add_argument("--output", help="Also write the results to this JSON file.")
    args = parser.parse_args()
    results = modality_accuracy(
        args.models, args.dataset, args.splits, inference_frequency_warps=args.inference_frequency_warps
    )
    for split, by_modality in results.items():
        for modality, scores in by_modality.items():
            per_label = ", ".join(f"{label} {value:.2f}" for label, value in scores["per_label"].items())
            what = "the run's modalities, every row" if modality == "all" else f"{modality} alone, clean inputs"
            print(f"{split} | {what}: {scores['accuracy']:.3f} ({scores['num_examples']}) | {per_label}")
    if args.output:
        with open(args.output, "w") as file:
            json.dump(results, file, indent=2)


if __name__ == "__main__":
    main()
