"""The training data collator: raw dataset rows (text, encoded image and audio files, labels) to model batches,
decoded batch by batch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .configuration_multimodal import MODALITIES
from .media_loading import load_audio, load_image
from .processing_multimodal import MODALITY_ARGUMENTS, MultimodalProcessor, check_text


UNAVAILABLE_KEY = "unavailable"
"""Collator output key: `(batch_size,)` bool, True for examples that have none of the modalities the model reads."""


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
        max_audio_seconds (`float`, *optional*): Audio is cut to this many seconds (only its start is decoded).
        drop_modalities (`Sequence[str]`, *optional*): Modalities hidden from the model (per-modality ablation).
        return_loss (`bool`, *optional*): Add `return_loss=True` to every batch: the contrastive objective of an
            unlabelled `MultimodalModel` (as `CLIPModel` is trained with `Trainer`).

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
    max_audio_seconds: float | None = None
    drop_modalities: Sequence[str] = ()
    return_loss: bool = False

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        used = [m for m in self.modalities if m not in self.drop_modalities]
        values = {m: [self._decode(m, example, index) for index, example in enumerate(examples)] for m in used}
        rows = [row for row in range(len(examples)) if any(values[m][row] is not None for m in used)]
        # Labels first: Trainer takes the batch size from the first tensor, and it must count every example.
        batch: dict[str, torch.Tensor] = {}
        if self.label_column is not None:
            batch["labels"] = torch.tensor([self._label(example, index) for index, example in enumerate(examples)])
        if len(rows) < len(examples):
            batch[UNAVAILABLE_KEY] = torch.ones(len(examples), dtype=torch.bool).index_fill_(0, torch.tensor(rows, dtype=torch.long), False)
        if rows:
            arguments = {MODALITY_ARGUMENTS[m]: [values[m][row] for row in rows] for m in used}
            if "audio" in used:
                arguments["sampling_rate"] = self.processor.feature_extractor.sampling_rate
            batch.update(self.processor(**arguments))
        if self.return_loss:
            batch["return_loss"] = True
        return batch

    def _decode(self, modality: str, example: Mapping[str, Any], index: int) -> Any:
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

    def _label(self, example: Mapping[str, Any], index: int) -> int:
        value = example.get(self.label_column)
        if value is None:
            raise ValueError(f"example {index} has no label in column {self.label_column!r}.")
        if self.label_to_id is not None:
            if value not in self.label_to_id:
                raise ValueError(f"example {index} has label {value!r}, not among the training labels.")
            return self.label_to_id[value]
        return int(value)


__all__ = ["UNAVAILABLE_KEY", "MultimodalDataCollator"]
