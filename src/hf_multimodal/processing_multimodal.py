"""Processor that turns any subset of text, images and audio into one batch for the multimodal model."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import (
    AutoFeatureExtractor,
    AutoImageProcessor,
    AutoTokenizer,
    BatchFeature,
    BertTokenizerFast,
)
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin
from transformers.utils import logging

from .configuration_multimodal import image_or_deprecated_vision
from .feature_extraction_wavenet import WaveNetFeatureExtractor
from .image_processing_multimodal import MultimodalImageProcessor


logger = logging.get_logger(__name__)

DEFAULT_VOCAB = Path(__file__).with_name("bert_uncased_vocab.txt")

MODALITY_ARGUMENTS: dict[str, str] = {"text": "text", "image": "images", "audio": "audio"}
"""The processor's argument for each modality's inputs."""

_UNSET = object()


class MultimodalProcessorKwargs(ProcessingKwargs, total=False):
    """Keyword arguments of [`MultimodalProcessor.__call__`], routed as transformers routes them: `text_kwargs`,
    `images_kwargs`, `audio_kwargs` (or `common_kwargs`) dicts, or flat keywords sent to every sub-processor that
    takes them (`max_length` to the tokenizer, `padding` to the tokenizer and the feature extractor, ...)."""

    _defaults = {
        "text_kwargs": {"padding": True, "truncation": True},
        "audio_kwargs": {"padding": "longest", "return_attention_mask": True},
    }


def is_missing(value: Any) -> bool:
    """Whether one example's entry of a modality counts as absent: `None`, or text that is empty or blank.

    The one definition of a missing entry, used by the processor, the pipeline, the training data collator and the
    training script's filters.
    """
    return value is None or (isinstance(value, str) and not value.strip())


def check_text(value: Any, index: int | None = None) -> str | None:
    """One example's text, checked: `None` when it is missing (see `is_missing`), the string otherwise; `TypeError`
    for bytes or other types, `ValueError` for strings that are not valid Unicode (lone surrogates)."""
    where = "text" if index is None else f"text example {index}"
    if isinstance(value, (bytes, bytearray)):
        raise TypeError(f"{where} is bytes: decode it to str first (e.g. value.decode('utf-8')).")
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{where} is a {type(value).__name__}; expected a str or None.")
    if is_missing(value):
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"{where} is not valid Unicode ({error.reason} at position {error.start}): clean it first.") from None
    return value


def default_tokenizer() -> BertTokenizerFast:
    """The uncased BERT WordPiece tokenizer (vocabulary of `bert-base-uncased`, bundled with the package)."""
    return BertTokenizerFast(vocab=str(DEFAULT_VOCAB), do_lower_case=True, model_max_length=512)


def default_image_processor() -> MultimodalImageProcessor:
    """ResNet-style preprocessing: resize to 256, center-crop 224, ImageNet mean / std (as microsoft/resnet-50), with
    the fast path of [`MultimodalImageProcessor`]."""
    return MultimodalImageProcessor()


class MultimodalProcessor(ProcessorMixin):
    r"""
    Wraps a tokenizer, an image processor and an audio feature extractor into one processor.

    `processor(text=..., images=..., audio=..., sampling_rate=...)` takes any subset of the three. Each is one
    example or a list with one entry per example, where `None` (or, for text, an empty string) marks an example
    without that modality. It returns one [`~transformers.BatchFeature`] holding the model inputs of the given
    modalities and a `(batch_size,)` presence mask per modality (`has_text`, `has_image`, `has_audio`); rows of
    absent examples are placeholders the model never encodes.

    Args:
        tokenizer ([`PreTrainedTokenizerBase`], *optional*):
            Any tokenizer; defaults to the uncased BERT tokenizer.
        image_processor ([`BaseImageProcessor`], *optional*):
            Any image processor; defaults to ResNet-style preprocessing (see `default_image_processor`).
        feature_extractor ([`FeatureExtractionMixin`], *optional*):
            Any raw-audio feature extractor; defaults to [`WaveNetFeatureExtractor`].
        max_text_length (`int`, *optional*, defaults to 128):
            Texts are truncated to this many tokens (a warning says so once).

    Example:

    ```python
    >>> import numpy as np
    >>> from PIL import Image
    >>> from hf_multimodal import MultimodalProcessor
    >>> processor = MultimodalProcessor()
    >>> batch = processor(
    ...     text=["a red dress", None],
    ...     images=[Image.new("RGB", (64, 64)), Image.new("RGB", (32, 48))],
    ...     audio=[None, np.zeros(16000, dtype=np.float32)],
    ...     sampling_rate=16000,
    ... )
    >>> batch["has_text"].tolist(), batch["has_audio"].tolist(), batch["pixel_values"].shape
    ([True, False], [False, True], torch.Size([2, 3, 224, 224]))
    ```
    """

    valid_processor_kwargs = MultimodalProcessorKwargs

    def __init__(self, tokenizer=None, image_processor=None, feature_extractor=None, max_text_length: int = 128, **kwargs):
        if not isinstance(max_text_length, int) or max_text_length < 2:
            raise ValueError(f"max_text_length must be an integer >= 2, got {max_text_length!r}.")
        self.max_text_length = max_text_length
        super().__init__(
            tokenizer if tokenizer is not None else default_tokenizer(),
            image_processor if image_processor is not None else default_image_processor(),
            feature_extractor if feature_extractor is not None else WaveNetFeatureExtractor(),
            **kwargs,
        )

    @classmethod
    def from_backbones(
        cls,
        text: str | os.PathLike | None = None,
        image: str | os.PathLike | None = None,
        audio: str | os.PathLike | None = None,
        vision: str | os.PathLike | None = None,
        **kwargs,
    ) -> MultimodalProcessor:
        """Build a processor from the preprocessing saved with pretrained encoders (folders or Hub ids); a modality
        given as `None` gets the default sub-processor. Mirrors `MultimodalForSequenceClassification.from_backbones`
        (`vision=` is the deprecated name of `image=`).
        """
        image = image_or_deprecated_vision(image, vision, f"{cls.__name__}.from_backbones")
        return cls(
            tokenizer=AutoTokenizer.from_pretrained(text) if text is not None else None,
            image_processor=AutoImageProcessor.from_pretrained(image) if image is not None else None,
            feature_extractor=AutoFeatureExtractor.from_pretrained(audio) if audio is not None else None,
            **kwargs,
        )

    @property
    def model_input_names(self) -> list[str]:
        return [
            *self.tokenizer.model_input_names,
            "pixel_values",
            "input_values",
            "audio_attention_mask",
            "has_text",
            "has_image",
            "has_audio",
        ]

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        """`ProcessorMixin.save_pretrained`, leaving this processor as it was: transformers writes the remote-code
        `auto_map` into the live processor and its sub-processors while it saves them."""
        parts = [self, *(getattr(self, name) for name in self.get_attributes())]
        holders = [vars(part) for part in parts] + [part.init_kwargs for part in parts if hasattr(part, "init_kwargs")]
        before = [(holder, holder.get("auto_map", _UNSET)) for holder in holders]
        try:
            return super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            for holder, value in before:
                if value is _UNSET:
                    holder.pop("auto_map", None)
                else:
                    holder["auto_map"] = value

    def __call__(
        self,
        text: str | Sequence[str | None] | None = None,
        images: Any = None,
        audio: Any = None,
        sampling_rate: int | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """
        Prepare one example or a batch.

        Args:
            text (`str` or `list[str | None]`, *optional*):
                Texts; `None`, empty or whitespace-only entries mark examples without text.
            images (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of these and `None`, *optional*):
                Images (any PIL mode; arrays as (height, width[, channels]) or (channels, height, width)).
            audio (`np.ndarray`, `torch.Tensor`, `list[float]` or a list of these and `None`, *optional*):
                Waveforms at `sampling_rate` (a 2-D array is one multichannel clip).
            sampling_rate (`int`, *optional*):
                Rate of `audio`; the feature extractor refuses a rate other than its own.
            return_tensors (`str`, *optional*, defaults to `"pt"`):
                Only `"pt"` is supported: presence masks and scattered rows are torch tensors.
            kwargs ([`MultimodalProcessorKwargs`]):
                Options of the sub-processors, as in transformers: `text_kwargs={"max_length": 64}`,
                `images_kwargs={...}`, `audio_kwargs={"max_length_seconds": 5}`, or flat (`max_length=64`,
                `padding="max_length"`, which also pads clips to `max_length_seconds`). Texts are padded to the
                longest and truncated to `max_text_length` tokens unless told otherwise.
        """
        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors must be 'pt', got {return_tensors!r}.")
        options = self._merge_kwargs(MultimodalProcessorKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs)
        columns = {
            "text": _as_column(text, "text", _is_single_text),
            "image": _as_column(images, "images", _is_single_image, _one_image),
            "audio": _as_column(audio, "audio", _is_single_audio),
        }
        sizes = {name: len(column) for name, column in columns.items() if column is not None}
        if not sizes:
            raise ValueError("nothing to process: pass at least one of text=..., images=... or audio=....")
        if len(set(sizes.values())) > 1:
            raise ValueError(f"the modalities have different numbers of examples {sizes}: give one entry per example.")
        batch_size = next(iter(sizes.values()))
        empty = [row for row in range(batch_size) if all(is_missing(c[row]) for c in columns.values() if c)]
        if empty:
            raise ValueError(
                f"examples {empty} have no text, image or audio (every entry is None or blank): give each example at "
                "least one modality, or drop those examples."
            )

        data: dict[str, torch.Tensor] = {}
        if columns["text"] is not None:
            data.update(self._process_text(columns["text"], options["text_kwargs"]))
        if columns["image"] is not None:
            data.update(self._process_images(columns["image"], batch_size, options["images_kwargs"]))
        if columns["audio"] is not None:
            data.update(self._process_audio(columns["audio"], batch_size, sampling_rate, options["audio_kwargs"]))
        return BatchFeature(data)

    def _process_text(self, texts: list, options: dict) -> dict[str, torch.Tensor]:
        texts = [check_text(value, index) for index, value in enumerate(texts)]
        present = [value is not None for value in texts]
        options = {"max_length": self.max_text_length, **options, "return_tensors": "pt"}
        encoded = self.tokenizer([value if value is not None else "" for value in texts], **options)
        if any(getattr(encoding, "overflowing", None) for encoding in (encoded.encodings or [])):
            logger.warning_once(
                f"Text longer than {options['max_length']} tokens was truncated. Raise processor.max_text_length (or "
                "pass max_length=..., up to the text encoder's maximum) to keep more."
            )
        return {**encoded, "has_text": torch.tensor(present)}

    def _process_images(self, images: list, batch_size: int, options: dict) -> dict[str, torch.Tensor]:
        present = [index for index, image in enumerate(images) if image is not None]
        result = {"has_image": _mask(present, batch_size)}
        if present:
            prepared = [prepare_image(images[index], index) for index in present]
            pixel_values = self.image_processor(images=prepared, **{**options, "return_tensors": "pt"})["pixel_values"]
            result["pixel_values"] = _scatter_rows(pixel_values, present, batch_size)
        return result

    def _process_audio(self, clips: list, batch_size: int, sampling_rate: int | None, options: dict) -> dict:
        present = [index for index, clip in enumerate(clips) if clip is not None]
        result = {"has_audio": _mask(present, batch_size)}
        if not present:
            return result
        # Checked here so that errors name the example's position in the batch, not among the clips given.
        check = getattr(self.feature_extractor, "check_clip", lambda clip, index: clip)
        extracted = self.feature_extractor(
            [check(clips[index], index) for index in present],
            **{**options, "sampling_rate": sampling_rate, "return_tensors": "pt"},
        )
        main_name = self.feature_extractor.model_input_names[0]
        result["input_values"] = _scatter_rows(extracted[main_name], present, batch_size)
        # Renamed: the batch's "attention_mask" is the tokenizer's.
        mask = extracted.get("attention_mask")
        if mask is not None:
            result["audio_attention_mask"] = _scatter_rows(mask, present, batch_size)
        return result


PADDED_KWARGS: dict[str, str] = {"text": "text_kwargs", "audio": "audio_kwargs"}
"""The modalities of variable length, by the processor's keyword-argument group that pads them."""

