"""The training data collator: raw dataset rows (text, encoded image and audio files, labels) to model batches,
decoded batch by batch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .configuration_multimodal import MODALITIES, PROBLEM_TYPES
from .data_augmentation import INDEX_COLUMN, DataAugmentation
from .feature_cache import FEATURE_ROW_COLUMNS, EncoderFeatureTable
from .media_loading import load_audio, load_image
from .processing_multimodal import MODALITY_ARGUMENTS, MultimodalProcessor, check_text, padding_kwargs


UNAVAILABLE_KEY = "unavailable"
"""Collator output key: `(batch_size,)` bool, True for examples that have none of the modalities the model reads."""


def _expand_rows(tensor: torch.Tensor, positions: Sequence[int], size: int) -> torch.Tensor:
    """`tensor`, whose rows are those at `positions` of a batch of `size`, as the whole batch (zero rows elsewhere)."""
    if len(positions) == size:
        return tensor
    expanded = tensor.new_zeros((size, *tensor.shape[1:]))
    expanded[torch.as_tensor(positions, dtype=torch.long)] = tensor
    return expanded


@dataclass
class MultimodalDataCollator:
    r"""
    Turns raw dataset rows into a model batch: decodes images and audio lazily (PIL / soundfile, never the whole set
    in memory), resamples audio to the feature extractor's rate and runs the processor.

    A missing entry (`None`, or empty text) marks an example without that modality. Examples that have none of the
    modalities the model reads get no model inputs (the other rows are processed); they are flagged in
    `batch["unavailable"]` (present only then), which [`MultimodalTrainer`] answers with the training label prior.
    `batch["labels"]` always holds every example.

    Args:
        processor ([`MultimodalProcessor`]): The processor of the model.
        modalities (`Sequence[str]`): The modalities the model reads.
        columns (`Mapping[str, str]`): Dataset column per modality.
        label_column (`str`, *optional*, defaults to `"label"`): Column of the labels; `None` for unlabelled data.
        label_to_id (`Mapping`, *optional*): Maps label values (e.g. strings) to class indices.
        problem_type (`str`, *optional*, defaults to `"single_label_classification"`): How labels are read:
            `"single_label_classification"` (a class per example: `labels` are int64 indices),
            `"multi_label_classification"` (a list of classes per example, as indices or names, or a multi-hot list
            of floats or bools: `labels` are `(batch_size, num_labels)` float multi-hot rows) or `"regression"` (a
            number per example: `labels` are floats).
        num_labels (`int`, *optional*): The number of classes; needed for multi-label lists of classes.
        max_audio_seconds (`float`, *optional*): Audio is cut to this many seconds (only its start is decoded).
        drop_modalities (`Sequence[str]`, *optional*): Modalities hidden from the model (per-modality ablation).
        return_loss (`bool`, *optional*): Add `return_loss=True` to every batch: the contrastive objective of an
            unlabelled `MultimodalModel` (as `CLIPModel` is trained with `Trainer`).
        augmentation ([`DataAugmentation`], *optional*): Augments the decoded examples that carry an
            `augmentation_index` (added to the training split only, so evaluation batches are never augmented).
        encoder_features (`dict[str, EncoderFeatureTable]`, *optional*): Precomputed features of frozen encoders
            per modality (filled by [`FrozenEncoderCache`]): a batch whose examples all carry that modality's row
            column (`feature_cache.FEATURE_ROW_COLUMNS`; a row, or a row per augmentation copy, of which the
            current epoch's is read) gets `{modality}_encoder_features` instead of decoded inputs.
        pad_to_multiple_of (`Mapping[str, int]`, *optional*): Pad each batch's text to a multiple of
            `pad_to_multiple_of["text"]` tokens and its audio to a multiple of `pad_to_multiple_of["audio"]` samples
            (instead of the longest example's length): a bounded set of shapes, so that a `torch.compile`d model
            compiles a bounded number of graphs (see `processing_multimodal.bucket_multiples`).

    Example:

    ```python
    >>> collator = MultimodalDataCollator(processor, modalities=("text", "audio"), columns={"text": "text", "audio": "audio"})
    >>> batch = collator([{"text": "seven", "audio": None, "label": 7}, {"text": None, "audio": wav_bytes, "label": 3}])
    >>> batch["has_text"].tolist(), batch["labels"].tolist()
    ([True, False], [7, 3])
    ```
    """

    processor: MultimodalProcessor
    modalities: Sequence[str]
    columns: Mapping[str, str] = field(default_factory=lambda: {m: m for m in MODALITIES})
    label_column: str | None = "label"
    label_to_id: Mapping[Any, int] | None = None
    problem_type: str = "single_label_classification"
    num_labels: int | None = None
    max_audio_seconds: float | None = None
    drop_modalities: Sequence[str] = ()
    return_loss: bool = False
    augmentation: DataAugmentation | None = None
    encoder_features: dict[str, EncoderFeatureTable] = field(default_factory=dict)
    pad_to_multiple_of: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self):
        if self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"problem_type must be one of {', '.join(PROBLEM_TYPES)}; got {self.problem_type!r}.")
        padding_kwargs(self.pad_to_multiple_of, ())  # validates it

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        used = [m for m in self.modalities if m not in self.drop_modalities]
        cached = [
            m for m in used
            if m in self.encoder_features and all(FEATURE_ROW_COLUMNS[m] in example for example in examples)
        ]
        feature_rows = {
            m: [self._feature_row(example[FEATURE_ROW_COLUMNS[m]]) for example in examples] for m in cached
        }
        decoded = [m for m in used if m not in cached]
        values = {m: [self._decode(m, example, index) for index, example in enumerate(examples)] for m in decoded}
        for m in cached:  # the row of a cached example stands for its value; None where it lacks the modality
            values[m] = [row if self.encoder_features[m].present[row] else None for row in feature_rows[m]]
        rows = [row for row in range(len(examples)) if any(values[m][row] is not None for m in used)]
        # Labels first: Trainer takes the batch size from the first tensor, and it must count every example.
        batch: dict[str, torch.Tensor] = {}
        if self.label_column is not None:
            batch["labels"] = self.labels_tensor([example.get(self.label_column) for example in examples])
        if len(rows) < len(examples):
            batch[UNAVAILABLE_KEY] = torch.ones(len(examples), dtype=torch.bool).index_fill_(0, torch.tensor(rows, dtype=torch.long), False)
        if rows:
            # Examples whose only modalities are cached have nothing for the processor: it runs on the others, and
            # their rows get placeholders marked absent.
            processed = [
                position for position, row in enumerate(rows) if any(values[m][row] is not None for m in decoded)
            ]
            arguments = {MODALITY_ARGUMENTS[m]: [values[m][rows[position]] for position in processed] for m in decoded}
            if "audio" in decoded:
                arguments["sampling_rate"] = self.processor.feature_extractor.sampling_rate
            if processed:
                inputs = self.processor(**arguments, **padding_kwargs(self.pad_to_multiple_of, decoded))
                batch.update({name: _expand_rows(value, processed, len(rows)) for name, value in inputs.items()})
            for m in cached:
                batch.update(self.encoder_features[m].batch(m, [feature_rows[m][row] for row in rows]))
        if self.return_loss:
            batch["return_loss"] = True
        return batch

    def _feature_row(self, row: int | Sequence[int]) -> int:
        """An example's row in a cached table: the row itself, or for a training example cached once per augmentation
        copy (a row per copy), the current epoch's copy."""
        if isinstance(row, (int, np.integer)):
            return int(row)
        if self.augmentation is None or self.augmentation.copies != len(row):
            copies = None if self.augmentation is None else self.augmentation.copies
            raise ValueError(
                f"an example's cached features list {len(row)} augmentation copies but the collator's augmentation "
                f"has copies={copies}: cache the split with the collator's own augmentation (FrozenEncoderCache)."
            )
        return row[self.augmentation.draw]

    def _decode(self, modality: str, example: Mapping[str, Any], index: int) -> Any:
        value = self._decode_value(modality, example, index)
        if value is None or self.augmentation is None or INDEX_COLUMN not in example:
            return value
        rate = self.processor.feature_extractor.sampling_rate if modality == "audio" else None
        return self.augmentation(modality, value, example[INDEX_COLUMN], sampling_rate=rate)

    def _decode_value(self, modality: str, example: Mapping[str, Any], index: int) -> Any:
        column = self.columns[modality]
        if column not in example:
            raise KeyError(f"example {index} has no column {column!r} for {modality} (columns: {sorted(example)}).")
        value = example[column]
        if value is None:
            return None
        if modality == "text":
            try:
                return check_text(value, index)
            except TypeError as error:
                raise TypeError(
                    f"{error} (column {column!r}): map the column to one string per example first (e.g. join or pick "
                    "a caption)."
                ) from None
        if modality == "image":
            return load_image(value)
        rate = self.processor.feature_extractor.sampling_rate
        waveform = load_audio(value, target_sampling_rate=rate, max_seconds=self.max_audio_seconds)
        if self.max_audio_seconds is not None:
            waveform = waveform[: max(1, int(self.max_audio_seconds * rate))]
        return waveform

    def labels_tensor(self, values: Sequence[Any]) -> torch.Tensor:
        """The `labels` tensor of a batch's label values, as `problem_type` reads them: int64 class indices, float
        multi-hot rows or float targets.

        Example:

        ```python
        >>> collator = MultimodalDataCollator(processor, ["text"], problem_type="multi_label_classification", num_labels=3)
        >>> collator.labels_tensor([[0, 2], [], [0.0, 1.0, 0.0]]).tolist()
        [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
        ```
        """
        for index, value in enumerate(values):
            if value is None:
                raise ValueError(f"example {index} has no label in column {self.label_column!r}.")
        if self.problem_type == "regression":
            return torch.tensor([float(value) for value in values], dtype=torch.float32)
        if self.problem_type == "multi_label_classification":
            return torch.stack([self._multi_hot(value, index) for index, value in enumerate(values)])
        return torch.tensor([self._class_index(value, index) for index, value in enumerate(values)], dtype=torch.long)

    def _class_index(self, value: Any, index: int) -> int:
        if self.label_to_id is not None:
            if value not in self.label_to_id:
                raise ValueError(f"example {index} has label {value!r}, not among the training labels.")
            return self.label_to_id[value]
        return int(value)

    def _multi_hot(self, value: Any, index: int) -> torch.Tensor:
        """A multi-label value as a float multi-hot row: a multi-hot list of floats or bools as it is, a list of
        classes (indices or names) marked in a row of `num_labels` zeros."""
        if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
            raise TypeError(
                f"example {index} has multi-label label {value!r}: give a list of classes or a multi-hot list."
            )
        values = list(value)
        if values and all(isinstance(item, (float, bool, np.floating, np.bool_)) for item in values):
            if self.num_labels is not None and len(values) != self.num_labels:
                raise ValueError(f"example {index} has a multi-hot label of {len(values)} values, not {self.num_labels}.")
            return torch.tensor([float(item) for item in values], dtype=torch.float32)
        if self.num_labels is None:
            raise ValueError("a multi-label list of classes needs num_labels: pass it to the collator.")
        row = torch.zeros(self.num_labels, dtype=torch.float32)
        for item in values:
            class_index = self._class_index(item, index)
            if not 0 <= class_index < self.num_labels:
                raise ValueError(f"example {index} has class {item!r}, outside 0..{self.num_labels - 1}.")
            row[class_index] = 1.0
        return row


__all__ = ["UNAVAILABLE_KEY", "MultimodalDataCollator"]
