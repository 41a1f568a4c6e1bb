"""Feature extractor for the WaveNet-style encoder: validated, mono, normalised, padded raw waveforms."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
from transformers import BatchFeature, SequenceFeatureExtractor
from transformers.processing_utils import AudioKwargs
from transformers.utils import TensorType, logging


logger = logging.get_logger(__name__)

AudioLike = np.ndarray | Sequence[float]  # torch tensors are accepted too
MAX_CHANNELS = 8  # a 2-D array is read as (channels, samples) or (samples, channels) when one side is this small
MIN_SAMPLING_RATE, MAX_SAMPLING_RATE = 1_000, 384_000
MIN_CLIP_SECONDS = 0.01
"""Shorter clips are refused: they hold no sound the encoder can hear, and normalised they would become silence."""


def check_sampling_rate(sampling_rate, name: str = "sampling_rate") -> int:
    """`sampling_rate` as an int; ValueError when it is not a whole number of Hz between 1 kHz and 384 kHz.

    The one check of a sampling rate in the package: the feature extractor, `resample_audio`, the media loaders and
    the pipeline all use it. Whole floats such as `16000.0` are accepted.

    Example:

    ```python
    >>> check_sampling_rate(16000.0)
    16000
    ```
    """
    if isinstance(sampling_rate, (float, np.floating)) and float(sampling_rate).is_integer():
        sampling_rate = int(sampling_rate)
    if (
        not isinstance(sampling_rate, (int, np.integer))
        or isinstance(sampling_rate, bool)
        or not MIN_SAMPLING_RATE <= sampling_rate <= MAX_SAMPLING_RATE
    ):
        raise ValueError(
            f"{name} must be a whole number of Hz between {MIN_SAMPLING_RATE} and {MAX_SAMPLING_RATE}, got "
            f"{sampling_rate!r}."
        )
    return int(sampling_rate)


def _scipy_signal():
    """`scipy.signal`, imported at first use in a try block: transformers' remote-code loader requires every package
    that a file imports outside one, and only resampling needs scipy."""
    try:
        import scipy.signal
    except ImportError as error:
        raise ImportError("resampling audio needs scipy: pip install scipy.") from error
    return scipy.signal


@functools.lru_cache(maxsize=1024)
def _polyphase_filter(up: int, down: int, dtype: np.dtype) -> np.ndarray:
    """The low-pass FIR filter `scipy.signal.resample_poly` designs by default for `up` / `down` (Kaiser window, beta
    5, 10 zero crossings per side), read-only."""
    max_rate = max(up, down)
    taps = _scipy_signal().firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0)).astype(dtype)
    taps.setflags(write=False)
    return taps


def resample_polyphase(waveform: np.ndarray, up: int, down: int) -> np.ndarray:
    """`scipy.signal.resample_poly(waveform, up, down)`, same output, with its anti-aliasing filter designed once per
    (`up`, `down`) rather than at every call: designing it took about three quarters of a call on the demo's speed
    changes (`data_augmentation.change_speed`, a few hundred ratios). Needs scipy.

    Example:

    ```python
    >>> import numpy as np
    >>> resample_polyphase(np.ones(100, dtype=np.float32), 3, 2).shape
    (150,)
    ```
    """
    common = math.gcd(up, down)
    up, down = up // common, down // common
    if up == down == 1:
        return np.array(waveform, copy=True)
    dtype = waveform.dtype if np.issubdtype(waveform.dtype, np.floating) else np.dtype(np.float64)
    return _scipy_signal().resample_poly(waveform, up, down, window=_polyphase_filter(up, down, dtype))


def resample_audio(waveform: np.ndarray, orig_sampling_rate: int, target_sampling_rate: int) -> np.ndarray:
    """Resample a 1-D waveform with a polyphase anti-aliasing filter (`scipy.signal.resample_poly`).

    Example:

    ```python
    >>> import numpy as np
    >>> resample_audio(np.zeros(8000, dtype=np.float32), 8000, 16000).shape
    (16000,)
    ```
    """
    orig_sampling_rate = check_sampling_rate(orig_sampling_rate, "orig_sampling_rate")
    target_sampling_rate = check_sampling_rate(target_sampling_rate, "target_sampling_rate")
    if orig_sampling_rate == target_sampling_rate:
        return waveform
    ratio = Fraction(int(target_sampling_rate), int(orig_sampling_rate))
    try:  # the only ImportError of resample_polyphase: scipy missing (`_scipy_signal`); said here with the rates
        resampled = resample_polyphase(waveform, ratio.numerator, ratio.denominator)
    except ImportError as error:
        raise ImportError(
            f"resampling audio from {orig_sampling_rate} Hz to {target_sampling_rate} Hz needs scipy: pip install "
            f"scipy, or pass audio at {target_sampling_rate} Hz."
        ) from error
    return resampled.astype(np.float32)


def to_mono_float32(waveform, index: int = 0) -> np.ndarray:
    """Validate one waveform and return it as a finite mono float32 array.

    Integer PCM is scaled to [-1, 1) by its dtype's full scale. A 2-D array is multichannel audio laid out as
    (channels, samples) or (samples, channels) - whichever side has at most 8 entries - and is averaged to mono.
    """
    if hasattr(waveform, "detach"):  # torch.Tensor
        waveform = waveform.detach().cpu().numpy()
    if isinstance(waveform, (str, bytes)):
        raise TypeError(
            f"audio example {index} is a {type(waveform).__name__}: decode files first, e.g. with "
            "soundfile.read(path), or use pipeline('multimodal-classification'), which decodes paths and bytes."
        )
    try:
        array = np.asarray(waveform)
    except (ValueError, TypeError) as error:
        raise TypeError(f"audio example {index} is not an array of samples: {error}") from error
    if array.dtype == object or not np.issubdtype(array.dtype, np.number):
        raise TypeError(f"audio example {index} must hold numbers, got dtype {array.dtype}.")
    if np.issubdtype(array.dtype, np.complexfloating):
        raise TypeError(f"audio example {index} is complex-valued: pass the real waveform.")
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        array = (array.astype(np.float32) - (info.max + 1 + info.min) / 2) / ((info.max - info.min + 1) / 2)
    array = array.astype(np.float32, copy=False)
    if array.ndim == 2:
        array = _mix_down(array, index)
    if array.ndim != 1:
        raise ValueError(
            f"audio example {index} has shape {array.shape}: expected (samples,) mono or a 2-D multichannel array."
        )
    if array.size == 0:
        raise ValueError(f"audio example {index} is empty (0 samples): pass None for an example without audio.")
    if not np.isfinite(array).all():
        raise ValueError(f"audio example {index} contains NaN or infinite samples: clean or drop it.")
    return array


def _mix_down(array: np.ndarray, index: int) -> np.ndarray:
    rows, cols = array.shape
    if rows <= MAX_CHANNELS and cols > rows:
        return array.mean(axis=0)
    if cols <= MAX_CHANNELS and rows > cols:
        return array.mean(axis=1)
    raise ValueError(
        f"audio example {index} has shape {array.shape}: cannot tell channels from samples. Pass mono audio, or "
        f"multichannel audio as (channels, samples) or (samples, channels) with at most {MAX_CHANNELS} channels."
    )


class WaveNetAudioKwargs(AudioKwargs, total=False):
    """transformers' audio keyword arguments plus this feature extractor's own, so that a processor routes them here
    (`processor(audio=..., max_length_seconds=5)`)."""

    max_length_seconds: float | None


class WaveNetFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Prepares raw audio for [`WaveNetModel`]: checks the sampling rate, mixes multichannel audio down to mono, rejects
    empty or non-finite audio, optionally normalises each example to zero mean and unit variance, truncates to
    `max_length_seconds` and pads the batch.

    It returns `input_values` (`(batch_size, samples)` float32) and `attention_mask` (`(batch_size, samples)`, 1 for
    real samples), as transformers' audio feature extractors do; [`MultimodalProcessor`] renames the mask
    `audio_attention_mask` inside a multimodal batch, beside the tokenizer's `attention_mask`.

    Args:
        feature_size (`int`, *optional*, defaults to 1):
            Features per sample (1: raw waveform).
        sampling_rate (`int`, *optional*, defaults to 16000):
            The rate, in Hz, the model expects. Audio at another rate is refused; resample it first (see
            [`resample_audio`]).
        padding_value (`float`, *optional*, defaults to 0.0):
            Value of padded samples.
        do_normalize (`bool`, *optional*, defaults to `True`):
            Whether to normalise each example to zero mean and unit variance over its real samples.
        max_length_seconds (`float`, *optional*, defaults to 10.0):
            Longer audio is truncated to this many seconds (its start is kept), with a warning. `None` keeps it all.
        return_attention_mask (`bool`, *optional*, defaults to `True`):
            Whether to return `attention_mask`.

    Example:

    ```python
    >>> import numpy as np
    >>> from hf_multimodal import WaveNetFeatureExtractor
    >>> extractor = WaveNetFeatureExtractor()
    >>> batch = extractor([np.zeros(16000), np.zeros(8000)], sampling_rate=16000, return_tensors="pt")
    >>> batch["input_values"].shape, batch["attention_mask"].sum(-1).tolist()
    (torch.Size([2, 16000]), [16000, 8000])
    ```
    """

    model_input_names = ["input_values", "attention_mask"]
    valid_kwargs = WaveNetAudioKwargs

    def __init__(
        self,
        feature_size: int = 1,
        sampling_rate: int = 16000,
        padding_value: float = 0.0,
        do_normalize: bool = True,
        max_length_seconds: float | None = 10.0,
        return_attention_mask: bool = True,
        **kwargs,
    ):
        super().__init__(
            feature_size=feature_size,
            sampling_rate=sampling_rate,
            padding_value=padding_value,
            return_attention_mask=return_attention_mask,
            **kwargs,
        )
        if max_length_seconds is not None and not max_length_seconds > 0:
            raise ValueError(f"max_length_seconds must be positive or None, got {max_length_seconds!r}.")
        self.do_normalize = do_normalize
        self.max_length_seconds = max_length_seconds

    def __call__(
        self,
        raw_speech: AudioLike | Sequence[AudioLike],
        sampling_rate: int | None = None,
        padding: bool | str = "longest",
        max_length_seconds: float | None = None,
        truncation: bool = True,
        pad_to_multiple_of: int | None = None,
        return_attention_mask: bool | None = None,
        return_tensors: str | TensorType | None = None,
        **kwargs,
    ) -> BatchFeature:
        """
        Featurize one waveform or a batch of them.

        Args:
            raw_speech (`np.ndarray`, `torch.Tensor`, `list[float]` or a list of these):
                One example (a 1-D array, or a 2-D multichannel array) or a list of examples.
            sampling_rate (`int`, *optional*):
                Rate of `raw_speech`. Checked against `self.sampling_rate`; pass it to avoid silent errors.
            padding (`bool` or `str`, *optional*, defaults to `"longest"`):
                `"longest"`/`True` pads to the longest example, `"max_length"` to `max_length_seconds`,
                `False`/`"do_not_pad"` returns unpadded arrays (only without `return_tensors`).
            max_length_seconds (`float`, *optional*):
                Overrides `self.max_length_seconds` for this call.
            truncation (`bool`, *optional*, defaults to `True`):
                Whether to cut examples longer than the maximum length.
            pad_to_multiple_of (`int`, *optional*):
                Pad the length up to a multiple of this many samples.
            return_attention_mask (`bool`, *optional*):
                Overrides `self.return_attention_mask`.
            return_tensors (`str` or [`~utils.TensorType`], *optional*):
                `"pt"` or `"np"`.
        """
        if sampling_rate is not None:
            sampling_rate = check_sampling_rate(sampling_rate)
        if sampling_rate is None:
            logger.warning_once(
                f"{type(self).__name__} was called without `sampling_rate`: assuming {self.sampling_rate} Hz. Pass "
                "sampling_rate=... to have audio at another rate refused instead of misread."
            )
        elif sampling_rate != self.sampling_rate:
            raise ValueError(
                f"expected sampling rate {self.sampling_rate}, got {sampling_rate}: resample the audio (e.g. "
                f"hf_multimodal.resample_audio(wave, {sampling_rate}, {self.sampling_rate})) or use a feature "
                f"extractor built with sampling_rate={sampling_rate}."
            )
        examples = [self.check_clip(example, index) for index, example in enumerate(self._as_examples(raw_speech))]
        max_seconds = max_length_seconds if max_length_seconds is not None else self.max_length_seconds
        max_samples = None if max_seconds is None else max(1, int(round(max_seconds * self.sampling_rate)))
        if truncation and max_samples is not None and any(len(example) > max_samples for example in examples):
            logger.warning_once(
                f"Audio longer than {max_seconds} s was truncated to its first {max_seconds} s. Raise "
                "max_length_seconds (or pass None) to keep more."
            )
            examples = [example[:max_samples] for example in examples]
        if self.do_normalize:
            examples = [self._normalize(example) for example in examples]

        return_attention_mask = self.return_attention_mask if return_attention_mask is None else return_attention_mask
        if padding is False or padding == "do_not_pad":
            if return_tensors is not None:
                raise ValueError("return_tensors needs equal lengths: use padding='longest' or 'max_length'.")
            features = {"input_values": examples}
            if return_attention_mask:
                features["attention_mask"] = [np.ones(len(example), dtype=np.int32) for example in examples]
            return BatchFeature(features)
        if padding not in (True, "longest", "max_length"):
            raise ValueError(f"padding must be one of True, False, 'longest', 'max_length', 'do_not_pad'; got {padding!r}.")
        lengths = np.array([len(example) for example in examples])
        target = max_samples if padding == "max_length" and max_samples is not None else int(lengths.max())
        if pad_to_multiple_of:
            target = int(math.ceil(target / pad_to_multiple_of) * pad_to_multiple_of)
        target = max(target, int(lengths.max()))
        input_values = np.full((len(examples), target), self.padding_value, dtype=np.float32)
        for row, example in enumerate(examples):
            input_values[row, : len(example)] = example
        features = {"input_values": input_values}
        if return_attention_mask:
            features["attention_mask"] = (np.arange(target)[None, :] < lengths[:, None]).astype(np.int32)
        return BatchFeature(features, tensor_type=return_tensors)

    @staticmethod
    def _as_examples(raw_speech) -> list[np.ndarray]:
        is_single = isinstance(raw_speech, (str, bytes)) or (hasattr(raw_speech, "ndim") and raw_speech.ndim in (1, 2)) or (
            isinstance(raw_speech, (list, tuple))
            and len(raw_speech) > 0
            and all(isinstance(value, (int, float, np.number)) for value in raw_speech)
        )
        if is_single:
            return [raw_speech]
        if getattr(raw_speech, "ndim", None) == 0 or not (isinstance(raw_speech, (list, tuple)) or hasattr(raw_speech, "ndim")):
            raise TypeError(
                f"audio must be a waveform (1-D array or list of floats) or a list of waveforms, got "
                f"{type(raw_speech).__name__}."
            )
        if len(raw_speech) == 0:
            raise ValueError("audio is an empty list: pass at least one waveform.")
        return list(raw_speech)  # a list, or an array batched along its first axis

    def check_clip(self, waveform: AudioLike, index: int | None = None) -> np.ndarray:
        """One clip as a finite mono float32 array ([`to_mono_float32`]), refused when shorter than
        `MIN_CLIP_SECONDS`; `index` is the example's position in a batch, named in errors."""
        array = to_mono_float32(waveform, index or 0)
        min_samples = math.ceil(MIN_CLIP_SECONDS * self.sampling_rate)
        if len(array) < min_samples:
            where = "the audio clip" if index is None else f"audio example {index}"
            raise ValueError(
                f"{where} is {len(array)} sample{'s' if len(array) > 1 else ''} long "
                f"({1000 * len(array) / self.sampling_rate:.2g} ms at {self.sampling_rate} Hz): clips shorter than "
                f"{1000 * MIN_CLIP_SECONDS:g} ms hold no sound the encoder can hear (normalised, they become "
                "silence). Pass None for an example without audio."
            )
        return array

    @staticmethod
    def _normalize(example: np.ndarray) -> np.ndarray:
        mean = example.mean(dtype=np.float64)
        std = math.sqrt(float(example.var(dtype=np.float64)) + 1e-7)
        return ((example - mean) / std).astype(np.float32)


__all__ = ["WaveNetFeatureExtractor", "check_sampling_rate", "resample_audio", "to_mono_float32"]
