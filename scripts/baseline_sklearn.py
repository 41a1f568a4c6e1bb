#!/usr/bin/env python
"""A scikit-learn reference for any demo task: an MLP on raw features of each modality, concatenated.

    python scripts/baseline_sklearn.py --dataset outputs/match/data --modalities image audio \
        --test_splits test test_unseen_speaker

Features per example (zeros plus a "missing" flag for an absent modality): text as hashed character n-grams, the
image as its raw pixels (grey, 32 x 32, scaled to [0, 1]), the audio as the mean and standard deviation over time of
its log-mel spectrogram (40 bands) and of their deltas. The MLP (two hidden layers of 256, early stopping on 10% of
the training split) sees the concatenation: a relation between modalities is not built in, it has to learn one from
the raw features like any classifier would. Prints and returns the accuracy and macro F1 on each test split and the
CPU seconds of feature extraction and fitting.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Sequence

import datasets
import numpy as np
import soundfile
from PIL import Image
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.metrics import accuracy_score, f1_score
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler
from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

from hf_multimodal import MODALITIES


IMAGE_SIDE = 32
NUM_MEL_BINS = 40


def text_features(texts: Sequence[str | None]) -> np.ndarray:
    vectorizer = HashingVectorizer(n_features=512, analyzer="char_wb", ngram_range=(1, 3), alternate_sign=False)
    matrix = vectorizer.transform([text or "" for text in texts]).toarray()
    return np.hstack([matrix, np.array([[text is None] for text in texts], dtype=float)])


def image_features(images: Sequence[dict | None]) -> np.ndarray:
    rows = []
    for image in images:
        if image is None:
            rows.append(np.concatenate([np.zeros(IMAGE_SIDE * IMAGE_SIDE), [1.0]]))
            continue
        picture = Image.open(io.BytesIO(image["bytes"])).convert("L").resize((IMAGE_SIDE, IMAGE_SIDE))
        rows.append(np.concatenate([np.asarray(picture, dtype=float).ravel() / 255.0, [0.0]]))
    return np.array(rows)


def audio_features(clips: Sequence[dict | None]) -> np.ndarray:
    rows, filters = [], {}
    for clip in clips:
        if clip is None:
            rows.append(np.concatenate([np.zeros(4 * NUM_MEL_BINS), [1.0]]))
            continue
        waveform, rate = soundfile.read(io.BytesIO(clip["bytes"]), dtype="float32")
        window = int(0.025 * rate)
        n_fft = 2 ** int(np.ceil(np.log2(window)))
        if rate not in filters:
            filters[rate] = mel_filter_bank(n_fft // 2 + 1, NUM_MEL_BINS, 20.0, rate / 2, rate, norm="slaney")
        log_mel = spectrogram(
            waveform, window_function(window, "hann"), frame_length=window, hop_length=int(0.01 * rate),
            fft_length=n_fft, power=2.0, mel_filters=filters[rate], log_mel="log", mel_floor=1e-6,
        )  # (mel bands, frames)
        deltas = np.diff(log_mel, axis=1) if log_mel.shape[1] > 1 else np.zeros_like(log_mel)
        rows.append(np.concatenate([log_mel.mean(1), log_mel.std(1), deltas.mean(1), deltas.std(1), [0.0]]))
    return np.array(rows)


EXTRACTORS = {"text": text_features, "image": image_features, "audio": audio_features}


def features(split: datasets.Dataset, modalities: Sequence[str]) -> np.ndarray:
    return np.hstack([EXTRACTORS[m](split[m]) for m in modalities])


def fit_and_score(dataset: str, modalities: Sequence[str], test_splits: Sequence[str], seed: int = 0) -> dict:
    """Fit the MLP on `train` and score every split of `test_splits`; returns metrics and CPU seconds."""
    data = datasets.load_from_disk(dataset)
    started = time.process_time()
    train = features(data["train"], modalities)
    scaler = StandardScaler().fit(train)
    model = MLPClassifier(
        hidden_layer_sizes=(256, 256), early_stopping=True, validation_fraction=0.1, max_iter=300, random_state=seed
    ).fit(scaler.transform(train), data["train"]["label"])
    results = {"modalities": list(modalities), "fit_cpu_seconds": round(time.process_time() - started, 1)}
    for name in test_splits:
        predictions = model.predict(scaler.transform(features(data[name], modalities)))
        labels = data[name]["label"]
        results[name] = {
            "accuracy": float(accuracy_score(labels, predictions)),
            "f1": float(f1_score(labels, predictions, average="macro")),
            "num_examples": len(labels),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="A demo dataset folder (save_to_disk).")
    parser.add_argument("--modalities", nargs="+", default=list(MODALITIES), choices=MODALITIES)
    parser.add_argument("--test_splits", nargs="+", default=["test"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="Also write the results to this JSON file.")
    args = parser.parse_args()
    results = fit_and_score(args.dataset, args.modalities, args.test_splits, args.seed)
    print(json.dumps(results, indent=2))
    if args.output:
        with open(args.output, "w") as file:
            json.dump(results, file, indent=2)


if __name__ == "__main__":
    main()
