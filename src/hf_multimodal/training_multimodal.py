"""Training and evaluation of multimodal classifiers with `Trainer`: arguments, on-the-fly collator, metrics through
`evaluate`, per-modality learning rates and freezing, per-modality ablation, and the whole run behind
`scripts/train.py`.

Example (the demo's run, see `scripts/demo.sh`):

```python
>>> from hf_multimodal.training_multimodal import main
>>> metrics = main([
...     "--dataset", "outputs/demo/data", "--output_dir", "outputs/demo/model",
...     "--vision_config", '{"hidden_sizes": [32, 64, 128], "depths": [1, 1, 1], "layer_type": "basic"}',
...     "--image_size", "32", "--num_train_epochs", "8",
... ])
>>> sorted(metrics["ablation"])
['without_audio', 'without_image', 'without_text']
```
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import datasets
import evaluate
import numpy as np
import torch
from torch.nn import functional as F
from transformers import (
    AutoModelForSequenceClassification,
    AutoProcessor,
    ConvNextImageProcessorPil,
    EarlyStoppingCallback,
    HfArgumentParser,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, rotate_checkpoints
from transformers.utils import logging

from .configuration_multimodal import FUSION_TYPES, MODALITIES
from .image_processing_multimodal import IMAGENET_MEAN, IMAGENET_STD
from .modelcard_multimodal import ModelCardCallback, model_card_from_output_folder
from .modeling_multimodal import MultimodalForSequenceClassification
from .pipeline_multimodal import load_audio, load_image
from .processing_multimodal import MultimodalProcessor


logger = logging.get_logger(__name__)

UNAVAILABLE_KEY = "unavailable"
"""Collator output key: `(batch_size,)` bool, True for examples that have none of the modalities the model reads."""

CHECKPOINT_STAGING_DIR = "_checkpoint-staging"
"""Folder inside the output folder where a checkpoint is written before it is renamed to `checkpoint-<step>` (its `_`
prefix keeps it out of `Trainer`'s Hub uploads)."""

FUSION_PART = "fusion"
"""Name of the parameter group of everything outside the encoders: projections, fusion head and classifier."""

METRIC_NAMES: tuple[str, ...] = ("accuracy", "precision", "recall", "f1")


# ---------------------------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ModelArguments:
    """Which model to train: a saved hf_multimodal model, or one assembled from (pretrained or random) encoders."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A saved hf_multimodal model (folder or Hub id) to fine-tune. Leave out to build one from "
                  "the encoder arguments below."},
    )
    modalities: list[str] = field(
        default_factory=lambda: list(MODALITIES),
        metadata={"help": "Modalities the model reads, any of: text image audio (one: a single-modality baseline)."},
    )
    text_model: str | None = field(
        default=None, metadata={"help": "Pretrained text encoder (folder or Hub id) whose weights are copied in."}
    )
    vision_model: str | None = field(
        default=None, metadata={"help": "Pretrained image encoder (folder or Hub id) whose weights are copied in."}
    )
    audio_model: str | None = field(
        default=None, metadata={"help": "Pretrained raw-audio encoder (folder or Hub id) whose weights are copied in."}
    )
    text_config: str | None = field(
        default=None,
        metadata={"help": "Randomly initialised text encoder: a JSON dict (may name its model_type) or a config.json "
                  "path. Default: BERT-base sized BERT. Ignored with --text_model."},
    )
    vision_config: str | None = field(
        default=None, metadata={"help": "As --text_config, for images. Default: ResNet-50 sized ResNet."}
    )
    audio_config: str | None = field(
        default=None, metadata={"help": "As --text_config, for audio. Default: WaveNetConfig()."}
    )
    backbone_ids: list[str] = field(
        default_factory=list,
        metadata={"help": "modality=hub_id pairs recorded as the model's backbones (model cards' base_model) when an "
                  "encoder was loaded from a local copy, e.g. text=sentence-transformers/all-MiniLM-L6-v2."},
    )
    fusion_type: str = field(default="gated", metadata={"help": f"One of {', '.join(FUSION_TYPES)}."})
    fusion_hidden_size: int = field(default=256, metadata={"help": "Width of the projections and the fusion head."})
    modality_dropout: float = field(
        default=0.0, metadata={"help": "Training-time probability of hiding each present modality of an example."}
    )
    freeze_modalities: list[str] = field(
        default_factory=list, metadata={"help": "Modalities whose encoder is frozen (kept in eval mode, not trained)."}
    )
    text_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the text encoder (default: --learning_rate)."}
    )
    image_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the image encoder (default: --learning_rate)."}
    )
    audio_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the audio encoder (default: --learning_rate)."}
    )
    fusion_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the projections, fusion head and classifier (default: --learning_rate)."},
    )

    def __post_init__(self):
        _check_modalities(self.modalities, "--modalities", allow_empty=False)
        _check_modalities(self.freeze_modalities, "--freeze_modalities", allow_empty=True)
        if self.fusion_type not in FUSION_TYPES:
            raise ValueError(f"--fusion_type must be one of {', '.join(FUSION_TYPES)}; got {self.fusion_type!r}.")
        for modality in MODALITIES:
            if getattr(self, f"{_ENCODER_ARG[modality]}_model") and getattr(self, f"{_ENCODER_ARG[modality]}_config"):
                raise ValueError(
                    f"--{_ENCODER_ARG[modality]}_model and --{_ENCODER_ARG[modality]}_config are both set: a "
                    "pretrained encoder brings its own config; pass one of them."
                )
        self.backbone_hub_ids()  # validates the pairs

    def learning_rates(self) -> dict[str, float | None]:
        """Learning rate per parameter group (`None`: the Trainer's `learning_rate`)."""
        return {
            "text": self.text_learning_rate,
            "image": self.image_learning_rate,
            "audio": self.audio_learning_rate,
            FUSION_PART: self.fusion_learning_rate,
        }

    def backbone_hub_ids(self) -> dict[str, str]:
        """`--backbone_ids` as `{modality: hub_id}`."""
        pairs = {}
        for item in self.backbone_ids:
            modality, _, hub_id = item.partition("=")
            if modality not in MODALITIES or not hub_id:
                raise ValueError(
                    f"--backbone_ids entry {item!r} is not modality=hub_id with modality one of {', '.join(MODALITIES)}."
                )
            pairs[modality] = hub_id
        return pairs


@dataclass
class DataArguments:
    """Which data to train on and how to read it."""

    dataset: str = field(
        metadata={"help": "A folder written by `save_to_disk` (e.g. by scripts/make_demo_dataset.py), any folder or "
                  "Hub dataset id that `datasets.load_dataset` reads."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration name of a Hub dataset."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    validation_split: str = field(
        default="validation",
        metadata={"help": "Split for model selection; when the dataset lacks it, --validation_fraction of the train "
                  "split is held out instead."},
    )
    test_split: str = field(default="test", metadata={"help": "Split of the final evaluation and the ablation."})
    validation_fraction: float = field(
        default=0.1, metadata={"help": "Share of the train split held out when there is no validation split."}
    )
    text_column: str = field(default="text", metadata={"help": "Column of the texts (None / empty: no text)."})
    image_column: str = field(default="image", metadata={"help": "Column of the images (None: no image)."})
    audio_column: str = field(default="audio", metadata={"help": "Column of the audio clips (None: no audio)."})
    label_column: str = field(default="label", metadata={"help": "Column of the labels (ClassLabel, int or str)."})
    max_text_tokens: int = field(default=64, metadata={"help": "Texts are truncated to this many tokens."})
    max_audio_seconds: float = field(default=10.0, metadata={"help": "Audio is truncated to this many seconds."})
    image_size: int | None = field(
        default=None,
        metadata={"help": "Resize images to this square size (ResNet-style normalisation). Default: the image "
                  "processor of --vision_model, or resize 256 + center crop 224."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N validation examples."})
    max_test_samples: int | None = field(default=None, metadata={"help": "Use only the first N test examples."})

    def __post_init__(self):
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"--validation_fraction must be in (0, 1), got {self.validation_fraction}.")
        if self.max_text_tokens < 2:
            raise ValueError(f"--max_text_tokens must be >= 2, got {self.max_text_tokens}.")
        if not self.max_audio_seconds > 0:
            raise ValueError(f"--max_audio_seconds must be positive, got {self.max_audio_seconds}.")
        if self.image_size is not None and self.image_size < 8:
            raise ValueError(f"--image_size must be >= 8 pixels, got {self.image_size}.")

    def columns(self) -> dict[str, str]:
        """Column name per modality."""
        return {"text": self.text_column, "image": self.image_column, "audio": self.audio_column}


def _training_default(name: str, default: Any) -> Any:
    """A field of `TrainingArguments` with another default, keeping its help text."""
    return field(default=default, metadata=TrainingArguments.__dataclass_fields__[name].metadata)


@dataclass
class MultimodalTrainingArguments(TrainingArguments):
    """`TrainingArguments` with defaults for this script (evaluate and save every epoch, keep the best model by
    validation accuracy, early stopping, raw columns kept for the collator) and the early-stopping settings."""

    eval_strategy: str = _training_default("eval_strategy", "epoch")
    save_strategy: str = _training_default("save_strategy", "epoch")
    logging_steps: float = _training_default("logging_steps", 20)
    load_best_model_at_end: bool = _training_default("load_best_model_at_end", True)
    metric_for_best_model: str | None = _training_default("metric_for_best_model", "accuracy")
    save_total_limit: int | None = _training_default("save_total_limit", 2)
    remove_unused_columns: bool = _training_default("remove_unused_columns", False)
    ddp_find_unused_parameters: bool | None = _training_default("ddp_find_unused_parameters", True)
    early_stopping_patience: int = field(
        default=3,
        metadata={"help": "Stop after this many evaluations without improvement of --metric_for_best_model (0: off)."},
    )
    early_stopping_threshold: float = field(
        default=0.0, metadata={"help": "Minimum improvement that resets the early-stopping patience."}
    )

    def __post_init__(self):
        if self.remove_unused_columns:
            raise ValueError(
                "--remove_unused_columns True would drop the raw text / image / audio columns before the collator "
                "turns them into model inputs: leave it False (the default of this script)."
            )
        if self.early_stopping_patience < 0:
            raise ValueError(f"--early_stopping_patience must be >= 0, got {self.early_stopping_patience}.")
        if self.early_stopping_patience and self.eval_strategy == "no":
            raise ValueError(
                "early stopping needs evaluations: set --eval_strategy epoch (or steps), or --early_stopping_patience 0."
            )
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available():
            # `accelerate launch --multi_gpu` (or torchrun) on a machine without GPUs: DDP over gloo on CPU. Without
            # this, every process would train alone as if it were the only one.
            self.use_cpu = True
        super().__post_init__()

    def __getstate__(self) -> dict[str, Any]:
        """Pickled state (`training_args.bin` in the output folder, every checkpoint and Hub upload) without the Hub
        token, which stays in memory only."""
        return {name: None if name.endswith("_token") else value for name, value in self.__dict__.items()}


_ENCODER_ARG = {"text": "text", "image": "vision", "audio": "audio"}


def _check_modalities(values: Sequence[str], option: str, allow_empty: bool) -> None:
    unknown = [value for value in values if value not in MODALITIES]
    if unknown or len(set(values)) != len(values) or (not values and not allow_empty):
        raise ValueError(f"{option} takes distinct modalities among {', '.join(MODALITIES)}; got {list(values)}.")


# ---------------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------------


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
            column = {m: [values[m][row] for row in rows] for m in used}
            batch.update(
                self.processor(
                    text=column.get("text"),
                    images=column.get("image"),
                    audio=column.get("audio"),
                    sampling_rate=self.processor.feature_extractor.sampling_rate if "audio" in column else None,
                )
            )
        return batch

    def _decode(self, modality: str, example: Mapping[str, Any], index: int) -> Any:
        column = self.columns[modality]
        if column not in example:
            raise KeyError(f"example {index} has no column {column!r} for {modality} (columns: {sorted(example)}).")
        value = example[column]
        if value is None:
            return None
        if modality == "text":
            if not isinstance(value, str):
                raise TypeError(
                    f"text of example {index} (column {column!r}) is a {type(value).__name__}, expected str or None: "
                    "map the column to one string per example first (e.g. join or pick a caption)."
                )
            return value if value.strip() else None
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


@dataclass
class Splits:
    """The train / validation / test datasets of a run and their label names."""

    train: datasets.Dataset
    validation: datasets.Dataset
    test: datasets.Dataset
    labels: list[str]
    label_to_id: dict[Any, int] | None


def load_splits(data_args: DataArguments, modalities: Sequence[str], seed: int) -> Splits:
    """Load the dataset, check its columns, keep image and audio columns undecoded (decoded by the collator, never
    through torchcodec), hold out a validation split when there is none, and read the label names."""
    raw = _load_dataset(data_args)
    if isinstance(raw, datasets.Dataset):
        raise ValueError(f"{data_args.dataset} holds a single Dataset: it needs named splits (a DatasetDict).")
    for name in (data_args.train_split, data_args.test_split):
        if name not in raw:
            raise ValueError(
                f"{data_args.dataset} has no split {name!r} (splits: {', '.join(raw)}): pass --train_split / "
                "--test_split."
            )
    columns = data_args.columns()
    needed = [columns[m] for m in modalities] + [data_args.label_column]
    for split in raw.values():
        missing = [column for column in needed if column not in split.column_names]
        if missing:
            raise ValueError(
                f"{data_args.dataset} has no column(s) {missing} (columns: {split.column_names}): pass "
                "--text_column / --image_column / --audio_column / --label_column, or leave that modality out of "
                "--modalities."
            )
    raw = datasets.DatasetDict({name: _undecoded(split, [columns[m] for m in ("image", "audio")]) for name, split in raw.items()})
    train = raw[data_args.train_split]
    if data_args.validation_split in raw:
        validation = raw[data_args.validation_split]
    else:
        logger.warning(
            f"{data_args.dataset} has no {data_args.validation_split!r} split: holding out "
            f"{data_args.validation_fraction:.0%} of {data_args.train_split!r} for validation."
        )
        held_out = train.train_test_split(test_size=data_args.validation_fraction, seed=seed)
        train, validation = held_out["train"], held_out["test"]
    test = raw[data_args.test_split]
    train = _first(train, data_args.max_train_samples)
    validation = _first(validation, data_args.max_eval_samples)
    test = _first(test, data_args.max_test_samples)
    labels, label_to_id = _label_names(train, data_args.label_column)
    # A model cannot learn from an example that has none of its modalities: train only on the others.
    train = _with_any_modality(train, [columns[m] for m in modalities])
    if len(train) == 0:
        raise ValueError(f"no training example has any of the modalities {list(modalities)}.")
    return Splits(train, validation, test, labels, label_to_id)


def _load_dataset(data_args: DataArguments) -> datasets.DatasetDict | datasets.Dataset:
    folder = Path(data_args.dataset)
    if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
        return datasets.load_from_disk(str(folder))
    return datasets.load_dataset(data_args.dataset, data_args.dataset_config)


def _undecoded(dataset: datasets.Dataset, columns: Sequence[str]) -> datasets.Dataset:
    """Cast `Image()` / `Audio()` columns to `decode=False`: the collator decodes them (soundfile, PIL) per batch."""
    for column in columns:
        feature = dataset.features.get(column)
        if isinstance(feature, (datasets.Image, datasets.Audio)) and feature.decode:
            dataset = dataset.cast_column(column, type(feature)(decode=False))
    return dataset


def _first(dataset: datasets.Dataset, count: int | None) -> datasets.Dataset:
    return dataset if count is None else dataset.select(range(min(count, len(dataset))))


def _label_names(train: datasets.Dataset, column: str) -> tuple[list[str], dict[Any, int] | None]:
    feature = train.features[column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names), None
    values = train[column]
    if all(isinstance(value, (int, np.integer)) and not isinstance(value, bool) for value in values):
        if min(values) < 0:
            raise ValueError(f"label column {column!r} has negative values: use class indices 0..N-1 or strings.")
        return [str(index) for index in range(max(values) + 1)], None
    if all(isinstance(value, str) for value in values):
        names = sorted(set(values))
        return names, {name: index for index, name in enumerate(names)}
    raise TypeError(f"label column {column!r} must hold class indices or strings, got {type(values[0]).__name__}.")


def _with_any_modality(dataset: datasets.Dataset, columns: Sequence[str]) -> datasets.Dataset:
    def has_any(*column_values):
        return [any(_present(value) for value in row) for row in zip(*column_values)]

    return dataset.filter(has_any, input_columns=list(columns), batched=True, keep_in_memory=True)


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------


def resnet_image_processor(size: int) -> ConvNextImageProcessorPil:
    """Square resize to `size` with ImageNet mean / std (no crop: small images such as digits keep every pixel)."""
    return ConvNextImageProcessorPil(
        size={"shortest_edge": size}, crop_pct=1.0, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
    )


def build_model_and_processor(
    model_args: ModelArguments, data_args: DataArguments, labels: Sequence[str]
) -> tuple[MultimodalForSequenceClassification, MultimodalProcessor]:
    """The model (from a saved model, or assembled with `from_backbones`) and its processor, set up for `labels`."""
    id2label = dict(enumerate(labels))
    label2id = {label: index for index, label in id2label.items()}
    if model_args.model_name_or_path is not None:
        model = AutoModelForSequenceClassification.from_pretrained(
            model_args.model_name_or_path, id2label=id2label, label2id=label2id, ignore_mismatched_sizes=True
        )
        processor = AutoProcessor.from_pretrained(model_args.model_name_or_path)
        missing = [m for m in model_args.modalities if m not in model.config.modalities]
        if missing:
            raise ValueError(
                f"{model_args.model_name_or_path} has no encoder for {missing}: its modalities are "
                f"{list(model.config.modalities)}; pass --modalities among those."
            )
        model.config.modality_dropout = model_args.modality_dropout
    else:
        sources = {}
        for modality in MODALITIES:
            prefix = _ENCODER_ARG[modality]
            if modality not in model_args.modalities:
                sources[prefix] = None
            elif getattr(model_args, f"{prefix}_model") is not None:
                sources[prefix] = getattr(model_args, f"{prefix}_model")
            else:
                sources[prefix] = _parse_config(getattr(model_args, f"{prefix}_config"), f"--{prefix}_config")
        model = MultimodalForSequenceClassification.from_backbones(
            **sources,
            fusion_type=model_args.fusion_type,
            fusion_hidden_size=model_args.fusion_hidden_size,
            modality_dropout=model_args.modality_dropout,
            id2label=id2label,
            label2id=label2id,
        )
        processor = MultimodalProcessor.from_backbones(
            text=model_args.text_model if "text" in model_args.modalities else None,
            vision=model_args.vision_model if "image" in model_args.modalities else None,
            audio=model_args.audio_model if "audio" in model_args.modalities else None,
        )
    recorded = {**(model.config.backbones or {}), **model_args.backbone_hub_ids()}
    model.config.backbones = {m: recorded[m] for m in model.config.modalities if m in recorded} or None
    processor.max_text_length = data_args.max_text_tokens
    processor.feature_extractor.max_length_seconds = data_args.max_audio_seconds
    if data_args.image_size is not None:
        processor.image_processor = resnet_image_processor(data_args.image_size)
    for modality in model_args.freeze_modalities:
        if modality in model.config.modalities:
            model.get_encoder(modality).requires_grad_(False)
    return model, processor


def _parse_config(value: str | None, option: str) -> dict:
    """A JSON dict given inline or as a file path; `{}` (the default encoder) when `value` is None."""
    if value is None:
        return {}
    text = Path(value).read_text() if not value.lstrip().startswith("{") and Path(value).is_file() else value
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{option} must be a JSON dict or the path of a JSON file, got {value!r}: {error}.") from error
    if not isinstance(parsed, dict):
        raise ValueError(f"{option} must be a JSON dict, got {type(parsed).__name__}.")
    return parsed


# ---------------------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------------------


class ClassificationMetrics(evaluate.Metric):
    """Accuracy and macro-averaged precision, recall and F1 of single-label predictions, as an `evaluate` metric
    that runs offline (`evaluate.load("accuracy")` would fetch a script from the Hub).

    Example:

    ```python
    >>> ClassificationMetrics(keep_in_memory=True).compute(predictions=[0, 1, 1], references=[0, 1, 0], num_labels=2)
    {'accuracy': 0.666..., 'precision': 0.75, 'recall': 0.75, 'f1': 0.666...}
    ```
    """

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Accuracy and macro-averaged precision, recall and F1 (scikit-learn).",
            citation="",
            inputs_description="predictions and references: class indices; num_labels: number of classes.",
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, num_labels: int | None = None) -> dict[str, float]:
        from sklearn.metrics import accuracy_score, precision_recall_fscore_support

        classes = list(range(num_labels)) if num_labels else sorted(set(references) | set(predictions))
        precision, recall, f1, _ = precision_recall_fscore_support(
            references, predictions, labels=classes, average="macro", zero_division=0
        )
        return {
            "accuracy": float(accuracy_score(references, predictions)),
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
        }


def metrics_function(num_labels: int):
    """A `compute_metrics` for `Trainer`: argmax of the logits, then [`ClassificationMetrics`]."""
    metric = ClassificationMetrics(keep_in_memory=True)

    def compute_metrics(eval_prediction) -> dict[str, float]:
        logits = eval_prediction.predictions[0] if isinstance(eval_prediction.predictions, tuple) else eval_prediction.predictions
        return metric.compute(
            predictions=np.asarray(logits).argmax(-1), references=eval_prediction.label_ids, num_labels=num_labels
        )

    return compute_metrics


# ---------------------------------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------------------------------


class MultimodalTrainer(Trainer):
    r"""
    `Trainer` with a learning rate per encoder and for the fusion part, frozen encoders kept in eval mode, and
    predictions for examples the model cannot read.

    Args:
        learning_rates (`Mapping[str, float | None]`, *optional*):
            Learning rate of the `"text"`, `"image"` and `"audio"` encoders and of the `"fusion"` part (projections,
            fusion head, classifier); missing or `None` entries use `args.learning_rate`.
        frozen_modalities (`Sequence[str]`, *optional*):
            Encoders that are not trained: their parameters must have `requires_grad=False`; they stay in eval mode
            (no dropout, frozen batch-norm statistics) while the rest trains.
        label_prior (`torch.Tensor`, *optional*):
            `(num_labels,)` class frequencies of the training set. Examples flagged `unavailable` by the collator
            (none of the model's modalities) get `log(label_prior)` as logits: the best guess without input.
            Defaults to uniform.
        Other arguments: as `Trainer`.
    """

    def __init__(
        self,
        *args,
        learning_rates: Mapping[str, float | None] | None = None,
        frozen_modalities: Sequence[str] = (),
        label_prior: torch.Tensor | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self._staging_checkpoint = False
        self.learning_rates = dict(learning_rates or {})
        self.frozen_modalities = tuple(m for m in frozen_modalities if m in self.model.config.modalities)
        num_labels = self.model.config.num_labels
        prior = label_prior if label_prior is not None else torch.full((num_labels,), 1.0 / num_labels)
        self.fallback_logits = torch.log(prior.clamp(min=1e-12)).float()

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """The optimizer of `args.optim` with one parameter group per encoder and one for the fusion part (each split
        into weight-decay and no-decay parameters as `Trainer` does)."""
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            unwrapped = self.accelerator.unwrap_model(opt_model)
            owner = {id(p): m for m in unwrapped.config.modalities for p in unwrapped.get_encoder(m).parameters()}
            decay = set(self.get_decay_parameter_names(opt_model))
            groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
            for name, parameter in opt_model.named_parameters():
                if parameter.requires_grad:
                    groups.setdefault((owner.get(id(parameter), FUSION_PART), name in decay), []).append(parameter)
            param_groups = [
                {
                    "params": parameters,
                    "weight_decay": self.args.weight_decay if decays else 0.0,
                    "lr": self.learning_rates.get(part) or self.args.learning_rate,
                }
                for (part, decays), parameters in groups.items()
            ]
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return super().create_optimizer(model)

    def _get_output_dir(self, trial) -> str:
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, CHECKPOINT_STAGING_DIR) if self._staging_checkpoint else run_dir

    def _save_checkpoint(self, model, trial) -> None:
        """`Trainer._save_checkpoint`, made atomic: the checkpoint (weights, optimizer, scheduler, RNG states, trainer
        state) is written into `_checkpoint-staging/checkpoint-<step>` and renamed to `checkpoint-<step>` only once
        every process has written its part. A run killed while saving leaves the previous checkpoints as they were,
        and `get_last_checkpoint` never sees a partial one."""
        run_dir = Path(super()._get_output_dir(trial))
        staging_root = run_dir / CHECKPOINT_STAGING_DIR
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            shutil.rmtree(staging_root, ignore_errors=True)  # left over by a run killed while saving
        self.accelerator.wait_for_everyone()
        self._staging_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_checkpoint = False
        self.accelerator.wait_for_everyone()
        best = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.best_global_step}"
        if self.state.best_global_step and (best.is_dir() or self.state.best_global_step == self.state.global_step):
            self.state.best_model_checkpoint = str(best)
        if self.args.should_save:
            staged, final = staging_root / name, run_dir / name
            self.state.save_to_json(str(staged / "trainer_state.json"))  # with the final path of the best checkpoint
            if final.exists():  # the same step saved again: replace it whole
                shutil.rmtree(final)
            os.replace(staged, final)
            shutil.rmtree(staging_root, ignore_errors=True)
            rotate_checkpoints(str(run_dir), self.args.save_total_limit, self.state.best_model_checkpoint)
            if self.args.push_to_hub:
                super()._push_from_checkpoint(str(final))
        self.accelerator.wait_for_everyone()

    def create_model_card(self, *args, **kwargs) -> None:
        """Keeps the card of this package in `output_dir/README.md` (written by [`ModelCardCallback`] during training
        and with the test results by [`train_and_evaluate`]) instead of transformers' generic one."""

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        if not self._staging_checkpoint:  # while staging, the push waits for the renamed folder (above)
            super()._push_from_checkpoint(checkpoint_folder)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        unavailable = inputs.pop(UNAVAILABLE_KEY, None)
        if unavailable is not None and bool(unavailable.any()):
            raise ValueError(
                "a training batch holds examples with none of the model's modalities: drop them from the training "
                "set (train_and_evaluate does) or add a modality they have."
            )
        if model.training:
            unwrapped = self.accelerator.unwrap_model(model)
            for modality in self.frozen_modalities:
                unwrapped.get_encoder(modality).eval()
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """`Trainer.prediction_step`, where examples flagged `unavailable` get the label-prior logits and the loss is
        the cross-entropy over the whole batch."""
        unavailable = inputs.pop(UNAVAILABLE_KEY, None)
        if unavailable is None:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        labels = inputs.pop("labels")
        logits = self.fallback_logits.to(labels.device).expand(len(labels), -1).clone()
        keep = ~unavailable.to(labels.device)
        if bool(keep.any()):  # the collator gave model inputs for the kept rows only
            _, kept_logits, _ = super().prediction_step(
                model, {**inputs, "labels": labels[keep]}, False, ignore_keys=ignore_keys
            )
            logits[keep] = kept_logits.to(labels.device, logits.dtype)
        loss = F.cross_entropy(logits, labels)
        return (loss, None, None) if prediction_loss_only else (loss, logits, labels)


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation outputs
# ---------------------------------------------------------------------------------------------------------------------


def evaluate_split(trainer: Trainer, dataset: datasets.Dataset, collator: MultimodalDataCollator, prefix: str):
    """Predict `dataset` with `collator`; returns `(metrics, predictions, label_ids)`, metrics without prefix and with
    `num_examples`."""
    trainer.data_collator = collator
    output = trainer.predict(dataset, metric_key_prefix=prefix)
    metrics = {name: float(output.metrics[f"{prefix}_{name}"]) for name in METRIC_NAMES}
    metrics["num_examples"] = len(dataset)
    return metrics, np.asarray(output.predictions).argmax(-1), np.asarray(output.label_ids)


def save_confusion_matrix(labels: np.ndarray, predictions: np.ndarray, names: Sequence[str], path: str | os.PathLike):
    """Write the confusion matrix (rows: true labels, columns: predictions) as a PNG; returns it as a list of lists."""
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix

    matrix = confusion_matrix(labels, predictions, labels=list(range(len(names))))
    size = max(4.0, 0.5 * len(names) + 2)
    figure = Figure(figsize=(size, size))
    axes = figure.subplots()
    ConfusionMatrixDisplay(matrix, display_labels=list(names)).plot(ax=axes, cmap="Blues", colorbar=False)
    accuracy = np.trace(matrix) / max(1, matrix.sum())
    axes.set_title(f"Test confusion matrix (accuracy {accuracy:.3f})")
    if len(names) > 6:
        axes.tick_params(axis="x", labelrotation=45)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return matrix.tolist()


def format_results_table(results: Mapping[str, Any]) -> str:
    """A Markdown table of the test metrics and the per-modality ablation of a `metrics.json` dict."""
    rows = [("all modalities", results["test"])]
    rows += [(name.replace("_", " "), values) for name, values in results["ablation"].items()]
    modalities = results["modalities"]
    model = f"{results['fusion_type']} fusion of {', '.join(modalities)}" if len(modalities) > 1 else f"{modalities[0]} only"
    lines = [
        f"Test results: {model} ({results['test']['num_examples']} examples)",
        "",
        "| evaluation | accuracy | precision | recall | macro F1 |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {name} | " + " | ".join(f"{values[m]:.3f}" for m in METRIC_NAMES) + " |" for name, values in rows]
    return "\n".join(lines)


def compare_runs(folders: Sequence[str | os.PathLike]) -> str:
    """A Markdown table comparing the `metrics.json` of several output folders (one row per run, ablations as
    columns), e.g. for the README's results.

    Example:

    ```python
    >>> print(compare_runs(["outputs/results/gated", "outputs/results/only_text"]))
    ```
    """
    lines = [
        "| run | modalities | fusion | test accuracy | test macro F1 | accuracy without text | without image | "
        "without audio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for folder in folders:
        results = json.loads((Path(folder) / "metrics.json").read_text())
        modalities = results["modalities"]
        ablation = [
            f"{results['ablation'][f'without_{m}']['accuracy']:.3f}" if m in modalities and len(modalities) > 1 else "-"
            for m in MODALITIES
        ]
        fusion = results["fusion_type"] if len(modalities) > 1 else "-"
        lines.append(
            f"| {Path(folder).name} | {' + '.join(modalities)} | {fusion} | {results['test']['accuracy']:.3f} | "
            f"{results['test']['f1']:.3f} | " + " | ".join(ablation) + " |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------------


def build_trainer(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: MultimodalTrainingArguments,
    callbacks: Sequence[TrainerCallback] = (),
) -> tuple[MultimodalTrainer, Splits]:
    """
    The run's `MultimodalTrainer` (model, processor, on-the-fly collator, metrics, model card and early-stopping
    callbacks, per-modality learning rates and freezing) and the dataset splits it trains and evaluates on.

    Example:

    ```python
    >>> trainer, splits = build_trainer(*parse_arguments(["--dataset", "outputs/demo/data", "--output_dir", "out"]))
    >>> trainer.train()  # doctest: +SKIP
    ```
    """
    set_seed(training_args.seed)
    splits = load_splits(data_args, model_args.modalities, training_args.seed)
    model, processor = build_model_and_processor(model_args, data_args, splits.labels)
    collator = MultimodalDataCollator(
        processor,
        modalities=model.config.modalities,
        columns=data_args.columns(),
        label_column=data_args.label_column,
        label_to_id=splits.label_to_id,
        max_audio_seconds=data_args.max_audio_seconds,
    )
    all_callbacks = [*callbacks, ModelCardCallback(dataset=data_args.dataset, base_model=model_args.backbone_hub_ids())]
    if training_args.early_stopping_patience:
        all_callbacks.append(
            EarlyStoppingCallback(training_args.early_stopping_patience, training_args.early_stopping_threshold)
        )
    trainer = MultimodalTrainer(
        model=model,
        args=training_args,
        train_dataset=splits.train,
        eval_dataset=splits.validation,
        data_collator=collator,
        processing_class=processor,
        compute_metrics=metrics_function(len(splits.labels)),
        callbacks=all_callbacks,
        learning_rates=model_args.learning_rates(),
        frozen_modalities=model_args.freeze_modalities,
        label_prior=_label_prior(splits, data_args.label_column),
    )
    return trainer, splits


def train_and_evaluate(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: MultimodalTrainingArguments,
    callbacks: Sequence[TrainerCallback] = (),
) -> dict[str, Any]:
    """
    Train, keep the best checkpoint, save model + processor into `training_args.output_dir`, evaluate on the test
    split with every modality and with each one removed, and write `metrics.json` and `confusion_matrix.png` there.

    Returns the `metrics.json` dict: `dataset`, `test` and `ablation` (`without_text` / `without_image` /
    `without_audio`, each with accuracy, macro precision / recall / F1 and `num_examples`), `hyperparameters`,
    `modalities`, `fusion_type`, `labels` and `confusion_matrix`.
    """
    output_dir = Path(training_args.output_dir)
    resume = _resolve_resume(training_args.resume_from_checkpoint, output_dir)
    trainer, splits = build_trainer(model_args, data_args, training_args, callbacks)
    model, processor, collator = trainer.model, trainer.processing_class, trainer.data_collator
    started = time.perf_counter()
    train_result = trainer.train(resume_from_checkpoint=resume)
    train_seconds = time.perf_counter() - started
    # the best model (load_best_model_at_end) + processor, safetensors; pushed below, once the results are in
    trainer.save_model(str(output_dir), _internal_call=True)
    trainer.save_state()

    test_metrics, predictions, label_ids = evaluate_split(trainer, splits.test, collator, "test")
    ablation = {}
    for modality in MODALITIES:
        ablation[f"without_{modality}"], _, _ = evaluate_split(
            trainer, splits.test, replace(collator, drop_modalities=(modality,)), f"test_without_{modality}"
        )
    trainer.data_collator = collator
    results = {
        "dataset": data_args.dataset,
        "test": test_metrics,
        "ablation": ablation,
        "hyperparameters": _hyperparameters(model_args, data_args, training_args, trainer, train_result, train_seconds),
        "modalities": list(model.config.modalities),
        "fusion_type": model.config.fusion_type,
        "labels": list(splits.labels),
    }
    if trainer.is_world_process_zero():
        results["confusion_matrix"] = save_confusion_matrix(
            label_ids, predictions, splits.labels, output_dir / "confusion_matrix.png"
        )
        (output_dir / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
        card = model_card_from_output_folder(
            output_dir, repo_id=training_args.hub_model_id, base_model=model_args.backbone_hub_ids(), processor=processor
        )
        card.save(output_dir / "README.md")
        print(format_results_table(results), flush=True)
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="End of training: best model, processor, test results and model card")
    return results


def _resolve_resume(value: str | None, output_dir: Path) -> str | None:
    """`--resume_from_checkpoint`: a checkpoint folder, or `last` for the newest one in the output folder. Without it,
    an output folder that already holds checkpoints is refused rather than overwritten."""
    last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    if value is None:
        if last is not None:
            raise ValueError(
                f"{output_dir} already holds checkpoints ({Path(last).name}): pass --resume_from_checkpoint last to "
                "continue that run, or choose another --output_dir."
            )
        return None
    if value.lower() in ("last", "latest", "true"):
        if last is None:
            raise ValueError(f"--resume_from_checkpoint {value}: {output_dir} holds no checkpoint-* folder to resume.")
        return last
    if not Path(value).is_dir():
        raise ValueError(f"--resume_from_checkpoint {value!r} is not a folder: pass a checkpoint folder or 'last'.")
    return value


def _label_prior(splits: Splits, column: str) -> torch.Tensor:
    values = splits.train[column]
    ids = [splits.label_to_id[value] for value in values] if splits.label_to_id else [int(value) for value in values]
    counts = torch.bincount(torch.tensor(ids), minlength=len(splits.labels)).double()
    return (counts / counts.sum()).float()


def _hyperparameters(model_args, data_args, training_args, trainer, train_result, train_seconds) -> dict[str, Any]:
    args = training_args
    world_size = max(1, args.world_size)
    return {
        **asdict(model_args),
        "backbones": trainer.model.config.backbones,
        "learning_rate": args.learning_rate,
        "weight_decay": args.weight_decay,
        "warmup_steps": args.warmup_steps,
        "lr_scheduler_type": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        "optimizer": str(getattr(args.optim, "value", args.optim)),
        "num_train_epochs": args.num_train_epochs,
        "max_steps": args.max_steps,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "total_train_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size,
        "num_processes": world_size,
        "seed": args.seed,
        "data_seed": args.data_seed,
        "early_stopping_patience": args.early_stopping_patience,
        "metric_for_best_model": args.metric_for_best_model,
        "best_checkpoint": Path(trainer.state.best_model_checkpoint).name if trainer.state.best_model_checkpoint else None,
        "global_steps": trainer.state.global_step,
        "epochs_trained": round(float(trainer.state.epoch or 0.0), 3),
        "train_loss": round(float(train_result.training_loss), 5),
        "train_seconds": round(train_seconds, 1),
        **{f.name: getattr(data_args, f.name) for f in fields(data_args) if f.name != "dataset"},
    }


def parse_arguments(argv: Sequence[str] | None = None):
    """Parse `argv` (default: `sys.argv[1:]`; a single `.json` file of all arguments also works) into
    `(ModelArguments, DataArguments, MultimodalTrainingArguments)`."""
    parser = HfArgumentParser((ModelArguments, DataArguments, MultimodalTrainingArguments))
    if argv is not None and len(argv) == 1 and str(argv[0]).endswith(".json"):
        return parser.parse_json_file(json_file=os.path.abspath(argv[0]))
    return parser.parse_args_into_dataclasses(args=list(argv) if argv is not None else None, look_for_args_file=False)


def main(argv: Sequence[str] | None = None, callbacks: Sequence[TrainerCallback] = ()) -> dict[str, Any]:
    """Entry point of `scripts/train.py`: parse the arguments, train, evaluate, ablate; returns the metrics dict.
    Runs unchanged under `accelerate launch` (one process per device; DDP over gloo on CPU)."""
    model_args, data_args, training_args = parse_arguments(argv)
    return train_and_evaluate(model_args, data_args, training_args, callbacks=callbacks)


__all__ = [
    "ClassificationMetrics",
    "DataArguments",
    "ModelArguments",
    "MultimodalDataCollator",
    "MultimodalTrainer",
    "MultimodalTrainingArguments",
    "build_model_and_processor",
    "build_trainer",
    "compare_runs",
    "format_results_table",
    "load_splits",
    "main",
    "metrics_function",
    "parse_arguments",
    "save_confusion_matrix",
    "train_and_evaluate",
]
