"""Frozen-encoder feature cache: a frozen encoder whose inputs are not augmented gives the same output for an example
every epoch, so its features are computed once per dataset split, stored on disk, and fed to the model instead of
running the encoder (`{modality}_encoder_features`, see [`MultimodalModel.encoder_features`]). The same holds for the
frozen feature encoder of a trained audio encoder (the `"speech_embedding"` stack under `--freeze_feature_encoder`),
or for its frozen lower blocks when its top blocks learn (`--feature_encoder_trainable_blocks`): their outputs are
cached and the rest of the encoder runs on them (`audio_feature_encoder_outputs`, see
[`WaveNetModel.compute_feature_encoder_outputs`]). Inputs augmented from a few fixed copies
([`DataAugmentation`]'s `copies`) are cached once per copy. Encoders that learn for the first epochs only
([`FreezeEncodersCallback`], `--freeze_encoders_after_epochs`) are cached from the epoch they freeze.

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
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, Trainer, TrainerCallback
from transformers.utils import logging

from .configuration_multimodal import MODALITIES
from .data_augmentation import INDEX_COLUMN
from .media_loading import audio_duration
from .modeling_multimodal import FEATURE_ENCODER_INPUT_NAMES, FEATURE_INPUT_NAMES, INPUT_NAMES, PRESENCE_NAMES
from .modeling_wavenet import feature_encoder_of
from .processing_multimodal import is_missing


logger = logging.get_logger(__name__)

CACHE_FORMAT_VERSION = 2
"""Part of every cache key: a new layout of the cached files invalidates the old ones."""

ENCODER, FEATURE_ENCODER = "encoder", "feature_encoder"
"""What a cache entry holds of a modality's encoder: the output of the whole (frozen) encoder, or of the frozen part of
its feature encoder only (the whole stack, or its lower blocks when the top ones learn)."""

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
    Sequences are stored packed, each row up to its last real position, and padded per batch: a table holds no
    padding to its longest row.

    Args:
        features (`torch.FloatTensor`): `(rows, hidden_size)` pooled features, or the positions of every row's
            sequence one after the other, `(positions, hidden_size)` (`(positions, channels, mel bands)` for the lower
            blocks of a feature encoder); zeros for examples without pooled features.
        present (`torch.BoolTensor` of shape `(rows,)`): Whether each example has the modality.
        mask (`torch.BoolTensor` of shape `(positions,)`, *optional*): The real positions of sequences.
        offsets (`torch.LongTensor` of shape `(rows + 1,)`, *optional*): Where each row's sequence starts in
            `features`, then where the last one ends (sequences only).
        part (`str`, *optional*, defaults to `"encoder"`): Whose output `features` are: `"encoder"` (fed to the model
            as `{modality}_encoder_features`) or `"feature_encoder"` (the frozen feature encoder of an audio encoder,
            or its frozen lower blocks, fed as `audio_feature_encoder_outputs`).

    Example:

    ```python
    >>> table = EncoderFeatureTable(torch.ones(3, 4), torch.tensor([True, False, True]))
    >>> batch = table.batch("text", [2, 1])
    >>> batch["text_encoder_features"].shape, batch["has_text"].tolist()
    (torch.Size([2, 4]), [True, False])
    >>> sequences = EncoderFeatureTable.from_padded(torch.ones(2, 5, 4), torch.tensor([True, True]),
    ...                                             torch.tensor([[True] * 5, [True, True, False, False, False]]))
    >>> sequences.features.shape, sequences.batch("text", [1])["text_encoder_features"].shape
    (torch.Size([7, 4]), torch.Size([1, 2, 4]))
    ```
    """

    features: torch.Tensor
    present: torch.Tensor
    mask: torch.Tensor | None = None
    offsets: torch.Tensor | None = None
    part: str = ENCODER

    @classmethod
    def from_padded(
        cls, features: torch.Tensor, present: torch.Tensor, mask: torch.Tensor, part: str = ENCODER
    ) -> EncoderFeatureTable:
        """A table of sequences from `(rows, length, ...)` padded `features` and their `(rows, length)` `mask`, each
        row kept up to its last real position."""
        positions = torch.arange(1, mask.shape[1] + 1)
        lengths = (mask * positions).amax(dim=1) if mask.shape[1] else torch.zeros(len(mask), dtype=torch.long)
        keep = positions - 1 < lengths[:, None]
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        return cls(features[keep], present, mask[keep], offsets, part)

    @classmethod
    def absent(cls, rows: int, like: EncoderFeatureTable) -> EncoderFeatureTable:
        """A table of `rows` examples without the modality, shaped as `like` (to extend it)."""
        present = torch.zeros(rows, dtype=torch.bool)
        if like.offsets is None:
            return cls(like.features.new_zeros((rows, *like.features.shape[1:])), present, part=like.part)
        features = like.features.new_zeros((0, *like.features.shape[1:]))
        empty_mask = torch.zeros(0, dtype=torch.bool)
        return cls(features, present, empty_mask, torch.zeros(rows + 1, dtype=torch.long), like.part)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors to store (the part is in the cache key)."""
        return {
            name: value.contiguous() for name, value in dataclasses.asdict(self).items() if torch.is_tensor(value)
        }

    def __len__(self) -> int:
        return self.present.shape[0]

    def extend(self, other: EncoderFeatureTable) -> int:
        """Append the rows of `other`; returns the row of its first."""
        offset = len(self)
        if self.offsets is not None:
            self.offsets = torch.cat([self.offsets, other.offsets[1:] + self.offsets[-1]])
            self.mask = torch.cat([self.mask, other.mask])
        self.features = torch.cat([self.features, other.features])
        self.present = torch.cat([self.present, other.present])
        return offset

    def batch(self, modality: str, rows: Sequence[int]) -> dict[str, torch.Tensor]:
        """The model inputs of `rows`: the features (sequences padded to the longest among them), their mask and the
        presence flags of `modality`."""
        index = torch.as_tensor(list(rows), dtype=torch.long)
        features_name, mask_name = CACHED_INPUT_NAMES[self.part][modality]
        inputs = {PRESENCE_NAMES[modality]: self.present[index]}
        if self.offsets is None:
            return {features_name: self.features[index], **inputs}
        starts, ends = self.offsets[index].tolist(), self.offsets[index + 1].tolist()
        length = max(1, *(end - start for start, end in zip(starts, ends)))
        features = self.features.new_zeros((len(index), length, *self.features.shape[1:]))
        mask = torch.zeros(len(index), length, dtype=torch.bool)
        for position, (start, end) in enumerate(zip(starts, ends)):
            features[position, : end - start] = self.features[start:end]
            mask[position, : end - start] = self.mask[start:end]
        return {features_name: features, mask_name: mask, **inputs}


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
    """The module of `model` whose output a cache entry of `modality` holds: its encoder, or the frozen part of the
    encoder's feature encoder (`part="feature_encoder"`, the WaveNet encoder's `"speech_embedding"` stack: its lower
    blocks that do not learn; the whole stack when none is frozen)."""
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
    blocks = encoder.frontend.frozen_blocks()
    return feature_encoder[: encoder.frontend.blocks_end(blocks)] if blocks else feature_encoder


class FrozenEncoderCache:
    r"""
    Computes the features of frozen encoders over dataset splits once (batched, without gradients, encoder in eval
    mode), stores them on disk, and gives them to a [`MultimodalDataCollator`], which then feeds them to the model
    instead of decoding that modality; the encoder no longer runs in training, evaluation or ablations.

    [`add`] returns the split with a row column per cached modality. In a split whose rows the collator's augmentation
    changes (the training split, when `--augment` names the modality), a modality is cached once per augmentation copy
    when the augmentation draws from a few fixed ones (`DataAugmentation.copies`; its row column then lists a row per
    copy, and the collator reads the current epoch's), and left uncached when it draws anew every epoch. Heads over
    sequences (`fusion_type="transformer"`) get the encoders' token features, the others pooled ones. For the
    modalities of `feature_encoder_modalities` only the outputs of the feature encoder's frozen part are cached (the
    whole stack's frame sequences, or those of its frozen lower blocks when its top blocks learn), and the rest of
    that encoder, which trains, runs on them.

    Args:
        model ([`MultimodalPreTrainedModel`]): The model; the encoders of `modalities` must be frozen (no parameter
            with `requires_grad`): a trained encoder changes its features every step.
        collator ([`MultimodalDataCollator`]): The run's collator: it decodes the inputs to encode and receives the
            features (`collator.encoder_features`).
        modalities (`Sequence[str]`): The modalities whose encoder output is cached.
        cache_dir (`str` or `os.PathLike`, *optional*): Where the features are stored; default `default_cache_dir()`.
        batch_size (`int`, *optional*, defaults to 64): Examples per encoder call while computing.
        feature_encoder_modalities (`Sequence[str]`, *optional*): Modalities whose encoder is trained but has a frozen
            feature encoder, or frozen lower blocks of one (`WaveNetModel.freeze_feature_encoder`), whose outputs are
            cached.
        later (`Mapping[str, str]`, *optional*): Modalities whose encoder (`"encoder"`) or feature encoder
            (`"feature_encoder"`) learns now and is frozen later in the run ([`FreezeEncodersCallback`]): [`add`]
            gives their splits row columns already, which the collator ignores until [`compute_later`], called once
            they are frozen, computes the tables they point to (a feature encoder whose lower blocks are cached is
            continued from their outputs).

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
        later: Mapping[str, str] | None = None,
    ):
        both = sorted(set(modalities) & set(feature_encoder_modalities))
        if both:
            raise ValueError(f"{both} are given as frozen encoders and as frozen feature encoders: give each once.")
        self.parts = {**{m: ENCODER for m in modalities}, **{m: FEATURE_ENCODER for m in feature_encoder_modalities}}
        self.later = dict(later or {})
        for modality, part in self.later.items():
            if part not in CACHED_INPUT_NAMES or self.parts.get(modality, part) != part:
                raise ValueError(
                    f"{modality} cannot freeze its {part} later: the parts are {ENCODER!r} and {FEATURE_ENCODER!r}, "
                    f"and a modality cached now ({self.parts}) can only go on to freeze the rest of its stack."
                )
        for modality in {**self.parts, **self.later}:
            if modality not in model.config.modalities or modality not in collator.modalities:
                raise ValueError(
                    f"cannot cache {modality} features: the model reads {list(model.config.modalities)} and the "
                    f"collator {list(collator.modalities)}."
                )
        for modality, part in self.parts.items():
            if any(parameter.requires_grad for parameter in frozen_module(model, modality, part).parameters()):
                fix = f"--freeze_modalities {modality}" if part == ENCODER else "--freeze_feature_encoder"
                raise ValueError(
                    f"the {part} of {modality} is trained (it has parameters with requires_grad=True): its outputs "
                    f"change every step and cannot be cached. Freeze it ({fix}) or leave {modality} out of the cache "
                    "(--cache_frozen_features False)."
                )
        self.model = model
        self.collator = collator
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.batch_size = batch_size
        self.sequences = model.base_model.fusion.uses_sequences
        self.weights = {m: weights_fingerprint(frozen_module(model, m, part)) for m, part in self.parts.items()}
        self.preprocessing = {m: _digest(_preprocessing_settings(collator, m)) for m in {**self.parts, **self.later}}
        self.pending: dict[str, list[tuple[datasets.Dataset, list[int | None]]]] = {
            m: [] for m in self.later if m not in self.parts
        }
        """Per modality of `later` not cached yet, the splits (and their draws) its reserved rows stand for, in order."""
        self.frozen_later: list[str] = []
        """The modalities of `later` whose tables `compute_later` has computed."""
        self.computed: list[str] = []
        """Cache keys computed by this object."""
        self.read: list[str] = []
        """Cache keys read from disk by this object."""

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities cached (now: those frozen later join once `compute_later` has computed them)."""
        return tuple(self.parts)

    def computed_with(self, model: PreTrainedModel, modality: str) -> bool:
        """Whether the frozen part of `modality`'s encoder in `model` has the weights its features were computed
        with."""
        return weights_fingerprint(frozen_module(model, modality, self.parts[modality])) == self.weights[modality]

    def stores_sequences(self, modality: str) -> bool:
        """Whether `modality`'s entries are sequences (with their mask): for a head over sequences, and always for a
        feature encoder, whose frames the rest of the encoder reads."""
        return self.sequences or self.parts[modality] == FEATURE_ENCODER

    def is_augmented(self, modality: str, dataset: datasets.Dataset) -> bool:
        """Whether the collator's augmentation changes `modality` in `dataset` (rows carrying `INDEX_COLUMN`)."""
        augmentation = self.collator.augmentation
        augmented = augmentation is not None and modality in augmentation.modalities
        return augmented and INDEX_COLUMN in dataset.column_names

    def draws(self, modality: str, dataset: datasets.Dataset) -> list[int | None]:
        """The augmentation draws of `modality` whose features `dataset` needs: `[None]` when its rows are not
        augmented, each of the augmentation's fixed copies when it has some, none (not cached) when it draws anew
        every epoch."""
        if not self.is_augmented(modality, dataset):
            return [None]
        return list(range(self.collator.augmentation.copies or 0))

    def key(self, dataset: datasets.Dataset, modality: str, draw: int | None = None) -> str:
        """The cache key of `modality`'s features over `dataset` (augmented as `draw` of the augmentation's copies,
        or not): a SHA-256 of the dataset fingerprint and length, the encoder's weights and config, the preprocessing
        settings, whether sequences are stored, and the augmentation's settings and draw."""
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
        if draw is not None:
            settings = dataclasses.asdict(self.collator.augmentation)
            settings.pop("epoch")
            parts["augmentation"] = {**settings, "draw": draw}
        return _digest(parts)[:32]

    def add(self, dataset: datasets.Dataset) -> datasets.Dataset:
        """Load (or compute and store) the features of `dataset` for every cached modality its rows do not augment,
        append them to the collator's tables and return `dataset` with their row columns (for the modalities frozen
        `later`, the rows that [`compute_later`] fills)."""
        tables = self.collator.encoder_features
        split = dataset
        for modality in [*self.modalities, *self.pending]:
            draws = self.draws(modality, split)
            if not draws:
                logger.info(
                    f"{modality} is augmented afresh every epoch in this split: its encoder runs on every batch."
                )
                continue
            rows = []  # per draw, the table rows of the split's examples
            if modality in self.pending:  # reserved: compute_later computes them in this order
                start = sum(len(before) * len(its_draws) for before, its_draws in self.pending[modality])
                rows = [range(start + k * len(split), start + (k + 1) * len(split)) for k in range(len(draws))]
                self.pending[modality].append((split, draws))
            else:
                for draw in draws:
                    table = self.load_or_compute(split, modality, draw)
                    if table is None:  # no example has it: nothing to encode
                        break
                    if modality in tables:
                        offset = tables[modality].extend(table)
                    else:
                        offset, tables[modality] = 0, table
                    rows.append(range(offset, offset + len(table)))
            if rows:
                values = list(rows[0]) if draws == [None] else [list(copies) for copies in zip(*rows)]
                dataset = with_column(dataset, FEATURE_ROW_COLUMNS[modality], values)
        return dataset

    def compute_later(self, modalities: Sequence[str] | None = None) -> None:
        """The tables of the modalities of `later` (all, or those of `modalities`), whose encoders (or feature
        encoders) must be frozen by now: the reserved rows of every split added are computed (or read from the
        cache), and a feature encoder whose lower blocks' outputs are cached is continued from them through its
        blocks above (now frozen too), row for row. From then on the collator feeds them to the model."""
        tables = self.collator.encoder_features
        for modality in list(self.later) if modalities is None else modalities:
            if modality not in self.later:
                raise ValueError(f"compute_later: {modality} is not to be frozen later; those are {list(self.later)}.")
            part = self.later[modality]
            module = frozen_module(self.model, modality, part)
            if any(parameter.requires_grad for parameter in module.parameters()):
                raise ValueError(
                    f"compute_later: the {part} of {modality} still learns; freeze it first (FreezeEncodersCallback "
                    "does)."
                )
            del self.later[modality]
            self.frozen_later.append(modality)
            self.parts[modality], self.weights[modality] = part, weights_fingerprint(module)
            if modality not in self.pending:
                if modality in tables:
                    tables[modality] = self.continue_feature_encoder(tables[modality], modality)
                continue
            pieces: list[EncoderFeatureTable | int] = []  # a table, or the number of rows of a split without any
            for split, draws in self.pending.pop(modality):
                for draw in draws:
                    table = self.load_or_compute(split, modality, draw)
                    pieces.append(table if table is not None else len(split))
            like = next((piece for piece in pieces if not isinstance(piece, int)), None)
            if like is None:  # no example of any split has it
                continue
            tables[modality] = EncoderFeatureTable.absent(0, like)
            for piece in pieces:
                tables[modality].extend(EncoderFeatureTable.absent(piece, like) if isinstance(piece, int) else piece)

    def drop_stale(self) -> list[str]:
        """Forget the tables of the modalities frozen later whose frozen part in the model no longer has the weights
        they were computed with (the best checkpoint, loaded at the end of training, may come from before they froze):
        the collator decodes those modalities again and their encoders run on the inputs. Returns them."""
        stale = [modality for modality in self.frozen_later if not self.computed_with(self.model, modality)]
        for modality in stale:
            del self.parts[modality], self.weights[modality]
            self.collator.encoder_features.pop(modality, None)
            self.frozen_later.remove(modality)
        return stale

    @torch.no_grad()
    def continue_feature_encoder(self, table: EncoderFeatureTable, modality: str) -> EncoderFeatureTable:
        """`table`'s outputs of the lower blocks of `modality`'s feature encoder, run through the blocks above them:
        the table of the whole stack's outputs, with the same rows (in eval mode, `batch_size` rows at a time)."""
        encoder = self.model.get_encoder(modality)
        values_name, mask_name = CACHED_INPUT_NAMES[FEATURE_ENCODER][modality]
        lengths = (table.offsets[1:] - table.offsets[:-1]).tolist()
        order = sorted(table.present.nonzero().flatten().tolist(), key=lengths.__getitem__)  # similar lengths

        def encode(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            inputs = table.batch(modality, rows.tolist())
            lower, mask = inputs[values_name].to(self.model.device), inputs[mask_name].to(self.model.device)
            return encoder.frontend.top_blocks_outputs(lower), encoder.feature_encoder_frame_mask(lower, mask)

        encoded = self._encode_in_batches(encoder, order, encode)
        return assemble_table(encoded, table.present, sequences=True, part=FEATURE_ENCODER)

    def _encode_in_batches(
        self,
        encoder: torch.nn.Module,
        order: Sequence[int],
        encode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]],
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """`encode(rows)` -> `(features, mask)` over the rows of `order`, `batch_size` at a time, `encoder` in eval
        mode (its mode restored after): each batch's `(rows, features, mask)` on the CPU, for `assemble_table`."""
        was_training = encoder.training
        encoder.eval()
        encoded = []
        try:
            for start in range(0, len(order), self.batch_size):
                rows = torch.tensor(order[start : start + self.batch_size], dtype=torch.long)
                features, mask = encode(rows)
                encoded.append((rows, features.float().cpu(), None if mask is None else mask.cpu()))
        finally:
            encoder.train(was_training)
        return encoded

    def load_or_compute(
        self, dataset: datasets.Dataset, modality: str, draw: int | None = None
    ) -> EncoderFeatureTable | None:
        """The features of `modality` over `dataset` (augmented as `draw` of the augmentation's copies, or not): read
        from the cache when its key is there, else computed and written (atomically: a killed run leaves no partial
        file). None when no example has the modality."""
        key = self.key(dataset, modality, draw)
        path = self.cache_dir / f"{modality}-{key}.safetensors"
        if path.is_file():
            self.read.append(key)
            return EncoderFeatureTable(**load_file(path), part=self.parts[modality])
        table = self.compute(dataset, modality, draw)
        if table is None:
            return None
        self.computed.append(key)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        save_file(table.tensors(), str(partial))
        os.replace(partial, path)
        return table

    @torch.no_grad()
    def compute(self, dataset: datasets.Dataset, modality: str, draw: int | None = None) -> EncoderFeatureTable | None:
        """Run the encoder (or the frozen part of the feature encoder) of `modality` over `dataset` (eval mode, no
        gradients; the inputs augmented as `draw` of the augmentation's copies, or not), `batch_size` examples at a
        time; examples without the modality get zeros. None when no example has it."""
        encoder = self.model.get_encoder(modality)
        augmentation = None if draw is None else dataclasses.replace(self.collator.augmentation, epoch=draw)
        decoder = dataclasses.replace(
            self.collator, modalities=[modality], label_column=None, drop_modalities=(), return_loss=False,
            augmentation=augmentation, encoder_features={},
        )
        sequences = self.stores_sequences(modality)
        column = self.collator.columns[modality]
        values = dataset.select_columns([column] if draw is None else [column, INDEX_COLUMN])
        # one pass over the column: a `datasets` column indexed row by row costs about ten times as much a row
        has_value: list[bool] = []
        durations: list[float] = []  # of the clips, to batch those of similar lengths
        for value in values[column]:
            has_value.append(not is_missing(value))
            if modality == "audio":
                durations.append(audio_duration(value) if has_value[-1] else 0.0)
        present = torch.tensor(has_value, dtype=torch.bool)
        frozen_blocks = encoder.frontend.frozen_blocks() if self.parts[modality] == FEATURE_ENCODER else None
        order = present.nonzero().flatten().tolist()
        if modality == "audio":  # batches of clips of similar lengths, which pad little
            order.sort(key=durations.__getitem__)

        def encode(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
            batch = decoder([values[int(row)] for row in rows])
            inputs = {name: batch[name].to(self.model.device) for name in INPUT_NAMES[modality] if name in batch}
            if frozen_blocks is not None:
                values_name, mask_name = INPUT_NAMES[modality]
                features, mask = encoder.compute_feature_encoder_outputs(
                    inputs[values_name], inputs.get(mask_name), blocks=frozen_blocks
                )
            else:
                features, mask = self.model.base_model.encoder_features(modality, inputs, sequences=self.sequences)
            if sequences and mask is None:
                mask = torch.ones(features.shape[:2], dtype=torch.bool)
            return features, mask

        encoded = self._encode_in_batches(encoder, order, encode)
        if not encoded:
            return None
        return assemble_table(encoded, present, sequences, self.parts[modality])


def assemble_table(
    encoded: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
    present: torch.Tensor,
    sequences: bool,
    part: str = ENCODER,
) -> EncoderFeatureTable:
    """The table of `len(present)` rows from batches of `(rows, features, mask)` computed in any order: pooled
    `(batch, hidden)` features, or padded `(batch, length, ...)` sequences (`sequences`) each kept up to its last
    real position, in row order; rows in no batch are absent."""
    if not sequences:
        table = EncoderFeatureTable(torch.zeros(len(present), *encoded[0][1].shape[1:]), present, part=part)
        for rows, features, _ in encoded:
            table.features[rows] = features
        return table
    empty = (encoded[0][1].new_zeros((0, *encoded[0][1].shape[2:])), torch.zeros(0, dtype=torch.bool))
    pieces = [empty] * len(present)
    for rows, features, mask in encoded:
        packed = EncoderFeatureTable.from_padded(features, present[rows], mask)
        bounds = packed.offsets.tolist()
        for position, row in enumerate(rows.tolist()):
            start, end = bounds[position], bounds[position + 1]
            pieces[row] = (packed.features[start:end], packed.mask[start:end])
    lengths = torch.tensor([len(mask) for _, mask in pieces], dtype=torch.long)
    return EncoderFeatureTable(
        torch.cat([features for features, _ in pieces]),
        present,
        torch.cat([mask for _, mask in pieces]),
        torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]),
        part=part,
    )


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
        for modality, part in self.cache.parts.items():
            if not self.cache.computed_with(model, modality):
                raise ValueError(
                    f"the frozen {part} of {modality}: its weights differ from those its cached features were "
                    "computed with (a checkpoint of another model?): start a new run, or pass "
                    "--cache_frozen_features False."
                )

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._check(model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._check(model)


class FreezeEncodersCallback(TrainerCallback):
    r"""
    Lets the encoders learn for the first `epochs` epochs, then freezes them for the rest of the run: each learning
    encoder as `frozen_modalities` are (no gradient, kept in eval mode), except an audio encoder with a pretrained
    feature encoder (the WaveNet `"speech_embedding"` stack), of which only the stack freezes, its learning blocks
    (`WaveNetModel.freeze_feature_encoder`): the layers above it go on learning from what it outputs. Once frozen,
    their outputs do not change, so with the run's frozen-encoder cache (`cache`, set by [`cache_frozen_features`])
    they are computed once over every split and the remaining epochs run only what still learns: the features adapt
    early, when they gain most, and the later epochs cost what frozen-encoder training costs. Each modality may have
    its own epoch (an encoder that reads its modality early can freeze before one that learns slowly). A resumed run
    past an epoch freezes those encoders again at its first epoch. When the checkpoint loaded at the end of training
    (`load_best_model_at_end`) predates a freeze, the features cached since no longer match its encoders: they are
    dropped, and evaluation runs those encoders on the inputs. One process only: distributed data parallel training
    expects the same parameters to learn at every step.

    Args:
        trainer ([`MultimodalTrainer`]): The run's trainer, whose model's encoders freeze.
        epochs (`int` or `Mapping[str, int]`): Epochs before every learning encoder freezes (at least 1), or per
            modality (a modality left out learns to the end).

    Example:

    ```python
    >>> freeze = FreezeEncodersCallback(trainer, epochs={"image": 3, "audio": 8})  # doctest: +SKIP
    >>> splits = cache_frozen_features(trainer, splits, [], freeze=freeze)  # doctest: +SKIP
    >>> trainer.add_callback(freeze)  # doctest: +SKIP
    ```
    """

    def __init__(self, trainer: Trainer, epochs: int | Mapping[str, int]):
        if trainer.args.world_size > 1:
            raise ValueError(
                f"freezing the encoders mid-run needs one process, the run has {trainer.args.world_size}: distributed "
                "data parallel training expects the same parameters to learn at every step. Freeze them from the start "
                "(--freeze_modalities, --freeze_feature_encoder) or train in one process."
            )
        self.trainer = trainer
        self.cache: FrozenEncoderCache | None = None
        model = trainer.accelerator.unwrap_model(trainer.model)
        self.parts: dict[str, str] = {}
        """Per modality, what freezes: `"encoder"` (the whole encoder) or `"feature_encoder"` (the audio stack)."""
        read = getattr(trainer.data_collator, "modalities", model.config.modalities)  # a model may have more encoders
        for modality in (m for m in model.config.modalities if m in read):
            encoder = model.get_encoder(modality)
            stack = feature_encoder_of(encoder)
            part = FEATURE_ENCODER if stack is not None else ENCODER
            if any(parameter.requires_grad for parameter in (encoder if stack is None else stack).parameters()):
                self.parts[modality] = part
        given = dict(epochs) if isinstance(epochs, Mapping) else dict.fromkeys(self.parts, epochs)
        unknown = sorted(set(given) - set(self.parts))
        if unknown:
            raise ValueError(
                f"epochs names {unknown}, whose encoders do not learn in this run: the learning ones are "
                f"{sorted(self.parts)}."
            )
        for modality, value in given.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"epochs before the {modality} encoder freezes must be a whole number >= 1, got {value!r}."
                )
        self.epochs: dict[str, int] = given
        """Per modality, the epochs its encoder learns before it freezes; the others learn to the end."""
        self.frozen: set[str] = set()

    def on_epoch_begin(self, args, state, control, model=None, **kwargs):
        due = {
            modality: part
            for modality, part in self.parts.items()
            if modality not in self.frozen and state.epoch >= self.epochs.get(modality, math.inf)
        }
        if not due:
            return
        self.frozen.update(due)
        unwrapped = self.trainer.accelerator.unwrap_model(self.trainer.model)
        for modality, part in due.items():
            encoder = unwrapped.get_encoder(modality)
            if part == FEATURE_ENCODER:
                encoder.freeze_feature_encoder()
            else:
                encoder.requires_grad_(False)
                self.trainer.frozen_modalities += (modality,)
        if self.cache is not None:
            self.cache.compute_later(list(due))
        logger.warning(
            f"Epoch {state.epoch:g}: froze {', '.join(f'{m} ({part})' for m, part in due.items())}"
            + ("; their features are cached from now on." if self.cache is not None else ".")
        )

    def on_train_end(self, args, state, control, model=None, **kwargs):
        stale = self.cache.drop_stale() if self.cache is not None else []
        if stale:
            logger.warning(
                f"The model loaded at the end of training (its best checkpoint) predates the freezing of {stale}: "
                "their cached features are dropped, and evaluation runs those encoders on the inputs."
            )


