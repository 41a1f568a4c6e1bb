#!/usr/bin/env python
"""Train, evaluate and ablate a text + image + audio classifier with `Trainer` (README: "Training").

    python scripts/train.py --dataset outputs/demo/data --output_dir outputs/demo/model [--help for every option]
    accelerate launch --config_file scripts/accelerate/cpu_2proc.yaml scripts/train.py ...   # same script, DDP

Writes the best model + processor + pipeline code (safetensors), metrics.json (test metrics and per-modality
ablation), confusion_matrix.png and the model card into --output_dir and prints the results table. As transformers'
`run_glue.py`, this script holds the command line, the data loading and the run; the model, processor, collator,
trainer, metrics and model card it assembles come from the `hf_multimodal` package (`pip install hf_multimodal[train]`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoProcessor,
    ConvNextImageProcessorPil,
    EarlyStoppingCallback,
    HfArgumentParser,
    TrainerCallback,
    pipeline,
    set_seed,
)
from transformers.utils import logging

from hf_multimodal import (
    FUSION_TYPES,
    MODALITIES,
    PIPELINE_TASK,
    MultimodalForSequenceClassification,
    MultimodalProcessor,
)
from hf_multimodal.data_collator import MultimodalDataCollator
from hf_multimodal.image_processing_multimodal import IMAGENET_MEAN, IMAGENET_STD
from hf_multimodal.metrics import METRIC_NAMES, metrics_function
from hf_multimodal.model_card import (
    ModelCardCallback,
    hyperparameters_from_args,
    model_card_from_output_folder,
    parse_backbones,
)
from hf_multimodal.processing_multimodal import is_missing
from hf_multimodal.trainer import FUSION_PART, MultimodalTrainer, last_complete_checkpoint, remove_incomplete_checkpoints
from hf_multimodal.training_args import MultimodalTrainingArguments


logger = logging.get_logger(__name__)


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
    image_model: str | None = field(
        default=None,
        metadata={"help": "Pretrained image encoder (folder or Hub id) whose weights are copied in.",
                  "aliases": ["--vision_model"]},  # its name before hf_multimodal 0.2
    )
    audio_model: str | None = field(
        default=None, metadata={"help": "Pretrained raw-audio encoder (folder or Hub id) whose weights are copied in."}
    )
    text_config: str | None = field(
        default=None,
        metadata={"help": "Randomly initialised text encoder: a JSON dict (may name its model_type) or a config.json "
                  "path. Default: BERT-base sized BERT. Ignored with --text_model."},
    )
    image_config: str | None = field(
        default=None,
        metadata={"help": "As --text_config, for images. Default: ResNet-50 sized ResNet.",
                  "aliases": ["--vision_config"]},  # its name before hf_multimodal 0.2
    )
    audio_config: str | None = field(
        default=None, metadata={"help": "As --text_config, for audio. Default: WaveNetConfig()."}
    )
    backbones: list[str] = field(
        default_factory=list,
        metadata={"help": "modality=hub_id pairs recorded as the model's backbones (config.backbones, the card's "
                  "base_model) when an encoder was loaded from a local copy, e.g. "
                  "text=sentence-transformers/all-MiniLM-L6-v2.",
                  "aliases": ["--backbone_ids"]},  # its name before hf_multimodal 0.2
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
            if getattr(self, f"{modality}_model") and getattr(self, f"{modality}_config"):
                raise ValueError(
                    f"--{modality}_model and --{modality}_config are both set: a pretrained encoder brings its own "
                    "config; pass one of them."
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
        """`--backbones` as `{modality: hub_id}`."""
        return parse_backbones(self.backbones)


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
                  "processor of --image_model, or resize 256 + center crop 224."},
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


def _check_modalities(values: Sequence[str], option: str, allow_empty: bool) -> None:
    unknown = [value for value in values if value not in MODALITIES]
    if unknown or len(set(values)) != len(values) or (not values and not allow_empty):
        raise ValueError(f"{option} takes distinct modalities among {', '.join(MODALITIES)}; got {list(values)}.")


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
        return [not all(is_missing(value) for value in row) for row in zip(*column_values)]

    return dataset.filter(has_any, input_columns=list(columns), batched=True, keep_in_memory=True)


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
            if modality not in model_args.modalities:
                sources[modality] = None
            elif getattr(model_args, f"{modality}_model") is not None:
                sources[modality] = getattr(model_args, f"{modality}_model")
            else:
                sources[modality] = _parse_config(getattr(model_args, f"{modality}_config"), f"--{modality}_config")
        model = MultimodalForSequenceClassification.from_backbones(
            **sources,
            fusion_type=model_args.fusion_type,
            fusion_hidden_size=model_args.fusion_hidden_size,
            modality_dropout=model_args.modality_dropout,
            id2label=id2label,
            label2id=label2id,
        )
        processor = MultimodalProcessor.from_backbones(
            **{m: getattr(model_args, f"{m}_model") if m in model_args.modalities else None for m in MODALITIES}
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


def evaluate_split(trainer: MultimodalTrainer, dataset: datasets.Dataset, collator: MultimodalDataCollator, prefix: str):
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
    all_callbacks = [*callbacks, ModelCardCallback(dataset=data_args.dataset)]
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
    Train, keep the best checkpoint, save model + processor + pipeline code into `training_args.output_dir`, evaluate
    on the test split with every modality and with each one removed, and write `metrics.json`,
    `confusion_matrix.png` and the model card there.

    Returns the `metrics.json` dict: `dataset`, `test` and `ablation` (`without_<modality>` for each modality of a
    model that has several, each with accuracy, macro precision / recall / F1 and `num_examples`),
    `hyperparameters`, `modalities`, `fusion_type`, `labels` and `confusion_matrix`.
    """
    output_dir = Path(training_args.output_dir)
    resume = _resolve_resume(training_args.resume_from_checkpoint, output_dir)
    trainer, splits = build_trainer(model_args, data_args, training_args, callbacks)
    model, processor, collator = trainer.model, trainer.processing_class, trainer.data_collator
    started = time.perf_counter()
    train_result = trainer.train(resume_from_checkpoint=resume)
    train_seconds = time.perf_counter() - started
    trainer.save_model(str(output_dir))  # the best model (load_best_model_at_end) and its processor, any backend
    if trainer.is_world_process_zero():
        # Saved again through the pipeline, from the files just written: adds the pipeline's code and the config's
        # `custom_pipelines`, so that `pipeline(model=output_dir, trust_remote_code=True)` works without the package.
        pipeline(PIPELINE_TASK, model=str(output_dir)).save_pretrained(output_dir)

    test_metrics, predictions, label_ids = evaluate_split(trainer, splits.test, collator, "test")
    ablation = {}
    if len(model.config.modalities) > 1:
        for modality in model.config.modalities:
            ablation[f"without_{modality}"], _, _ = evaluate_split(
                trainer, splits.test, replace(collator, drop_modalities=(modality,)), f"test_without_{modality}"
            )
    trainer.data_collator = collator
    results = {
        "dataset": data_args.dataset,
        "test": test_metrics,
        "ablation": ablation,
        "hyperparameters": _hyperparameters(model_args, data_args, trainer, train_result, train_seconds),
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
            output_dir, repo_id=training_args.hub_model_id, processor=processor
        )
        card.save(output_dir / "README.md")
        print(format_results_table(results), flush=True)
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="End of training: best model, processor, test results and model card")
    return results


