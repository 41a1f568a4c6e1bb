"""The demo dataset builder: determinism, schema, how each modality is corrupted, and source-disjoint splits."""

from __future__ import annotations

import io
import re
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile
from PIL import Image

from make_demo_dataset import (
    DIGIT_WORDS,
    HELD_OUT_SPEAKER,
    INFORMATIVE_STATES,
    NEUTRAL_NOTES,
    SPLITS,
    STATE_PROBABILITIES,
    UNINFORMATIVE_TEXTS,
    build_demo_dataset,
    build_match_dataset,
    build_pairs_dataset,
    load_handwritten_digits,
    load_spoken_digits,
    save_demo_dataset,
)


AUDIO_DIR = Path(__file__).resolve().parents[1] / "scripts" / "demo_assets" / "fsdd"
SIZES = {"num_train": 60, "num_validation": 20, "num_test": 30}


@pytest.fixture(scope="module")
def demo() -> datasets.DatasetDict:
    return build_demo_dataset(AUDIO_DIR, **SIZES)


def _rows(dataset: datasets.DatasetDict) -> dict:
    return {split: part.to_dict() for split, part in dataset.items()}


SPEAKERS = {"george", "jackson", "lucas", "nicolas", "yweweler"}


@pytest.mark.parametrize("held_out", [HELD_OUT_SPEAKER, "nicolas"])
def test_vendored_recordings_cover_every_digit_and_split(held_out):
    pools = load_spoken_digits(AUDIO_DIR, held_out_speaker=held_out)
    assert list(pools) == list(SPLITS)
    for split, by_digit in pools.items():
        assert sorted(by_digit) == list(range(10))
        assert all(len(clips) >= 8 for clips in by_digit.values()), split  # 4 speakers x at least 2, or 1 x 16
        speakers = {speaker for clips in by_digit.values() for speaker, _ in clips}
        if split == "test_unseen_speaker":
            assert speakers == {held_out}
        else:
            assert speakers == SPEAKERS - {held_out}
    assert sum(path.stat().st_size for path in AUDIO_DIR.glob("*.flac")) < 6.5 * 2**20  # small enough to vendor
    assert "CC BY-SA 4.0" in (AUDIO_DIR / "README.md").read_text()


def test_builder_is_deterministic(demo):
    again = build_demo_dataset(AUDIO_DIR, **SIZES)
    assert _rows(again) == _rows(demo)  # every text, PNG and WAV byte
    other_seed = build_demo_dataset(AUDIO_DIR, **SIZES, seed=1)
    assert _rows(other_seed)["train"]["text"] != _rows(demo)["train"]["text"]


def test_schema_sizes_and_balanced_labels(demo):
    assert list(demo) == ["train", "validation", "test", "test_unseen_speaker"]
    assert {split: len(part) for split, part in demo.items()} == {
        "train": 60, "validation": 20, "test": 30, "test_unseen_speaker": 30
    }
    features = demo["train"].features
    assert features["text"] == datasets.Value("string")
    assert isinstance(features["image"], datasets.Image) and not features["image"].decode
    assert isinstance(features["audio"], datasets.Audio) and not features["audio"].decode
    assert features["label"].names == list(DIGIT_WORDS)
    assert set(Counter(demo["train"]["label"]).values()) == {6}  # 60 examples, 10 digits
    assert "CC BY-SA 4.0" in demo["train"].info.license


def test_each_modality_is_corrupted_or_missing_as_its_state_says(demo):
    rows = [row for part in demo.values() for row in part]
    for row in rows:
        label = row["label"]
        states = {m: row[f"{m}_state"] for m in ("text", "image", "audio")}
        assert sum(state == "missing" for state in states.values()) <= 1
        assert any(state in INFORMATIVE_STATES for state in states.values())
        for modality in ("text", "image", "audio"):
            assert (row[modality] is None) == (states[modality] == "missing")
        mentioned = _digits_in(row["text"] or "")
        if states["text"] == "clean":
            assert mentioned == {label}
        elif states["text"] == "ambiguous":
            assert label in mentioned and len(mentioned) in (2, 3)
        elif states["text"] == "uninformative":
            assert row["text"] in UNINFORMATIVE_TEXTS and not mentioned
        if row["image"] is not None:
            image = Image.open(io.BytesIO(row["image"]["bytes"]))
            assert image.format == "PNG" and image.size == (32, 32)
        if row["audio"] is not None:
            waveform, rate = soundfile.read(io.BytesIO(row["audio"]["bytes"]))
            assert rate == 8000 and waveform.ndim == 1 and 0.1 < len(waveform) / rate < 3.0
            assert row["speaker"] is not None
    # every state occurs, so each modality alone is often unreadable
    for modality, states in STATE_PROBABILITIES.items():
        assert {row[f"{modality}_state"] for row in rows} == set(states)


def _digits_in(text: str) -> set[int]:
    words = re.findall(r"[a-z]+|\d", text.lower())
    return {DIGIT_WORDS.index(word) if word in DIGIT_WORDS else int(word) for word in words if word in DIGIT_WORDS or word.isdigit()}


