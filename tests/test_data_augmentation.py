"""Training-time augmentation: each transform changes its input as specified, draws are seeded by (seed, epoch,
example index) without touching the global random state, evaluation batches are never augmented (an augmented run
killed and resumed ends bitwise where an uninterrupted one does: tests/test_training.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hf_multimodal.data_augmentation import (
    INDEX_COLUMN,
    AugmentationEpochCallback,
    DataAugmentation,
    add_noise,
    change_gain,
    change_speed,
    drop_words,
    shift_and_rotate,
    shift_in_time,
)
from hf_multimodal.data_collator import MultimodalDataCollator

from conftest import random_audio, random_image
from train import build_trainer, parse_arguments


RATE = 16000
TEXT = "the quick brown fox jumps over the lazy dog"


def sine(frequency: float, seconds: float = 1.0) -> np.ndarray:
    return np.sin(2 * np.pi * frequency * np.arange(int(seconds * RATE)) / RATE).astype(np.float32)


def dominant_frequency(waveform: np.ndarray) -> float:
    return float(np.argmax(np.abs(np.fft.rfft(waveform))) * RATE / len(waveform))


def test_gain_and_time_shift_keep_the_shape():
    waveform = random_audio(0)
    assert np.allclose(change_gain(waveform, -20.0), waveform / 10, atol=1e-7)
    delayed = shift_in_time(waveform, 100)
    assert delayed.shape == waveform.shape and not delayed[:100].any() and np.array_equal(delayed[100:], waveform[:-100])
    advanced = shift_in_time(waveform, -100)
    assert not advanced[-100:].any() and np.array_equal(advanced[:-100], waveform[100:])


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 30.0])
def test_noise_is_added_at_the_requested_snr(snr_db):
    clean = sine(440.0)
    noisy = add_noise(clean, snr_db, np.random.default_rng(1))
    measured = 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean((noisy - clean).astype(np.float64) ** 2))
    assert noisy.shape == clean.shape and noisy.dtype == clean.dtype and measured == pytest.approx(snr_db, abs=0.01)
    assert not add_noise(np.zeros(100, dtype=np.float32), snr_db, np.random.default_rng(1)).any()  # silence stays


@pytest.mark.parametrize("factor", [0.8, 1.25])
def test_speed_change_scales_the_frequency_and_keeps_the_length(factor):
    faster = change_speed(sine(400.0), factor)
    assert faster.shape == (RATE,)
    assert dominant_frequency(faster[: int(RATE * min(1.0, 1 / factor))]) == pytest.approx(400.0 * factor, rel=0.02)
    if factor > 1:  # the sped-up clip is shorter: zero-padded to the input length
        assert not faster[int(RATE / factor) + 1 :].any()


def test_image_shift_and_rotation_keep_the_size():
    image = random_image(0, (40, 36))
    assert np.array_equal(np.asarray(shift_and_rotate(image, (0, 0), 0.0)), np.asarray(image))
    shifted = np.asarray(shift_and_rotate(image, (5, 0), 0.0))
    assert shifted.shape == (36, 40, 3) and not shifted[:, :5].any()
    assert np.array_equal(shifted[:, 5:], np.asarray(image)[:, :-5])
    rotated = shift_and_rotate(image, (0, 0), 8.0)
    assert rotated.size == image.size and not np.array_equal(np.asarray(rotated), np.asarray(image))


def test_word_dropout_keeps_an_ordered_subset_and_at_least_one_word():
    words = TEXT.split()
    assert drop_words(TEXT, 0.0, np.random.default_rng(0)) == TEXT
    assert len(drop_words(TEXT, 0.999, np.random.default_rng(0)).split()) == 1
    kept = drop_words(TEXT, 0.5, np.random.default_rng(0)).split()
    assert 0 < len(kept) < len(words) and kept == [word for word in words if word in kept]


def augmented_values(augmentation: DataAugmentation, index: int) -> tuple:
    audio = augmentation("audio", random_audio(0), index, sampling_rate=RATE)
    image = np.asarray(augmentation("image", random_image(0), index))
    return audio, image, augmentation("text", TEXT, index)


def test_draws_depend_on_seed_epoch_and_index_only_and_leave_the_global_rng_alone():
    augmentation = DataAugmentation(["audio", "image", "text"], seed=3, text_word_dropout=0.3)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    first = augmented_values(augmentation, 5)
    assert torch.equal(torch.get_rng_state(), torch_state) and np.array_equal(np.random.get_state()[1], numpy_state[1])
    audio, image, text = first
    assert audio.shape == random_audio(0).shape and image.shape == np.asarray(random_image(0)).shape and text != TEXT

    def same(a: tuple, b: tuple) -> list[bool]:
        return [np.array_equal(a[0], b[0]), np.array_equal(a[1], b[1]), a[2] == b[2]]

    assert same(first, augmented_values(DataAugmentation(["audio", "image", "text"], 3, text_word_dropout=0.3), 5)) == [True] * 3
    augmentation.epoch = 1
    assert same(first, augmented_values(augmentation, 5)) == [False] * 3
    augmentation.epoch = 0
    assert same(first, augmented_values(augmentation, 6)) == [False] * 3


def test_fixed_copies_cycle_over_the_epochs():
    """With `copies`, epoch e draws copy e mod copies: the first epochs draw as without them, then repeat."""
    fresh = DataAugmentation(["audio", "image", "text"], seed=3, text_word_dropout=0.3)
    cycled = DataAugmentation(["audio", "image", "text"], seed=3, text_word_dropout=0.3, copies=2)
    draws, copies = [], []
    for epoch in range(4):
        fresh.epoch = cycled.epoch = epoch
        draws.append(augmented_values(cycled, 5))
        copies.append(cycled.draw)
        if epoch < 2:
            assert all(np.array_equal(a, b) for a, b in zip(draws[-1], augmented_values(fresh, 5)))
    assert copies == [0, 1, 0, 1]
    assert all(np.array_equal(a, b) for a, b in zip(draws[0], draws[2]))
    assert not np.array_equal(draws[0][0], draws[1][0])
    with pytest.raises(ValueError, match="copies must be >= 1"):
        DataAugmentation(["audio"], copies=0)


def test_only_the_chosen_modalities_are_augmented_and_bad_settings_are_refused():
    augmentation = DataAugmentation(["image"])
    assert augmentation("text", TEXT, 0) == TEXT
    waveform = random_audio(0)
    assert augmentation("audio", waveform, 0) is waveform
    with pytest.raises(ValueError, match="choose among audio, image, text"):
        DataAugmentation(["video"])
    with pytest.raises(ValueError, match="must be in"):
        DataAugmentation(["text"], text_word_dropout=1.0)
    with pytest.raises(ValueError, match="sampling_rate"):
        DataAugmentation(["audio"])("audio", waveform, 0)


def test_epoch_callback_follows_the_trainer_including_a_resume_mid_epoch():
    augmentation = DataAugmentation(["text"])
    callback = AugmentationEpochCallback(augmentation)
    for epoch, expected in [(None, 0), (2.0, 2), (1.3333333, 1), (2.9999999, 3)]:
        callback.on_epoch_begin(None, SimpleNamespace(epoch=epoch), None)
        assert augmentation.epoch == expected


def test_collator_augments_training_rows_only(processor):
    rows = [
        {"text": TEXT, "image": random_image(i), "audio": {"array": random_audio(i), "sampling_rate": RATE}, "label": i}
        for i in range(3)
    ]
    modalities = ("text", "image", "audio")
    plain = MultimodalDataCollator(processor, modalities)(rows)
    augmentation = DataAugmentation(list(modalities), text_word_dropout=0.5)
    collator = MultimodalDataCollator(processor, modalities, augmentation=augmentation)
    evaluation = collator(rows)  # evaluation rows carry no index: unchanged
    assert plain.keys() == evaluation.keys() and all(torch.equal(plain[key], evaluation[key]) for key in plain)
    training = collator([{**row, INDEX_COLUMN: index} for index, row in enumerate(rows)])
    for key in ("input_ids", "pixel_values", "input_values"):
        assert not torch.equal(plain[key], training[key]), key
    assert plain["pixel_values"].shape == training["pixel_values"].shape
    assert torch.equal(plain["labels"], training["labels"])


def test_augment_options_build_the_augmentation(tmp_path):
    options = ["--dataset", str(tmp_path), "--output_dir", str(tmp_path / "out")]
    assert parse_arguments(options)[1].augmentation(seed=0) is None
    _, data_args, _ = parse_arguments([*options, "--augment", "audio", "text", "--audio_noise_snr_db", "15"])
    augmentation = data_args.augmentation(seed=7)
    assert list(augmentation.modalities) == ["audio", "text"] and augmentation.seed == 7
    assert augmentation.audio_noise_snr_db == 15.0 and augmentation.image_shift == DataAugmentation.image_shift
    assert augmentation.copies is None
    assert parse_arguments([*options, "--augment", "audio", "--augment_copies", "3"])[1].augmentation(0).copies == 3
    with pytest.raises(ValueError, match="--augment_copies must be >= 1 and goes with --augment"):
        parse_arguments([*options, "--augment_copies", "3"])
    # persistent workers keep their first collator: the epoch's augmentation would never change
    persistent = ["--augment", "audio", "--dataloader_num_workers", "2", "--dataloader_persistent_workers", "True"]
    with pytest.raises(ValueError, match="--augment with --dataloader_persistent_workers"):
        build_trainer(*parse_arguments([*options, *persistent]))
