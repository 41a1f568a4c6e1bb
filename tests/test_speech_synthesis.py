"""Synthetic spoken digits (eSpeak NG through espeakng-loader, part of the `demo` extra) and the demo builder's
`synthetic_voices` option: deterministic, 8 kHz, trimmed, and in the training split only."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from make_demo_dataset import HELD_OUT_SPEAKER, SPLITS, build_demo_dataset, describe_demo_dataset, load_spoken_digits
from speech_synthesis import SYNTHETIC_SPEAKER, EspeakSynthesizer, deterministic_variants, synthesize_spoken_digits

AUDIO_DIR = Path(__file__).resolve().parents[1] / "scripts" / "demo_assets" / "fsdd"


def _pitch(waveform: np.ndarray, sampling_rate: int) -> float:
    """The strongest periodicity between 50 and 400 Hz (autocorrelation), in Hz."""
    centred = waveform - waveform.mean()
    correlation = np.correlate(centred, centred, "full")[len(centred) - 1 :]
    shortest, longest = sampling_rate // 400, sampling_rate // 50
    return sampling_rate / (shortest + int(np.argmax(correlation[shortest:longest])))


@pytest.fixture
def small_fsdd(tmp_path) -> Path:
    """A folder of FSDD recordings 0-6 of two speakers: four test, two validation and one training recording per
    digit of `george`, and the held-out speaker's seven (links to the vendored files)."""
    folder = tmp_path / "fsdd"
    folder.mkdir()
    for speaker in ("george", HELD_OUT_SPEAKER):
        for digit in range(10):
            for index in range(7):
                name = f"{digit}_{speaker}_{index}.flac"
                (folder / name).symlink_to(AUDIO_DIR / name)
    return folder


def test_synthesized_digits_are_balanced_trimmed_and_deterministic():
    clips = synthesize_spoken_digits(20, seed=3)
    assert sorted(clips) == list(range(10)) and all(len(clips[digit]) == 2 for digit in range(10))
    for digit in range(10):
        for speaker, waveform in clips[digit]:
            assert speaker == SYNTHETIC_SPEAKER and waveform.dtype == np.float32
            assert 0.1 < len(waveform) / 8000 < 1.5  # one word at 8 kHz, silence trimmed
            assert np.abs(waveform).max() == pytest.approx(0.9, abs=1e-3)
            # trimmed to 10 ms (80 samples) around the first and the last sample above 3% of the peak
            assert np.abs(waveform[:81]).max() > 0.027 and np.abs(waveform[-81:]).max() > 0.027
    # the same seed in another worker process gives the same samples, a smaller count a prefix of the larger draw
    again = synthesize_spoken_digits(10, seed=3)
    assert all(np.array_equal(again[digit][0][1], clips[digit][0][1]) for digit in range(10))
    assert len({len(waveform) for digit in range(10) for _, waveform in clips[digit]}) > 15  # a voice per clip
    assert synthesize_spoken_digits(0) == {digit: [] for digit in range(10)}


def test_rate_and_pitch_change_the_speech():
    synthesizer = EspeakSynthesizer()
    slow = synthesizer.say("one", "en-us+m3", rate=100, pitch=50, pitch_range=0)
    fast = synthesizer.say("one", "en-us+m3", rate=300, pitch=50, pitch_range=0)
    assert synthesizer.sampling_rate == 22050 and len(slow) > 1.5 * len(fast)
    low = synthesizer.say("one", "en-us+m3", rate=175, pitch=10, pitch_range=0)
    high = synthesizer.say("one", "en-us+m3", rate=175, pitch=90, pitch_range=0)
    assert _pitch(high, 22050) > 1.8 * _pitch(low, 22050)  # about 144 Hz against 61 Hz
    with pytest.raises(ValueError, match="no voice 'xx-nowhere'"):
        synthesizer.say("one", "xx-nowhere", rate=175, pitch=50, pitch_range=50)
    variants = deterministic_variants()  # those with random breath noise are left out
    assert len(variants) > 80 and {"m3", "klatt", "croak"} <= set(variants) and not {"f2", "whisper"} & set(variants)


def test_synthetic_voices_join_the_training_split_only(small_fsdd):
    pools = load_spoken_digits(small_fsdd, synthetic_voices=20, seed=0)
    for split in SPLITS:
        speakers = Counter(speaker for clips in pools[split].values() for speaker, _ in clips)
        assert speakers[SYNTHETIC_SPEAKER] == (20 if split == "train" else 0), split
    assert [speaker for speaker, _ in pools["train"][7]] == ["george", SYNTHETIC_SPEAKER, SYNTHETIC_SPEAKER]

    sizes = {"num_train": 20, "num_validation": 5, "num_test": 5}
    mixed = build_demo_dataset(small_fsdd, **sizes, synthetic_voices=20)
    real = build_demo_dataset(small_fsdd, **sizes)
    assert SYNTHETIC_SPEAKER in mixed["train"]["speaker"] and SYNTHETIC_SPEAKER not in real["train"]["speaker"]
    for split in SPLITS[1:]:  # validation and both test splits: the same bytes with or without synthetic voices
        assert mixed[split].to_dict() == real[split].to_dict()
    assert "GPL-3.0-or-later" in describe_demo_dataset(mixed) and "eSpeak NG" not in describe_demo_dataset(real)


def test_bad_requests_are_explained(monkeypatch):
    with pytest.raises(ValueError, match="non-negative integer, got -1"):
        synthesize_spoken_digits(-1)
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # as if the package were not installed
    with pytest.raises(ImportError, match="pip install espeakng-loader"):
        EspeakSynthesizer()