TEXT_BUCKET_TOKENS = 16
"""[`bucket_multiples`] pads text to a multiple of this many tokens."""

AUDIO_BUCKETS = 4
"""[`bucket_multiples`] pads audio cut to a maximum length to a multiple of this fraction of it (a quarter)."""


def bucket_multiples(max_text_tokens: int, max_audio_samples: int | None) -> dict[str, int]:
    """A `pad_to_multiple_of` (see [`padding_kwargs`]) that bounds the shapes of batches: text to a multiple of 16
    tokens (at most `max_text_tokens / 16` lengths), audio cut to `max_audio_samples` to a multiple of a quarter of
    that (at most 4 lengths); audio without a cut (`None`) keeps the longest clip's length. A `torch.compile`d model
    then compiles a bounded number of graphs: the collator of `scripts/train.py --torch_compile` and
    `pipeline(..., torch_compile=True)` pad so.

    Example:

    ```python
    >>> bucket_multiples(max_text_tokens=32, max_audio_samples=16000)
    {'text': 16, 'audio': 4000}
    ```
    """
    multiples = {"text": min(TEXT_BUCKET_TOKENS, max_text_tokens)}
    if max_audio_samples is not None:
        multiples["audio"] = max(1, -(-max_audio_samples // AUDIO_BUCKETS))
    return multiples


def padding_kwargs(pad_to_multiple_of: Mapping[str, int], modalities: Sequence[str]) -> dict[str, dict[str, int]]:
    """The processor keyword arguments that pad the `modalities` of a call to `pad_to_multiple_of[modality]` tokens
    (text) or samples (audio); `ValueError` for other keys or non-positive multiples.

    Example:

    ```python
    >>> padding_kwargs({"text": 16, "audio": 4000}, ["text", "image"])
    {'text_kwargs': {'pad_to_multiple_of': 16}}
    ```
    """
    for modality, multiple in pad_to_multiple_of.items():
        positive_int = isinstance(multiple, int) and not isinstance(multiple, bool) and multiple >= 1
        if modality not in PADDED_KWARGS or not positive_int:
            raise ValueError(
                f"pad_to_multiple_of takes positive integers for {' and '.join(PADDED_KWARGS)}; got {modality!r}: "
                f"{multiple!r}."
            )
    return {
        PADDED_KWARGS[m]: {"pad_to_multiple_of": multiple}
        for m, multiple in pad_to_multiple_of.items()
        if m in modalities
    }


def _is_single_text(value: Any) -> bool:
    return isinstance(value, str)


def _is_single_image(value: Any) -> bool:
    if hasattr(value, "getpixel"):  # PIL.Image.Image
        return True
    return hasattr(value, "ndim") and value.ndim in (2, 3)


def _is_single_audio(value: Any) -> bool:
    if hasattr(value, "ndim"):
        return value.ndim in (1, 2)
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(
        isinstance(sample, (int, float, np.number)) and not isinstance(sample, bool) for sample in value
    )


def _as_column(value: Any, name: str, is_single, entry=lambda value, index: value) -> list | None:
    """One modality's inputs as a list with one entry per example (None when the modality was not passed), each
    entry read by `entry(value, index)`."""
    if value is None:
        return None
    if is_single(value):
        return [value]
    batched = isinstance(value, (list, tuple)) or getattr(value, "ndim", 0) > 0  # a list, or an array batched on axis 0
    if not batched:
        raise TypeError(f"{name} must be one example or a list of examples, got {type(value).__name__}.")
    if len(value) == 0:
        raise ValueError(f"{name} is empty: pass at least one example, or leave {name} out.")
    if hasattr(value, "ndim") and not is_single(value[0]):
        raise ValueError(
            f"{name} is an array of shape {tuple(value.shape)}: expected one example, or a batch of them stacked on "
            f"the first axis (or a list)."
        )
    return [entry(item, index) for index, item in enumerate(value)]


def _one_image(entry: Any, index: int) -> Any:
    """A batch entry of `images=`: an image or None, or (as multi-image processors take them) a list of at most one."""
    if not isinstance(entry, (list, tuple)):
        return entry
    if len(entry) > 1:
        raise ValueError(
            f"example {index} has {len(entry)} images: this model reads one image per example; pass one (or None)."
        )
    return entry[0] if entry else None


def prepare_image(image: Any, index: int | None = None) -> Image.Image:
    """Check one image and bring it to an RGB PIL image, from a PIL image in any mode or an (height, width[,
    channels]) / (channels, height, width) array of uint8, 16-bit integers or floats in [0, 1] or [0, 255]; `index`
    is the example's position in a batch, named in errors."""
    where = "the image" if index is None else f"image {index}"
    if hasattr(image, "getpixel"):  # PIL.Image.Image
        if image.width < 1 or image.height < 1:
            raise ValueError(f"{where} is empty ({image.width}x{image.height}).")
        if image.mode in ("RGB", "L", "LA", "P", "PA", "RGBA", "RGBX", "CMYK", "YCbCr", "1", "LAB", "HSV"):
            return image if image.mode == "RGB" else image.convert("RGB")
        image = np.asarray(image)  # 16-bit and 32-bit integer or float modes: scale them below
    if hasattr(image, "detach"):  # torch.Tensor
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{where} is a {type(image).__name__}; expected a PIL image, numpy array or tensor.")
    if image.ndim == 3 and image.shape[0] in (1, 3, 4) and image.shape[-1] not in (1, 3, 4):
        image = image.transpose(1, 2, 0)  # (channels, height, width) -> (height, width, channels)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4) or 0 in image.shape:
        raise ValueError(
            f"{where} has shape {tuple(image.shape)}: expected (height, width), (height, width, 1|3|4) or "
            "(1|3|4, height, width)."
        )
    image = _to_uint8(image[..., :3], where)
    return Image.fromarray(np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image)


def _to_uint8(image: np.ndarray, where: str) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == bool or not np.issubdtype(image.dtype, np.number):
        raise TypeError(f"{where} has dtype {image.dtype}; expected integers or floats.")
    values = image.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"{where} contains NaN or infinite values.")
    if np.issubdtype(image.dtype, np.integer):
        sixteen_bit = image.dtype.itemsize == 2 or values.max(initial=0) > 255
        scale = 255.0 / 65535.0 if sixteen_bit else 1.0
    else:
        scale = 255.0 if values.max(initial=0) <= 1.0 else 1.0
    return np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)


def _mask(present: list[int], batch_size: int) -> torch.Tensor:
    mask = torch.zeros(batch_size, dtype=torch.bool)
    mask[present] = True
    return mask


def _scatter_rows(values: torch.Tensor, rows: list[int], batch_size: int) -> torch.Tensor:
    """Place the rows computed for the present examples into a zero tensor with one row per example."""
    values = torch.as_tensor(values)
    if len(rows) == batch_size:
        return values
    full = values.new_zeros((batch_size, *values.shape[1:]))
    full[rows] = values
    return full


__all__ = [
    "MODALITY_ARGUMENTS",
    "MultimodalProcessor",
    "bucket_multiples",
    "check_text",
    "is_missing",
    "padding_kwargs",
]