def cache_frozen_features(
    trainer: Any,
    splits: Mapping[str, datasets.Dataset],
    modalities: Sequence[str],
    cache_dir: str | os.PathLike | None = None,
    feature_encoder_modalities: Sequence[str] = (),
    freeze: FreezeEncodersCallback | None = None,
) -> dict[str, datasets.Dataset]:
    """
    Cache the features of the frozen encoders of `modalities` (and the outputs of the frozen feature encoders of
    `feature_encoder_modalities`) over each split for `trainer` (its model and collator), the main process first (the
    others then read its files), and add a [`FrozenEncoderCheckCallback`]. Returns the splits with their row columns:
    train and evaluate on those. With the run's `freeze` callback, the encoders it freezes later get their rows too,
    and it computes their features once it has frozen them.

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
        later=None if freeze is None else freeze.parts,
    )
    if freeze is not None:
        freeze.cache = cache
    with trainer.args.main_process_first(desc="frozen-encoder features"):
        cached = {name: cache.add(split) for name, split in splits.items()}
    parts = ", ".join(f"{m} ({part})" for m, part in cache.parts.items())
    logger.warning(
        f"Frozen-encoder features of {parts}: {len(cache.computed)} table(s) computed, {len(cache.read)} read from "
        f"{cache.cache_dir} (a table per split, or per augmentation copy)."
    )
    trainer.add_callback(FrozenEncoderCheckCallback(cache))
    return cached


__all__ = [
    "CACHED_INPUT_NAMES",
    "FEATURE_ROW_COLUMNS",
    "EncoderFeatureTable",
    "FreezeEncodersCallback",
    "FrozenEncoderCache",
    "FrozenEncoderCheckCallback",
    "assemble_table",
    "cache_frozen_features",
    "default_cache_dir",
    "frozen_module",
    "weights_fingerprint",
    "with_column",
]