def _resolve_resume(value: str | None, output_dir: Path) -> str | None:
    """`--resume_from_checkpoint`: a checkpoint folder, or `last` for the newest complete one in the output folder
    (half-written ones, left by a run killed while saving, are removed). Without it, an output folder that already
    holds checkpoints is refused rather than overwritten."""
    if value is None:
        if any(output_dir.glob("checkpoint-*")):
            raise ValueError(
                f"{output_dir} already holds checkpoints: pass --resume_from_checkpoint last to continue that run, or "
                "choose another --output_dir."
            )
        return None
    if value.lower() in ("last", "latest", "true"):
        if int(os.environ.get("RANK", "0")) == 0:
            remove_incomplete_checkpoints(output_dir)
        last = last_complete_checkpoint(output_dir)
        if last is None:
            raise ValueError(f"--resume_from_checkpoint {value}: {output_dir} holds no complete checkpoint to resume.")
        return str(last)
    if not Path(value).is_dir():
        raise ValueError(f"--resume_from_checkpoint {value!r} is not a folder: pass a checkpoint folder or 'last'.")
    return value


def _label_prior(splits: Splits, column: str) -> torch.Tensor:
    values = splits.train[column]
    ids = [splits.label_to_id[value] for value in values] if splits.label_to_id else [int(value) for value in values]
    counts = torch.bincount(torch.tensor(ids), minlength=len(splits.labels)).double()
    return (counts / counts.sum()).float()


def _hyperparameters(model_args, data_args, trainer, train_result, train_seconds) -> dict[str, Any]:
    """The run's settings and outcome for `metrics.json` (the model card shows them): the model and data arguments,
    the training arguments as `hyperparameters_from_args` names them, and what the run did."""
    state = trainer.state
    return {
        **asdict(model_args),
        "backbones": trainer.model.config.backbones,
        **{f.name: getattr(data_args, f.name) for f in fields(data_args) if f.name != "dataset"},
        **hyperparameters_from_args(trainer.args),
        "early_stopping_patience": trainer.args.early_stopping_patience,
        "metric_for_best_model": trainer.args.metric_for_best_model,
        "best_checkpoint": Path(state.best_model_checkpoint).name if state.best_model_checkpoint else None,
        "global_steps": state.global_step,
        "epochs_trained": round(float(state.epoch or 0.0), 3),
        "train_loss": round(float(train_result.training_loss), 5),
        "train_seconds": round(train_seconds, 1),
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


if __name__ == "__main__":
    main()
