#!/usr/bin/env python
r"""Export a trained classifier to ONNX, check that ONNX Runtime gives its logits, and time both.

    python scripts/export_onnx.py outputs/results/classify/gated model.onnx \
        [--dataset outputs/demo/data --split test] [--batch_size 16] [--max_audio_seconds 2]

Prints the export time, the largest |logit difference| between torch and ONNX Runtime over the split (or over demo
inputs made up from noise when no dataset is given; every modality missing somewhere), and the CPU time of ONNX
Runtime against torch's at `--batch_size`, both on the same number of threads. Exits with status 1 when the
difference exceeds `--tolerance`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoProcessor

import hf_multimodal  # noqa: F401  (registers the classes)
from hf_multimodal.exporting_onnx import OnnxMultimodalClassifier, export_onnx, max_logit_difference


def demo_batches(processor, modalities: tuple[str, ...], batch_size: int, num_batches: int) -> Iterator[dict]:
    """Processor outputs of noise: texts from a few words, random images, 0.3-1 s of random audio; in each batch every
    modality is missing from some examples (never all of one example's, never from every example)."""
    rng = np.random.default_rng(0)
    words = ["seven", "a shaky three", "maybe a one", "nine", "zero or six"]
    rate = processor.feature_extractor.sampling_rate
    for _ in range(num_batches):
        present = rng.random((batch_size, len(modalities))) >= 0.25
        present[~present.any(axis=1), 0] = True
        present[0, ~present.any(axis=0)] = True
        columns = {
            "text": [str(rng.choice(words)) for _ in range(batch_size)],
            "images": [rng.integers(0, 256, (40, 36, 3), dtype=np.uint8) for _ in range(batch_size)],
            "audio": [
                rng.standard_normal(int(rate * rng.uniform(0.3, 1.0))).astype(np.float32) for _ in range(batch_size)
            ],
        }
        names = {"text": "text", "image": "images", "audio": "audio"}
        arguments = {
            names[m]: [value if present[row, index] else None for row, value in enumerate(columns[names[m]])]
            for index, m in enumerate(modalities)
        }
        if "audio" in modalities:
            arguments["sampling_rate"] = rate
        yield dict(processor(**arguments))


def dataset_batches(processor, modalities, dataset: str, split: str, batch_size: int, max_audio_seconds: float):
    """The split's examples in batches, as the training data collator prepares them (labels dropped)."""
    import datasets

    from hf_multimodal.data_collator import MultimodalDataCollator

    rows = datasets.load_from_disk(dataset)[split]
    collator = MultimodalDataCollator(processor, modalities, max_audio_seconds=max_audio_seconds)
    for start in range(0, len(rows), batch_size):
        batch = collator([rows[index] for index in range(start, min(start + batch_size, len(rows)))])
        batch.pop("labels", None)
        if "unavailable" in batch:
            raise ValueError(f"{split} has examples without any modality the model reads: drop them first.")
        yield batch


def cpu_seconds(function: Callable[[], object], repeats: int) -> float:
    """Median CPU time (all threads of the process) of `function()`, after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        function()
        times.append(time.process_time() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="A trained classifier folder (output of scripts/train.py).")
    parser.add_argument("output", help="The .onnx file to write.")
    parser.add_argument("--dataset", help="A dataset folder (datasets.load_from_disk) to check parity on.")
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch_size", type=int, default=16, help="Batch size of the timing (and of the parity run).")
    parser.add_argument("--max_audio_seconds", type=float, default=2.0, help="Audio cut, as in training.")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="Largest |logit difference| accepted.")
    parser.add_argument("--repeats", type=int, default=5, help="Timed calls per runtime (the median is kept).")
    args = parser.parse_args()

    model = AutoModelForSequenceClassification.from_pretrained(args.model).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    modalities = tuple(model.config.modalities)

    example = next(demo_batches(processor, modalities, batch_size=4, num_batches=1))
    start = time.perf_counter()
    path = export_onnx(model, example, args.output)
    export_seconds = time.perf_counter() - start
    print(f"exported {path} ({path.stat().st_size / 2**20:.1f} MiB) in {export_seconds:.1f} s")

    threads = torch.get_num_threads()
    classifier = OnnxMultimodalClassifier(path, num_threads=threads)
    if args.dataset:
        batches = dataset_batches(
            processor, modalities, args.dataset, args.split, args.batch_size, args.max_audio_seconds
        )
        source = f"{args.dataset} [{args.split}]"
    else:
        batches = demo_batches(processor, modalities, args.batch_size, num_batches=4)
        source = "demo inputs"
    differences, examples, timed = [], 0, None
    for batch in batches:
        differences.append(max_logit_difference(model, classifier, batch))
        examples += len(next(iter(batch.values())))
        if timed is None and len(next(iter(batch.values()))) == args.batch_size:
            timed = batch
    worst = max(differences)
    print(
        f"parity on {source}: max |logit difference| {worst:.2e} over {examples} examples "
        f"(tolerance {args.tolerance:g})"
    )

    with torch.inference_mode():
        torch_seconds = cpu_seconds(lambda: model(**timed), args.repeats)
    onnx_seconds = cpu_seconds(lambda: classifier(timed), args.repeats)
    print(
        f"batch {args.batch_size}, {threads} thread(s): torch {torch_seconds * 1000:.0f} ms CPU, ONNX Runtime "
        f"{onnx_seconds * 1000:.0f} ms CPU; ONNX Runtime / torch CPU time {onnx_seconds / torch_seconds:.2f}"
    )
    if worst > args.tolerance:
        sys.exit(1)


if __name__ == "__main__":
    main()
