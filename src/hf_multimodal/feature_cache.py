"""Frozen-encoder feature cache: a frozen encoder whose inputs are not augmented gives the same output for an example
every epoch, so its features are computed once per dataset split, stored on disk, and fed to the model instead of
running the encoder (`{modality}_encoder_features`, see [`MultimodalModel.encoder_features`]). The same holds for the
frozen feature encoder of a trained audio encoder (the `"speech_embedding"` stack under `--freeze_feature_encoder`):
its outputs are cached and the rest of the encoder runs on them (`audio_feature_encoder_outputs`, see
[`WaveNetModel.compute_feature_encoder_outputs`]).

A cache entry is keyed by the split's `datasets` fingerprint, the encoder's weights and config, and the preprocessing
that makes its inputs (tokenizer and `max_text_length`, image processor, feature extractor and `max_audio_seconds`):
when any of them changes, the features are computed again. Entries are safetensors files under the `datasets` cache
(`$HF_DATASETS_CACHE/hf_multimodal_encoder_features`), shared by runs on the same data and encoder (a resumed run, the
fusion heads of a comparison, ...); with several processes the main one computes them first, the others read them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, TrainerCallback
from transformers.utils import logging

from .configuration_multimodal import MODALITIES
from .data_augmentation import INDEX_COLUMN
from .modeling_multimodal import FEATURE_ENCODER_INPUT_NAMES, FEATURE_INPUT_NAMES, INPUT_NAMES, PRESENCE_NAMES
from .modeling_wavenet import feature_encoder_of
from .processing_multimodal import is_missing


logger = logging.get_logger(__name__)

CACHE_FORMAT_VERSION = 1
"""Part of every cache key: a new layout of the cached files invalidates the old ones."""

ENCODER, FEATURE_ENCODER = "encoder", "feature_encoder"
"""What a cache entry holds of a modality's encoder: the output of the whole (frozen) encoder, or of its frozen
feature encoder only."""

CACHED_INPUT_NAMES: dict[str, dict[str, tuple[str, str]]] = {
    ENCODER: FEATURE_INPUT_NAMES,
    FEATURE_ENCODER: FEATURE_ENCODER_INPUT_NAMES,
}
"""Per part, the model inputs (features, mask) that the cached features of each modality are fed as."""

FEATURE_ROW_COLUMNS: dict[str, str] = {m: f"{m}_feature_row" for m in MODALITIES}
"""Column added to a cached split per modality: the row of each example in that modality's [`EncoderFeatureTable`]."""


def default_cache_dir() -> Path:
    """Where cached encoder features go by default: `hf_multimodal_encoder_features` in the `datasets` cache."""
    return Path(datasets.config.HF_DATASETS_CACHE) / "hf_multimodal_encoder_features"