def test_noisy_images_and_audio_are_degraded(demo):
    rows = list(demo["train"]) + list(demo["test"])

    def roughness(state):  # mean absolute difference between neighbouring pixels: noise makes it high
        images = [Image.open(io.BytesIO(r["image"]["bytes"])) for r in rows if r["image_state"] == state]
        return np.mean([np.abs(np.diff(np.asarray(image, dtype=float), axis=1)).mean() for image in images])

    def noise_floor(state):  # energy of the quietest 20 ms frames relative to the loudest: high under noise
        ratios = []
        for row in (r for r in rows if r["audio_state"] == state):
            waveform, rate = soundfile.read(io.BytesIO(row["audio"]["bytes"]))
            frames = waveform[: len(waveform) // 160 * 160].reshape(-1, 160)
            energy = np.sort((frames**2).mean(axis=1))
            ratios.append(energy[: max(1, len(energy) // 10)].mean() / energy[-max(1, len(energy) // 10) :].mean())
        return np.median(ratios)

    assert roughness("noisy") > 2 * roughness("clean")
    assert noise_floor("noisy") > 10 * noise_floor("clean")


def test_image_and_audio_sources_do_not_overlap_between_splits():
    images = load_handwritten_digits()
    assert images["test_unseen_speaker"] is images["test"]  # both test splits draw from the unseen scans
    counts = {split: sum(len(v) for v in images[split].values()) for split in ("train", "validation", "test")}
    assert sum(counts.values()) == 1797 and counts["train"] > counts["test"] > counts["validation"]
    ids = {split: {image.tobytes() for images_ in by_digit.values() for image in images_} for split, by_digit in images.items()}
    assert not ids["train"] & ids["test"] and not ids["validation"] & ids["test"]
    audio = load_spoken_digits(AUDIO_DIR)
    clips = {split: {w.tobytes() for clips_ in by_digit.values() for _, w in clips_} for split, by_digit in audio.items()}
    assert not clips["train"] & clips["test"] and not clips["train"] & clips["validation"]
    assert not clips["test_unseen_speaker"] & (clips["train"] | clips["validation"] | clips["test"])


def test_save_round_trip_and_refusal_to_overwrite(demo, tmp_path):
    folder = save_demo_dataset(demo, tmp_path / "data")
    assert _rows(datasets.load_from_disk(str(folder))) == _rows(demo)
    assert "| train | 60 |" in (folder / "README.md").read_text()
    with pytest.raises(ValueError, match="not empty"):
        save_demo_dataset(demo, folder)


def test_bad_arguments_are_explained(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        build_demo_dataset(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="holds no FSDD recordings"):
        build_demo_dataset(tmp_path)
    with pytest.raises(ValueError, match="held_out_speaker 'nobody' has no recording"):
        build_demo_dataset(AUDIO_DIR, held_out_speaker="nobody")
    with pytest.raises(ValueError, match="two distinct ones"):
        build_match_dataset(AUDIO_DIR, modalities=("image", "image"))
    with pytest.raises(ValueError, match="sum to 1"):
        build_demo_dataset(AUDIO_DIR, probabilities={"text": {"clean": 0.5, "ambiguous": 0.1, "uninformative": 0.1, "missing": 0.1}})
    with pytest.raises(ValueError, match="num_test"):
        build_demo_dataset(AUDIO_DIR, num_test=0)


@pytest.mark.parametrize("modalities", [("image", "audio"), ("text", "image"), ("text", "audio")])
def test_match_task_is_balanced_and_only_the_relation_is_informative(modalities):
    dataset = build_match_dataset(AUDIO_DIR, modalities=modalities, **SIZES)
    assert _rows(build_match_dataset(AUDIO_DIR, modalities=modalities, **SIZES)) == _rows(dataset)  # deterministic
    assert dataset["train"].features["label"].names == ["different", "same"]
    for split, part in dataset.items():
        assert set(Counter(part["label"]).values()) == {len(part) // 2}, split  # exactly half and half
        for row in part:
            first, second = (row[f"{m}_digit"] for m in modalities)
            assert row["label"] == int(first == second) and 0 <= first <= 9 and 0 <= second <= 9
            assert all(row[m] is not None for m in modalities)
            if "text" in modalities:
                (unused,) = {"image", "audio"} - set(modalities)
                assert _digits_in(row["text"]) == {row["text_digit"]} and row[unused] is None
            else:
                assert row["text"] is None or row["text"] in NEUTRAL_NOTES  # a note that carries no digit
            if "audio" in modalities:
                assert (row["speaker"] == HELD_OUT_SPEAKER) == (split == "test_unseen_speaker")
    # a modality alone says nothing: each of its digits comes with "same" and "different" alike
    rows = list(build_match_dataset(AUDIO_DIR, modalities=modalities, num_train=2000, num_validation=2, num_test=2)["train"])
    for digit in range(10):
        labels = [row["label"] for row in rows if row[f"{modalities[1]}_digit"] == digit]
        assert 0.35 < np.mean(labels) < 0.65


def test_pairs_task_gives_one_digit_three_ways():
    dataset = build_pairs_dataset(AUDIO_DIR, **SIZES)
    for split, part in dataset.items():
        assert set(Counter(part["label"]).values()) == {len(part) // 10}
        for row in part:
            assert row["text_digit"] == row["image_digit"] == row["audio_digit"] == row["label"]
            assert _digits_in(row["text"]) == {row["label"]} and row["image"] and row["audio"]
