"""Training-time data augmentation per modality (audio gain / time shift / noise at an SNR / speed, image shift and
small rotation, text word dropout), drawn from a generator seeded by (seed, epoch, example index) so that runs and
kill-and-resume are reproducible bitwise and the global random state is never touched."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
from PIL import Image
from transformers import TrainerCallback

from .feature_extraction_wavenet import resample_polyphase


AUGMENTABLE_MODALITIES = ("audio", "image", "text")
INDEX_COLUMN = "augmentation_index"
"""Column added to the training split only: the example index that seeds its augmentation. Rows without it (the
evaluation splits) are never augmented."""


def change_gain(waveform: np.ndarray, gain_db: float) -> np.ndarray:
    """The waveform scaled by `gain_db` decibels.

    Example:

    ```python
    >>> change_gain(np.ones(4, dtype=np.float32), 20.0).tolist()
    [10.0, 10.0, 10.0, 10.0]
    ```
    """
    return (waveform * 10.0 ** (gain_db / 20.0)).astype(waveform.dtype)


def shift_in_time(waveform: np.ndarray, samples: int) -> np.ndarray:
    """The waveform delayed by `samples` (advanced when negative), zero-filled, same length.

    Example:

    ```python
    >>> shift_in_time(np.array([1.0, 2.0, 3.0]), 1).tolist(), shift_in_time(np.array([1.0, 2.0, 3.0]), -1).tolist()
    ([0.0, 1.0, 2.0], [2.0, 3.0, 0.0])
    ```
    """
    shifted = np.zeros_like(waveform)
    if samples >= 0:
        shifted[samples:] = waveform[: len(waveform) - samples]
    else:
        shifted[:samples] = waveform[-samples:]
    return shifted


def add_noise(waveform: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """The waveform plus white Gaussian noise whose power is the waveform's power lowered by `snr_db` decibels
    (a silent waveform is returned as it is).

    Example:

    ```python
    >>> clean = np.sin(np.linspace(0, 100, 16000)).astype(np.float32)
    >>> noisy = add_noise(clean, 10.0, np.random.default_rng(0))
    >>> round(10 * np.log10(np.mean(clean**2) / np.mean((noisy - clean) ** 2)))
    10
    ```
    """
    power = float(np.mean(np.square(waveform, dtype=np.float64)))
    if power == 0.0:
        return waveform
    noise = rng.standard_normal(waveform.shape)
    noise *= math.sqrt(power / 10.0 ** (snr_db / 10.0) / float(np.mean(noise**2)))
    return (waveform + noise).astype(waveform.dtype)


def change_speed(waveform: np.ndarray, factor: float) -> np.ndarray:
    """The waveform played `factor` times faster (pitch changes with it, as tape speed does): polyphase resampling by
    1 / `factor`, then cut or zero-padded back to the input length.

    Example:

    ```python
    >>> change_speed(np.ones(1000, dtype=np.float32), 1.25).shape
    (1000,)
    ```
    """
    ratio = Fraction(1.0 / factor).limit_denominator(100)
    resampled = resample_polyphase(waveform, ratio.numerator, ratio.denominator).astype(waveform.dtype)
    kept = np.zeros_like(waveform)
    kept[: min(len(waveform), len(resampled))] = resampled[: len(waveform)]
    return kept


def shift_and_rotate(image: Image.Image, shift: tuple[int, int], degrees: float) -> Image.Image:
    """The image rotated by `degrees` about its centre and shifted by `shift` (x, y) pixels, same size, uncovered
    corners black.

    Example:

    ```python
    >>> shift_and_rotate(Image.new("RGB", (32, 24), "white"), (4, 0), 5.0).size
    (32, 24)
    ```
    """
    return image.rotate(degrees, resample=Image.Resampling.BILINEAR, translate=shift)


def drop_words(text: str, probability: float, rng: np.random.Generator) -> str:
    """The text with each whitespace-separated word dropped with `probability` (at least one word is kept).

    Example:

    ```python
    >>> drop_words("one two three four", 0.5, np.random.default_rng(1))
    'one two four'
    ```
    """
    words = text.split()
    if not words:
        return text
    kept = [word for word in words if rng.random() >= probability]
    return " ".join(kept) if kept else words[int(rng.integers(len(words)))]


@dataclass
class DataAugmentation:
    r"""
    Random augmentation of decoded training examples, per modality. Each example's draws come from a NumPy generator
    seeded by (`seed`, `epoch`, example index, modality): the same example gets the same augmentation in the same
    epoch (so a resumed run repeats an interrupted one bitwise) and a different one in the next epoch.
    [`MultimodalDataCollator`] applies it to rows carrying [`INDEX_COLUMN`] (the training split only);
    [`AugmentationEpochCallback`] keeps `epoch` in step with the `Trainer`.

    Args:
        modalities (`Sequence[str]`): The modalities to augment, among `"audio"`, `"image"` and `"text"`.
        seed (`int`, *optional*, defaults to 0): The run's seed.
        audio_gain_db (`float`, *optional*, defaults to 6.0): Gain drawn uniformly in +/- this many decibels.
        audio_shift_seconds (`float`, *optional*, defaults to 0.1): Time shift drawn uniformly in +/- this many seconds.
        audio_noise_snr_db (`float`, *optional*, defaults to 20.0): White noise added at this signal-to-noise ratio.
        audio_speed (`float`, *optional*, defaults to 0.1): Speed factor drawn uniformly in 1 +/- this.
        image_shift (`float`, *optional*, defaults to 0.1): Shift drawn uniformly in +/- this share of width / height.
        image_rotation_degrees (`float`, *optional*, defaults to 10.0): Rotation drawn uniformly in +/- this.
        text_word_dropout (`float`, *optional*, defaults to 0.1): Probability of dropping each word.
        copies (`int`, *optional*): Draw each example's augmentation from only this many fixed copies, cycled over the
            epochs (`draw`: the epoch modulo `copies`), instead of a new one every epoch: a frozen encoder (or the
            frozen blocks of a feature encoder) then reads each copy once, and [`FrozenEncoderCache`] caches it.
        epoch (`int`, *optional*, defaults to 0): The current training epoch.

    Example:

    ```python
    >>> augmentation = DataAugmentation(["text"], seed=1, text_word_dropout=0.5)
    >>> augmentation("text", "the quick brown fox jumps", index=3) == augmentation("text", "the quick brown fox jumps", index=3)
    True
    ```
    """

    modalities: Sequence[str]
    seed: int = 0
    audio_gain_db: float = 6.0
    audio_shift_seconds: float = 0.1
    audio_noise_snr_db: float = 20.0
    audio_speed: float = 0.1
    image_shift: float = 0.1
    image_rotation_degrees: float = 10.0
    text_word_dropout: float = 0.1
    copies: int | None = None
    epoch: int = 0

    def __post_init__(self):
        unknown = [m for m in self.modalities if m not in AUGMENTABLE_MODALITIES]
        if unknown:
            raise ValueError(f"cannot augment {unknown}: choose among {', '.join(AUGMENTABLE_MODALITIES)}.")
        negative = [name for name in ("audio_gain_db", "audio_shift_seconds", "image_shift", "image_rotation_degrees")
                    if getattr(self, name) < 0]
        if negative:
            raise ValueError(f"augmentation strengths {negative} must be >= 0.")
        if not 0.0 <= self.audio_speed < 1.0 or not 0.0 <= self.text_word_dropout < 1.0:
            raise ValueError(
                f"audio_speed and text_word_dropout must be in [0, 1); got {self.audio_speed}, {self.text_word_dropout}."
            )
        if self.copies is not None and self.copies < 1:
            raise ValueError(f"copies must be >= 1 (or None for a new draw every epoch), got {self.copies}.")

    @property
    def draw(self) -> int:
        """Which draw of each example's augmentation the current epoch uses: the epoch, or the epoch modulo
        `copies`."""
        return self.epoch if self.copies is None else self.epoch % self.copies

    def generator(self, modality: str, index: int) -> np.random.Generator:
        """The generator of one example's augmentation of `modality` in the current epoch."""
        return np.random.default_rng([self.seed, self.draw, index, AUGMENTABLE_MODALITIES.index(modality)])

    def __call__(self, modality: str, value: Any, index: int, sampling_rate: int | None = None) -> Any:
        """The augmented `value` (a waveform at `sampling_rate`, a PIL image or a text) of example `index`; values of
        modalities not augmented are returned as they are."""
        if modality not in self.modalities:
            return value
        rng = self.generator(modality, index)
        if modality == "text":
            return drop_words(value, self.text_word_dropout, rng)
        if modality == "image":
            image = value if isinstance(value, Image.Image) else Image.fromarray(np.asarray(value))
            shift = tuple(round(rng.uniform(-1, 1) * self.image_shift * size) for size in image.size)
            return shift_and_rotate(image, shift, rng.uniform(-1, 1) * self.image_rotation_degrees)
        if sampling_rate is None:
            raise ValueError("audio augmentation needs the waveform's sampling_rate.")
        waveform = change_speed(np.asarray(value), 1.0 + rng.uniform(-1, 1) * self.audio_speed)
        waveform = shift_in_time(waveform, round(rng.uniform(-1, 1) * self.audio_shift_seconds * sampling_rate))
        waveform = change_gain(waveform, rng.uniform(-1, 1) * self.audio_gain_db)
        return add_noise(waveform, self.audio_noise_snr_db, rng)


class AugmentationEpochCallback(TrainerCallback):
    """Sets a [`DataAugmentation`]'s epoch at the start of each training epoch (the resumed one included), before the
    `Trainer` builds that epoch's data iterator.

    Example:

    ```python
    >>> trainer = MultimodalTrainer(..., callbacks=[AugmentationEpochCallback(augmentation)])  # doctest: +SKIP
    ```
    """

    def __init__(self, augmentation: DataAugmentation):
        self.augmentation = augmentation

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch is the loop's epoch at its start, or a fraction of it when resumed mid-epoch
        self.augmentation.epoch = math.floor((state.epoch or 0.0) + 1e-6)


__all__ = [
    "AUGMENTABLE_MODALITIES",
    "INDEX_COLUMN",
    "AugmentationEpochCallback",
    "DataAugmentation",
    "add_noise",
    "change_gain",
    "change_speed",
    "drop_words",
    "shift_and_rotate",
    "shift_in_time",
]