@dataclass
class EncoderFeatureTable:
    r"""
    The precomputed encoder features of one modality for the rows of every split added to a [`FrozenEncoderCache`];
    [`MultimodalDataCollator`] looks the rows of a batch up (`FEATURE_ROW_COLUMNS`) instead of decoding that modality.

    Args:
        features (`torch.FloatTensor`): `(rows, hidden_size)` pooled features, or `(rows, length, hidden_size)`
            sequences; zeros for examples without the modality.
        present (`torch.BoolTensor` of shape `(rows,)`): Whether each example has the modality.
        mask (`torch.BoolTensor` of shape `(rows, length)`, *optional*): The real positions of sequences.
        part (`str`, *optional*, defaults to `"encoder"`): Whose output `features` are: `"encoder"` (fed to the model
            as `{modality}_encoder_features`) or `"feature_encoder"` (the frozen feature encoder of an audio encoder,
            fed as `audio_feature_encoder_outputs`).

    Example:

    ```python
    >>> table = EncoderFeatureTable(torch.ones(3, 4), torch.tensor([True, False, True]))
    >>> batch = table.batch("text", [2, 1])
    >>> batch["text_encoder_features"].shape, batch["has_text"].tolist()
    (torch.Size([2, 4]), [True, False])
    ```
    """

    features: torch.Tensor
    present: torch.Tensor
    mask: torch.Tensor | None = None
    part: str = ENCODER

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors to store (the part is in the cache key)."""
        return {
            name: value.contiguous() for name, value in dataclasses.asdict(self).items() if torch.is_tensor(value)
        }

    def __len__(self) -> int:
        return self.features.shape[0]

    def extend(self, other: EncoderFeatureTable) -> int:
        """Append the rows of `other` (sequences are padded to the longer length); returns the row of its first."""
        offset = len(self)
        if self.mask is not None:
            length = max(self.mask.shape[1], other.mask.shape[1])
            self.features = torch.cat([_pad(self.features, length), _pad(other.features, length)])
            self.mask = torch.cat([_pad(self.mask, length), _pad(other.mask, length)])
        else:
            self.features = torch.cat([self.features, other.features])
        self.present = torch.cat([self.present, other.present])
        return offset

    def batch(self, modality: str, rows: Sequence[int]) -> dict[str, torch.Tensor]:
        """The model inputs of `rows`: the features (sequences cut to the longest real length among them), their mask
        and the presence flags of `modality`."""
        index = torch.as_tensor(list(rows), dtype=torch.long)
        features_name, mask_name = CACHED_INPUT_NAMES[self.part][modality]
        inputs = {PRESENCE_NAMES[modality]: self.present[index]}
        if self.mask is None:
            return {features_name: self.features[index], **inputs}
        mask = self.mask[index]
        real = mask.any(dim=0).nonzero()
        length = int(real.max()) + 1 if len(real) else 1
        return {features_name: self.features[index, :length], mask_name: mask[:, :length], **inputs}


def with_column(dataset: datasets.Dataset, name: str, values: list) -> datasets.Dataset:
    """`dataset` with one more column, in memory: a filtered or selected split is flattened first (add_column would
    otherwise write a flattened copy beside the user's data).

    Example:

    ```python
    >>> import datasets
    >>> with_column(datasets.Dataset.from_dict({"a": [1, 2, 3]}).select([2, 0]), "b", [0, 1]).to_dict()
    {'a': [3, 1], 'b': [0, 1]}
    ```
    """
    if dataset._indices is not None:
        dataset = dataset.flatten_indices(keep_in_memory=True)
    return dataset.add_column(name, values)


def _pad(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """`tensor` zero-padded along dimension 1 to `length`."""
    missing = length - tensor.shape[1]
    if missing == 0:
        return tensor
    return torch.cat([tensor, tensor.new_zeros((tensor.shape[0], missing, *tensor.shape[2:]))], dim=1)


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A SHA-256 of a module's parameters and buffers (names, dtypes, shapes and values).

    Example:

    ```python
    >>> weights_fingerprint(torch.nn.Linear(2, 2)) == weights_fingerprint(torch.nn.Linear(2, 2))  # random weights
    False
    ```
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _digest(value: Any) -> str:
    """A SHA-256 of a JSON-serialisable value (other objects by their `str`)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _preprocessing_settings(collator: Any, modality: str) -> dict[str, Any]:
    """What turns a raw entry of `modality` into encoder inputs: the column, the sub-processor's settings (a fast
    tokenizer's pipeline and vocabulary without its call-time truncation / padding state) and the length limits."""
    processor = collator.processor
    settings: dict[str, Any] = {"column": collator.columns[modality]}
    if modality == "text":
        tokenizer = processor.tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            state = json.loads(backend.to_str())
            state.pop("truncation", None)
            state.pop("padding", None)
        else:
            state = sorted(tokenizer.get_vocab().items())
        settings.update(tokenizer=type(tokenizer).__name__, state=state, max_text_length=processor.max_text_length)
    elif modality == "image":
        settings["image_processor"] = processor.image_processor.to_dict()
    else:
        settings.update(
            feature_extractor=processor.feature_extractor.to_dict(), max_audio_seconds=collator.max_audio_seconds
        )
    return settings


def frozen_module(model: PreTrainedModel, modality: str, part: str = ENCODER) -> torch.nn.Module:
    """The module of `model` whose output a cache entry of `modality` holds: its encoder, or the encoder's feature
    encoder (`part="feature_encoder"`, the WaveNet encoder's `"speech_embedding"` stack)."""
    encoder = model.get_encoder(modality)
    if part == ENCODER:
        return encoder
    feature_encoder = feature_encoder_of(encoder)
    if part != FEATURE_ENCODER or modality not in FEATURE_ENCODER_INPUT_NAMES or feature_encoder is None:
        raise ValueError(
            f"cannot cache the {part} of the {modality} encoder: the parts are {ENCODER!r} (any frozen encoder) and "
            f"{FEATURE_ENCODER!r} (an audio encoder with a feature encoder: a WaveNet with "
            "frontend='speech_embedding')."
        )
    return feature_encoder


class FrozenEncoderCache:
    r"""
    Computes the features of frozen encoders over dataset splits once (batched, without gradients, encoder in eval
    mode), stores them on disk, and gives them to a [`MultimodalDataCollator`], which then feeds them to the model
    instead of decoding that modality; the encoder no longer runs in training, evaluation or ablations.

    [`add`] returns the split with a row column per cached modality. A modality is left uncached in a split whose rows
    the collator's augmentation changes (the training split, when `--augment` names the modality). Heads over
    sequences (`fusion_type="transformer"`) get the encoders' token features, the others pooled ones. For the
    modalities of `feature_encoder_modalities` only the frozen feature encoder's outputs are cached (frame sequences),
    and the rest of that encoder, which trains, runs on them.

    Args:
        model ([`MultimodalPreTrainedModel`]): The model; the encoders of `modalities` must be frozen (no parameter
            with `requires_grad`): a trained encoder changes its features every step.
        collator ([`MultimodalDataCollator`]): The run's collator: it decodes the inputs to encode and receives the
            features (`collator.encoder_features`).
        modalities (`Sequence[str]`): The modalities whose encoder output is cached.
        cache_dir (`str` or `os.PathLike`, *optional*): Where the features are stored; default `default_cache_dir()`.
        batch_size (`int`, *optional*, defaults to 64): Examples per encoder call while computing.
        feature_encoder_modalities (`Sequence[str]`, *optional*): Modalities whose encoder is trained but has a frozen
            feature encoder (`WaveNetModel.freeze_feature_encoder`), whose outputs are cached.

    Example:

    ```python
    >>> model.get_encoder("text").requires_grad_(False)  # doctest: +SKIP
    >>> cache = FrozenEncoderCache(model, collator, ["text"])  # doctest: +SKIP
    >>> train = cache.add(train)  # computed once, then read from disk  # doctest: +SKIP
    >>> collator([train[0], train[1]])["text_encoder_features"].shape  # doctest: +SKIP
    torch.Size([2, 384])
    ```
    """

    def __init__(
        self,
        model: PreTrainedModel,
        collator: Any,
        modalities: Sequence[str],
        cache_dir: str | os.PathLike | None = None,
        batch_size: int = 64,
        feature_encoder_modalities: Sequence[str] = (),
    ):
        both = sorted(set(modalities) & set(feature_encoder_modalities))
        if both:
            raise ValueError(f"{both} are given as frozen encoders and as frozen feature encoders: give each once.")
        self.parts = {**{m: ENCODER for m in modalities}, **{m: FEATURE_ENCODER for m in feature_encoder_modalities}}
        for modality, part in self.parts.items():
            if modality not in model.config.modalities or modality not in collator.modalities:
                raise ValueError(
                    f"cannot cache {modality} features: the model reads {list(model.config.modalities)} and the "
                    f"collator {list(collator.modalities)}."
                )
            if any(parameter.requires_grad for parameter in frozen_module(model, modality, part).parameters()):
                fix = f"--freeze_modalities {modality}" if part == ENCODER else "--freeze_feature_encoder"
                raise ValueError(
                    f"the {part} of {modality} is trained (it has parameters with requires_grad=True): its outputs "
                    f"change every step and cannot be cached. Freeze it ({fix}) or leave {modality} out of the cache "
                    "(--cache_frozen_features False)."
                )
        self.model = model
        self.collator = collator
        self.modalities = tuple(self.parts)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.batch_size = batch_size
        self.sequences = model.base_model.fusion.uses_sequences
        self.weights = {m: weights_fingerprint(frozen_module(model, m, part)) for m, part in self.parts.items()}
        self.preprocessing = {m: _digest(_preprocessing_settings(collator, m)) for m in self.modalities}
        self.computed: list[str] = []
        """Cache keys computed by this object (the others were read from disk)."""

    def stores_sequences(self, modality: str) -> bool:
        """Whether `modality`'s entries are sequences (with their mask): for a head over sequences, and always for a
        feature encoder, whose frames the rest of the encoder reads."""
        return self.sequences or self.parts[modality] == FEATURE_ENCODER

    def is_augmented(self, modality: str, dataset: datasets.Dataset) -> bool:
        """Whether the collator's augmentation changes `modality` in `dataset` (rows carrying `INDEX_COLUMN`)."""
        augmentation = self.collator.augmentation
        augmented = augmentation is not None and modality in augmentation.modalities
        return augmented and INDEX_COLUMN in dataset.column_names

    def key(self, dataset: datasets.Dataset, modality: str) -> str:
        """The cache key of `modality`'s features over `dataset`: a SHA-256 of the dataset fingerprint and length, the
        encoder's weights and config, the preprocessing settings and whether sequences are stored."""
        config = self.model.get_encoder(modality).config.to_dict()
        for name in ("_name_or_path", "transformers_version"):
            config.pop(name, None)
        parts = {
            "version": CACHE_FORMAT_VERSION,
            "dataset": dataset._fingerprint,
            "rows": len(dataset),
            "modality": modality,
            "part": self.parts[modality],
            "sequences": self.stores_sequences(modality),
            "weights": self.weights[modality],
            "config": config,
            "preprocessing": self.preprocessing[modality],
        }
        return _digest(parts)[:32]

    def add(self, dataset: datasets.Dataset) -> datasets.Dataset:
        """Load (or compute and store) the features of `dataset` for every cached modality its rows do not augment,
        append them to the collator's tables and return `dataset` with their row columns."""
        tables = self.collator.encoder_features
        for modality in self.modalities:
            if self.is_augmented(modality, dataset):
                logger.info(f"{modality} is augmented in this split: its encoder runs on every batch.")
                continue
            table = self.load_or_compute(dataset, modality)
            if table is None:  # no example has it: nothing to encode
                continue
            if modality in tables:
                offset = tables[modality].extend(table)
            else:
                offset, tables[modality] = 0, table
            dataset = with_column(dataset, FEATURE_ROW_COLUMNS[modality], list(range(offset, offset + len(table))))
        return dataset

    def load_or_compute(self, dataset: datasets.Dataset, modality: str) -> EncoderFeatureTable | None:
        """The features of `modality` over `dataset`: read from the cache when its key is there, else computed and
        written (atomically: a killed run leaves no partial file). None when no example has the modality."""
        key = self.key(dataset, modality)
        path = self.cache_dir / f"{modality}-{key}.safetensors"
        if path.is_file():
            return EncoderFeatureTable(**load_file(path), part=self.parts[modality])
        table = self.compute(dataset, modality)
        if table is None:
            return None
        self.computed.append(key)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        save_file(table.tensors(), str(partial))
        os.replace(partial, path)
        return table

    @torch.no_grad()
    def compute(self, dataset: datasets.Dataset, modality: str) -> EncoderFeatureTable | None:
        """Run the encoder (or feature encoder) of `modality` over `dataset` (eval mode, no gradients), `batch_size`
        examples at a time; examples without the modality get zeros. None when no example has it."""
        encoder = self.model.get_encoder(modality)
        was_training = encoder.training
        encoder.eval()
        decoder = dataclasses.replace(
            self.collator, modalities=[modality], label_column=None, drop_modalities=(), return_loss=False,
            augmentation=None, encoder_features={},
        )
        sequences = self.stores_sequences(modality)
        column = self.collator.columns[modality]
        values = dataset.select_columns([column])
        present = torch.tensor([not is_missing(value) for value in values[column]], dtype=torch.bool)
        encoded: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []  # rows, features, mask
        try:
            for start in range(0, len(values), self.batch_size):
                stop = min(start + self.batch_size, len(values))
                rows = torch.arange(start, stop)[present[start:stop]]
                if len(rows) == 0:
                    continue
                batch = decoder([values[int(row)] for row in rows])
                inputs = {name: batch[name].to(self.model.device) for name in INPUT_NAMES[modality] if name in batch}
                if self.parts[modality] == FEATURE_ENCODER:
                    values_name, mask_name = INPUT_NAMES[modality]
                    features, mask = encoder.compute_feature_encoder_outputs(
                        inputs[values_name], inputs.get(mask_name)
                    )
                else:
                    features, mask = self.model.base_model.encoder_features(modality, inputs, sequences=self.sequences)
                if sequences and mask is None:
                    mask = torch.ones(features.shape[:2], dtype=torch.bool)
                encoded.append((rows, features.float().cpu(), None if mask is None else mask.cpu()))
        finally:
            encoder.train(was_training)
        if not encoded:
            return None
        size = encoded[0][1].shape[-1]
        if not sequences:
            table = EncoderFeatureTable(torch.zeros(len(values), size), present)
        else:
            length = max(features.shape[1] for _, features, _ in encoded)
            table = EncoderFeatureTable(
                torch.zeros(len(values), length, size),
                present,
                torch.zeros(len(values), length, dtype=torch.bool),
                part=self.parts[modality],
            )
        for rows, features, mask in encoded:
            if mask is None:
                table.features[rows] = features
            else:
                table.features[rows, : features.shape[1]] = features
                table.mask[rows, : mask.shape[1]] = mask
        return table


class FrozenEncoderCheckCallback(TrainerCallback):
    """Refuses to train or evaluate with cached features that no longer match the model: the frozen encoders' weights
    are checked against those the cache was computed from when training starts (after a checkpoint is resumed) and
    ends (after the best model is loaded).

    Example:

    ```python
    >>> trainer.add_callback(FrozenEncoderCheckCallback(cache))  # doctest: +SKIP
    ```
    """

    def __init__(self, cache: FrozenEncoderCache):
        self.cache = cache

    def _check(self, model: PreTrainedModel | None) -> None:
        if model is None:
            return
        model = getattr(model, "module", model)  # DDP wraps it
        for modality, expected in self.cache.weights.items():
            part = self.cache.parts[modality]
            if weights_fingerprint(frozen_module(model, modality, part)) != expected:
                raise ValueError(
                    f"the frozen {part} of {modality}: its weights differ from those its cached features were "
                    "computed with (a checkpoint of another model?): start a new run, or pass "
                    "--cache_frozen_features False."
                )

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._check(model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._check(model)


def cache_frozen_features(
    trainer: Any,
    splits: Mapping[str, datasets.Dataset],
    modalities: Sequence[str],
    cache_dir: str | os.PathLike | None = None,
    feature_encoder_modalities: Sequence[str] = (),
) -> dict[str, datasets.Dataset]:
    """
    Cache the features of the frozen encoders of `modalities` (and the outputs of the frozen feature encoders of
    `feature_encoder_modalities`) over each split for `trainer` (its model and collator), the main process first (the
    others then read its files), and add a [`FrozenEncoderCheckCallback`]. Returns the splits with their row columns:
    train and evaluate on those.

    Example:

    ```python
    >>> splits = cache_frozen_features(trainer, {"train": train, "validation": validation}, ["text"])  # doctest: +SKIP
    >>> trainer.train_dataset, trainer.eval_dataset = splits["train"], splits["validation"]  # doctest: +SKIP
    ```
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    cache = FrozenEncoderCache(
        model,
        trainer.data_collator,
        modalities,
        cache_dir,
        batch_size=trainer.args.per_device_eval_batch_size,
        feature_encoder_modalities=feature_encoder_modalities,
    )
    with trainer.args.main_process_first(desc="frozen-encoder features"):
        cached = {name: cache.add(split) for name, split in splits.items()}
    parts = ", ".join(f"{m} ({part})" for m, part in cache.parts.items())
    logger.warning(
        f"Frozen-encoder features of {parts}: {len(cache.computed)} split(s) computed, "
        f"{len(splits) * len(cache.parts) - len(cache.computed)} read from {cache.cache_dir}."
    )
    trainer.add_callback(FrozenEncoderCheckCallback(cache))
    return cached


__all__ = [
    "CACHED_INPUT_NAMES",
    "FEATURE_ROW_COLUMNS",
    "EncoderFeatureTable",
    "FrozenEncoderCache",
    "FrozenEncoderCheckCallback",
    "cache_frozen_features",
    "default_cache_dir",
    "frozen_module",
    "weights_fingerprint",
    "with_column",
]
