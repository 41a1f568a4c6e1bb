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

import itertools
import json
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import torch
from hyperparameter_search import HyperparameterSearch, default_search_space, load_search_space  # scripts/
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    AutoProcessor,
    EarlyStoppingCallback,
    EvalPrediction,
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
    RETRIEVAL_TASK,
    ZERO_SHOT_TASK,
    GalleryIndex,
    MultimodalForSequenceClassification,
    MultimodalImageProcessor,
    MultimodalModel,
    MultimodalPreTrainedModel,
    MultimodalProcessor,
    MultimodalRetrievalPipeline,
    RecurrentEncoderConfig,
    WaveNetConfig,
)
from hf_multimodal.configuration_multimodal import PROBLEM_TYPES
from hf_multimodal.data_augmentation import INDEX_COLUMN, AugmentationEpochCallback, DataAugmentation
from hf_multimodal.data_collator import UNAVAILABLE_KEY, MultimodalDataCollator
from hf_multimodal.feature_cache import FreezeEncodersCallback, cache_frozen_features, with_column
from hf_multimodal.image_processing_multimodal import IMAGENET_MEAN, IMAGENET_STD
from hf_multimodal.media_loading import audio_duration
from hf_multimodal.metrics import (
    DEFAULT_MULTI_LABEL_THRESHOLD,
    METRIC_NAMES,
    metrics_function,
    problem_type_metrics,
    retrieval_recalls,
)
from hf_multimodal.model_card import (
    ModelCardCallback,
    hyperparameters_from_args,
    model_card_from_output_folder,
    parse_backbones,
    without_local_paths,
)
from hf_multimodal.modeling_fusion import FUSION_CLASSES
from hf_multimodal.modeling_multimodal import FEATURE_ENCODER_INPUT_NAMES
from hf_multimodal.modeling_wavenet import SPEECH_EMBEDDING_BLOCKS, feature_encoder_of
from hf_multimodal.processing_multimodal import bucket_multiples, is_missing
from hf_multimodal.trainer import (
    FUSION_PART,
    MultimodalTrainer,
    ProgressLineCallback,
    last_complete_checkpoint,
    remove_incomplete_checkpoints,
)
from hf_multimodal.training_args import MultimodalTrainingArguments

FEATURE_ENCODER_PART = "audio.frontend.feature_encoder"
"""The `MultimodalTrainer.learning_rates` key of `--feature_encoder_learning_rate`."""


logger = logging.get_logger(__name__)

OBJECTIVES: tuple[str, ...] = ("classification", "contrastive")


@dataclass
class ModelArguments:
    """Which model to train: a saved hf_multimodal model, or one assembled from (pretrained or random) encoders."""

    objective: str = field(
        default="classification",
        metadata={"help": "classification: learn the labels; contrastive: align the modalities in one space (InfoNCE "
                  "between every pair of modalities of an example, as CLIP / CLAP) on unlabelled paired examples, for "
                  "retrieval, zero-shot classification, or as a starting point of a classifier "
                  "(--model_name_or_path <aligned folder>).",
                  "choices": list(OBJECTIVES)},
    )
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
        default=None,
        metadata={"help": "As --text_config, for audio. Default: WaveNetConfig(). A GRU / LSTM encoder (also for "
                  'text): {"model_type": "recurrent_encoder", "cell": "lstm"}.'},
    )
    backbones: list[str] = field(
        default_factory=list,
        metadata={"help": "modality=hub_id pairs recorded as the model's backbones (config.backbones, the card's "
                  "base_model) when an encoder was loaded from a local copy, e.g. "
                  "text=sentence-transformers/all-MiniLM-L6-v2.",
                  "aliases": ["--backbone_ids"]},  # its name before hf_multimodal 0.2
    )
    fusion_type: str | None = field(
        default=None,
        metadata={"help": f"One of {', '.join(FUSION_TYPES)}. Default: gated for a new model, the saved one with "
                  "--model_name_or_path. For labels that are a relation between modalities use comparator, concat, "
                  "transformer or low_rank_tensor (README: Fusion heads)."},
    )
    fusion_hidden_size: int = field(default=256, metadata={"help": "Width of the projections and the fusion head."})
    modality_dropout: float = field(
        default=0.0, metadata={"help": "Training-time probability of hiding each present modality of an example."}
    )
    modality_dropout_min_present: int = field(
        default=1,
        metadata={"help": "Modality dropout keeps at least this many modalities of each example: 2 for relational "
                  "labels (README: Choosing modality dropout)."},
    )
    contrastive_loss_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of the auxiliary contrastive loss during classification (the modalities of an "
                  "example must describe the same thing; not for relational labels)."},
    )
    modality_loss_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of the auxiliary per-modality classification losses, which train every encoder to "
                  "read its modality on its own."},
    )
    freeze_modalities: list[str] = field(
        default_factory=list,
        metadata={"help": "Modalities whose encoder is frozen (kept in eval mode, not trained). For a relational "
                  "classifier starting from an aligned model or from per-modality readers, freeze them all (README: "
                  "Relational heads on frozen aligned encoders; on frozen digit readers)."},
    )
    freeze_feature_encoder: bool = field(
        default=False,
        metadata={"help": "Keep the audio encoder's pretrained feature encoder fixed while the rest of the model learns "
                  "(as run_audio_classification.py's option): the speech_embedding stack of an --audio_model made by "
                  "scripts/convert_speech_embedding.py (README: A pretrained speech front-end). With "
                  "--cache_frozen_features its outputs are computed once per split."},
    )
    feature_encoder_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the audio encoder's pretrained feature encoder (the speech_embedding stack) "
                  "where it learns, the rest of the audio encoder keeping --audio_learning_rate: discriminative "
                  "fine-tuning, e.g. 3e-4 under 3e-3 (README: Fine-tuning the pretrained speech stack). Default: "
                  "--audio_learning_rate."},
    )
    feature_encoder_trainable_blocks: int | None = field(
        default=None,
        metadata={"help": "Where the audio encoder's pretrained feature encoder learns: only its top N convolution "
                  f"blocks (1 to {SPEECH_EMBEDDING_BLOCKS - 1} of {SPEECH_EMBEDDING_BLOCKS}) do, the lower ones keep "
                  "their pretrained weights and run without gradients, so a step costs less (README: Where the "
                  "relation's last points go). Default: the whole stack learns."},
    )
    freeze_encoders_after_epochs: list[str] = field(
        default_factory=list,
        metadata={"help": "Let the encoders learn for this many epochs, then freeze them for the rest of the run, and "
                  "(with --cache_frozen_features) compute their outputs once: N for every learning encoder, or "
                  "modality=N pairs (e.g. image=3 audio=8; the others learn to the end). An audio encoder with a "
                  "pretrained stack freezes that stack only (the layers above it go on learning). The later epochs "
                  "then cost what frozen-encoder epochs cost. One process only (README: Encoders that learn first, "
                  "then freeze). Default: the encoders learn to the end."},
    )
    activation_checkpointing_modalities: list[str] = field(
        default_factory=list,
        metadata={"help": "Encoders (text, audio) whose activations are recomputed in the backward pass instead of "
                  "kept: less memory, slower steps (README: Training options). --activation_checkpointing (or "
                  "--gradient_checkpointing) checkpoints every encoder that supports it."},
    )
    cache_frozen_features: bool = field(
        default=True,
        metadata={"help": "Compute the output of each frozen encoder (and of a --freeze_feature_encoder stack, or the "
                  "frozen lower blocks of a --feature_encoder_trainable_blocks one) once per split (stored under the "
                  "datasets cache, keyed by the data, the encoder's weights and the preprocessing) and train and "
                  "evaluate the rest from it; on the training split, a modality in --augment is cached once per "
                  "--augment_copies copy, or not at all without them. README: Frozen-encoder cache."},
    )
    feature_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Folder of the frozen-encoder cache (default: hf_multimodal_encoder_features in the "
                  "datasets cache, HF_DATASETS_CACHE)."},
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
        metadata={"help": "Learning rate of the projections, fusion head and classifier (default: --learning_rate, "
                          "at most 3e-4 for the transformer head: README, The transformer head's learning rate)."},
    )
    hpo_trials: int = field(
        default=0,
        metadata={"help": "Search hyper-parameters first (README: Hyper-parameter search): this many Optuna trials, "
                  "each pruned when its validation metric lags, then the best settings are trained and evaluated as "
                  "a normal run. 0: no search."},
    )
    hpo_space: str | None = field(
        default=None,
        metadata={"help": "JSON file of the search space (format: scripts/hyperparameter_search.py; example: "
                  "scripts/hpo_space.json). Default: per-part learning rates, fusion type and width, modality "
                  "dropout."},
    )
    hpo_epochs: float | None = field(
        default=None, metadata={"help": "Epochs of each search trial (default: --num_train_epochs)."}
    )

    def __post_init__(self):
        _check_modalities(self.modalities, "--modalities", allow_empty=False)
        _check_modalities(self.freeze_modalities, "--freeze_modalities", allow_empty=True)
        _check_modalities(self.activation_checkpointing_modalities, "--activation_checkpointing_modalities", True)
        frozen_and_checkpointed = sorted(set(self.freeze_modalities) & set(self.activation_checkpointing_modalities))
        if frozen_and_checkpointed:
            raise ValueError(
                f"{frozen_and_checkpointed} are in --freeze_modalities and --activation_checkpointing_modalities: a "
                "frozen encoder keeps no activations for the backward pass, so checkpointing it saves nothing. Drop "
                "them from --activation_checkpointing_modalities."
            )
        if self.fusion_type is not None and self.fusion_type not in FUSION_TYPES:
            raise ValueError(f"--fusion_type must be one of {', '.join(FUSION_TYPES)}; got {self.fusion_type!r}.")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"--objective must be one of {', '.join(OBJECTIVES)}; got {self.objective!r}.")
        if self.objective == "contrastive" and len(self.modalities) < 2:
            raise ValueError(
                f"--objective contrastive aligns pairs of modalities: pass at least two in --modalities, got "
                f"{self.modalities}."
            )
        for modality in MODALITIES:
            if getattr(self, f"{modality}_model") and getattr(self, f"{modality}_config"):
                raise ValueError(
                    f"--{modality}_model and --{modality}_config are both set: a pretrained encoder brings its own "
                    "config; pass one of them."
                )
        self.backbone_hub_ids()  # validates the pairs
        if self.feature_encoder_learning_rate and self.freeze_feature_encoder:
            raise ValueError(
                "--feature_encoder_learning_rate with --freeze_feature_encoder: a frozen stack does not learn. Drop "
                "one of them (--freeze_feature_encoder False fine-tunes the stack at that rate)."
            )
        if self.feature_encoder_trainable_blocks is not None:
            if self.freeze_feature_encoder:
                raise ValueError(
                    "--feature_encoder_trainable_blocks with --freeze_feature_encoder: a frozen stack has no learning "
                    "blocks. Drop one of them."
                )
            if not 1 <= self.feature_encoder_trainable_blocks < SPEECH_EMBEDDING_BLOCKS:
                raise ValueError(
                    f"--feature_encoder_trainable_blocks must be between 1 and {SPEECH_EMBEDDING_BLOCKS - 1}, got "
                    f"{self.feature_encoder_trainable_blocks}: for the whole stack leave it out, for none pass "
                    "--freeze_feature_encoder."
                )
        if self.hpo_trials < 0 or (self.hpo_epochs is not None and not self.hpo_epochs > 0):
            raise ValueError(
                f"--hpo_trials must be >= 0 and --hpo_epochs positive; got {self.hpo_trials} and {self.hpo_epochs}."
            )
        if self.freeze_encoders_after_epochs:
            self.freeze_epochs()  # validates the values
            if self.hpo_trials:
                raise ValueError(
                    "--freeze_encoders_after_epochs with --hpo_trials: a search's trials cache no encoder that "
                    "learns; search first, then train the best settings with it."
                )
        space = load_search_space(self.hpo_space) if self.hpo_space is not None else {}  # checked here, before data
        if "fusion_hidden_size" in space and self.model_name_or_path is not None:
            raise ValueError(
                f"--hpo_space {self.hpo_space} searches fusion_hidden_size, which a saved model "
                "(--model_name_or_path) keeps: leave it out of the space."
            )

    def freeze_epochs(self) -> int | dict[str, int] | None:
        """`--freeze_encoders_after_epochs`: epochs before every learning encoder freezes, per modality (a dict), or
        None (they learn to the end)."""
        values = self.freeze_encoders_after_epochs
        if not values:
            return None
        fix = "pass N (every learning encoder) or modality=N pairs (e.g. image=3 audio=8), N >= 1"
        if len(values) == 1 and "=" not in values[0]:
            epochs = values[0]
            if not epochs.isdigit() or int(epochs) < 1:
                raise ValueError(
                    f"--freeze_encoders_after_epochs {epochs}: {fix}; to freeze them from the start use "
                    "--freeze_modalities (and --freeze_feature_encoder)."
                )
            return int(epochs)
        pairs = [value.partition("=") for value in values]
        bad = [value for value, (modality, equals, epochs) in zip(values, pairs)
               if not equals or modality not in MODALITIES or not epochs.isdigit() or int(epochs) < 1]  # fmt: skip
        if bad or len({modality for modality, _, _ in pairs}) < len(pairs):
            raise ValueError(
                f"--freeze_encoders_after_epochs {' '.join(values)}: {fix}, each modality once (one of "
                f"{', '.join(MODALITIES)})."
            )
        return {modality: int(epochs) for modality, _, epochs in pairs}

    def config_overrides(self) -> dict[str, Any]:
        """Settings of `MultimodalConfig` that these arguments set (the fusion type only when given)."""
        overrides = {
            "modality_dropout": self.modality_dropout,
            "modality_dropout_min_present": self.modality_dropout_min_present,
            "contrastive_loss_weight": self.contrastive_loss_weight,
            "modality_loss_weight": self.modality_loss_weight,
        }
        if self.fusion_type is not None:
            overrides["fusion_type"] = self.fusion_type
        return overrides

    def learning_rates(self) -> dict[str, float | None]:
        """Learning rate per parameter group (`None`: the Trainer's `learning_rate`)."""
        return {
            "text": self.text_learning_rate,
            "image": self.image_learning_rate,
            "audio": self.audio_learning_rate,
            FUSION_PART: self.fusion_learning_rate,
            **({FEATURE_ENCODER_PART: self.feature_encoder_learning_rate} if self.feature_encoder_learning_rate else {}),
        }

    def backbone_hub_ids(self) -> dict[str, str]:
        """`--backbones` as `{modality: hub_id}`."""
        return parse_backbones(self.backbones)


@dataclass
class DataArguments:
    """Which data to train on and how to read it."""

    dataset: str | None = field(
        default=None,
        metadata={"help": "A folder written by `save_to_disk` (e.g. by scripts/make_demo_dataset.py), a folder of "
                  "train / validation / test CSV, JSON Lines or Parquet files, or a Hub dataset id or folder that "
                  "`datasets.load_dataset` reads. Or give --train_file (and --validation_file, --test_file)."},
    )
    train_file: str | None = field(
        default=None, metadata={"help": "A CSV, JSON Lines or Parquet file of training examples (instead of --dataset)."}
    )
    validation_file: str | None = field(default=None, metadata={"help": "As --train_file, for validation."})
    test_file: str | None = field(default=None, metadata={"help": "As --train_file, for the final evaluation."})
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration name of a Hub dataset."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    validation_split: str = field(
        default="validation",
        metadata={"help": "Split for model selection; when the dataset lacks it, --validation_fraction of the train "
                  "split is held out instead."},
    )
    test_split: str = field(default="test", metadata={"help": "Split of the final evaluation and the ablation."})
    extra_test_splits: list[str] = field(
        default_factory=list,
        metadata={"help": "More splits evaluated at the end (e.g. test_unseen_speaker), reported under extra_tests."},
    )
    validation_fraction: float = field(
        default=0.1, metadata={"help": "Share of the train split held out when there is no validation split."}
    )
    text_column: str = field(default="text", metadata={"help": "Column of the texts (None / empty: no text)."})
    image_column: str = field(default="image", metadata={"help": "Column of the images (None: no image)."})
    audio_column: str = field(default="audio", metadata={"help": "Column of the audio clips (None: no audio)."})
    label_column: str = field(
        default="label",
        metadata={"help": "Column of the labels: a class (ClassLabel, int or str); a list of classes (a Sequence of "
                  "ClassLabel, ints or strings) or a multi-hot list of floats / bools for multi-label; a float for "
                  "regression."},
    )
    problem_type: str | None = field(
        default=None,
        metadata={"help": "single_label_classification, multi_label_classification or regression. Default: read from "
                  "the label column (a list: multi-label; a float: regression; otherwise single-label).",
                  "choices": list(PROBLEM_TYPES)},
    )
    multi_label_threshold: float = field(
        default=DEFAULT_MULTI_LABEL_THRESHOLD,
        metadata={"help": "Multi-label metrics count a label as predicted when its sigmoid score is at least this."},
    )
    max_text_tokens: int = field(default=64, metadata={"help": "Texts are truncated to this many tokens."})
    max_audio_seconds: float = field(default=10.0, metadata={"help": "Audio is truncated to this many seconds."})
    bucket_shapes: bool | None = field(
        default=None,
        metadata={"help": "Pad text to a multiple of 16 tokens and audio to a multiple of a quarter of "
                  "--max_audio_seconds, so that --torch_compile compiles a bounded number of graphs (README: "
                  "Training options). Default: on with --torch_compile, off otherwise (padding to the longest)."},
    )
    image_size: int | None = field(
        default=None,
        metadata={"help": "Resize images to this square size (ResNet-style normalisation). Default: the image "
                  "processor of --image_model, or resize 256 + center crop 224."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N validation examples."})
    max_test_samples: int | None = field(default=None, metadata={"help": "Use only the first N test examples."})
    streaming: bool = field(
        default=False,
        metadata={"help": "Train from a stream (`datasets` streaming: an IterableDataset read as training goes, never "
                  "whole), for data larger than memory or disk: a Hub dataset id, Parquet / JSON Lines / CSV files, or "
                  "a saved folder. Needs --max_steps and step-based --eval_strategy / --save_strategy; the validation "
                  "and test splits are read into memory (bound them with --max_eval_samples / --max_test_samples); "
                  "each process of `accelerate launch` reads its own part. README: Streaming."},
    )
    shuffle_buffer_size: int = field(
        default=1000,
        metadata={"help": "With --streaming: training examples are shuffled within a buffer of this many (and the "
                  "order of the stream's files / shards), reshuffled every pass through the data (seed + pass)."},
    )
    class_names: list[str] = field(
        default_factory=list,
        metadata={"help": "The classes in index order, for a label column of class indices or strings (or lists of "
                  "them, or multi-hot lists) that is not a ClassLabel. Needed with --streaming there: the classes of a "
                  "stream cannot be read without a pass over it. Default: read from the data."},
    )
    augment: list[str] = field(
        default_factory=list,
        metadata={"help": "Augment these modalities of the training examples (never evaluation), any of: audio image "
                  "text. Seeded by (--seed, epoch, example index): runs and resumes stay reproducible. Off by default."},
    )
    augment_copies: int | None = field(
        default=None,
        metadata={"help": "Draw each training example's --augment from only N fixed copies, cycled over the epochs "
                  "(the epoch modulo N), instead of anew every epoch: with --cache_frozen_features, frozen encoders "
                  "and the frozen lower blocks of a --feature_encoder_trainable_blocks stack then read each copy once "
                  "(cached) instead of every batch (README: Augmented copies in the cache). Default: a new draw every "
                  "epoch."},
    )
    audio_gain_db: float = field(
        default=DataAugmentation.audio_gain_db, metadata={"help": "Audio augmentation: random gain within +/- this (dB)."}
    )
    audio_shift_seconds: float = field(
        default=DataAugmentation.audio_shift_seconds,
        metadata={"help": "Audio augmentation: random time shift within +/- this many seconds (zero-filled)."},
    )
    audio_noise_snr_db: float = field(
        default=DataAugmentation.audio_noise_snr_db,
        metadata={"help": "Audio augmentation: white noise added at this signal-to-noise ratio (dB)."},
    )
    audio_speed: float = field(
        default=DataAugmentation.audio_speed,
        metadata={"help": "Audio augmentation: random speed factor within 1 +/- this (resampling, length kept)."},
    )
    image_shift: float = field(
        default=DataAugmentation.image_shift,
        metadata={"help": "Image augmentation: random shift within +/- this share of the width / height."},
    )
    image_rotation_degrees: float = field(
        default=DataAugmentation.image_rotation_degrees,
        metadata={"help": "Image augmentation: random rotation within +/- this many degrees (no flips)."},
    )
    text_word_dropout: float = field(
        default=DataAugmentation.text_word_dropout,
        metadata={"help": "Text augmentation: probability of dropping each word."},
    )

    def __post_init__(self):
        if (self.dataset is None) == (self.train_file is None):
            raise ValueError(
                "pass either --dataset (a saved dataset, a folder or a Hub id) or --train_file (with --validation_file "
                "and --test_file), not both and not neither."
            )
        if self.train_file is None and (self.validation_file or self.test_file):
            raise ValueError("--validation_file and --test_file go with --train_file, not with --dataset.")
        for option in ("train_file", "validation_file", "test_file"):
            path = getattr(self, option)
            if path is not None and not (Path(path).suffix.lower() in DATA_FILE_FORMATS and Path(path).is_file()):
                raise ValueError(
                    f"--{option} {path!r} must be an existing {', '.join(DATA_FILE_FORMATS)} file."
                )
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"--validation_fraction must be in (0, 1), got {self.validation_fraction}.")
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"--problem_type must be one of {', '.join(PROBLEM_TYPES)}; got {self.problem_type!r}.")
        if not 0.0 < self.multi_label_threshold < 1.0:
            raise ValueError(f"--multi_label_threshold must be in (0, 1), got {self.multi_label_threshold}.")
        if self.max_text_tokens < 2:
            raise ValueError(f"--max_text_tokens must be >= 2, got {self.max_text_tokens}.")
        if not self.max_audio_seconds > 0:
            raise ValueError(f"--max_audio_seconds must be positive, got {self.max_audio_seconds}.")
        if self.image_size is not None and self.image_size < 8:
            raise ValueError(f"--image_size must be >= 8 pixels, got {self.image_size}.")
        if self.shuffle_buffer_size < 1:
            raise ValueError(f"--shuffle_buffer_size must be >= 1, got {self.shuffle_buffer_size}.")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"--class_names must be distinct class names, got {self.class_names}.")
        if self.augment_copies is not None and (self.augment_copies < 1 or not self.augment):
            raise ValueError(
                f"--augment_copies must be >= 1 and goes with --augment (the modalities to augment); got "
                f"--augment_copies {self.augment_copies} with --augment {' '.join(self.augment) or '(none)'}."
            )

    def columns(self) -> dict[str, str]:
        """Column name per modality."""
        return {"text": self.text_column, "image": self.image_column, "audio": self.audio_column}

    def augmentation(self, seed: int) -> DataAugmentation | None:
        """The training augmentation that --augment and the strength options ask for (`None` without --augment)."""
        if not self.augment:
            return None
        strengths = ("audio_gain_db", "audio_shift_seconds", "audio_noise_snr_db", "audio_speed", "image_shift",
                     "image_rotation_degrees", "text_word_dropout")
        return DataAugmentation(
            self.augment, seed, copies=self.augment_copies, **{name: getattr(self, name) for name in strengths}
        )

    @property
    def name(self) -> str:
        """The dataset's name for results and model cards: `--dataset` (a local folder by its name only), or the
        folder of `--train_file`."""
        if self.dataset is not None:
            return Path(self.dataset).name if Path(self.dataset).exists() else self.dataset
        return Path(self.train_file).resolve().parent.name


def _check_modalities(values: Sequence[str], option: str, allow_empty: bool) -> None:
    unknown = [value for value in values if value not in MODALITIES]
    if unknown or len(set(values)) != len(values) or (not values and not allow_empty):
        raise ValueError(f"{option} takes distinct modalities among {', '.join(MODALITIES)}; got {list(values)}.")


@dataclass
class Splits:
    """The train / validation / test datasets of a run, their label names (for regression: the target's name) and
    problem type."""

    train: datasets.Dataset | datasets.IterableDataset
    validation: datasets.Dataset
    test: datasets.Dataset
    labels: list[str]
    label_to_id: dict[Any, int] | None
    extra_tests: dict[str, datasets.Dataset] = field(default_factory=dict)
    problem_type: str = "single_label_classification"


def load_splits(
    data_args: DataArguments, modalities: Sequence[str], seed: int, labelled: bool = True, min_modalities: int = 1
) -> Splits:
    """Load the dataset, check its columns, keep image and audio columns undecoded (decoded by the collator, never
    through torchcodec), hold out a validation split when there is none, and read the label names (with
    `labelled=False`, for contrastive training, the label column is optional). Training examples with fewer than
    `min_modalities` of `modalities` are left out.

    With `--streaming` the training split is a shuffled `IterableDataset` (read as training goes) and the evaluation
    splits are read into memory; the label names come from the features or `--class_names`."""
    raw = _load_dataset(data_args)
    if isinstance(raw, (datasets.Dataset, datasets.IterableDataset)):
        raise ValueError(f"{data_args.name} holds a single Dataset: it needs named splits (a DatasetDict).")
    if data_args.streaming:
        raw = datasets.IterableDatasetDict({name: _with_features(split) for name, split in raw.items()})
    for name in (data_args.train_split, data_args.test_split, *data_args.extra_test_splits):
        if name not in raw:
            raise ValueError(
                f"{data_args.name} has no split {name!r} (splits: {', '.join(raw)}): pass --train_split / "
                "--test_split / --extra_test_splits among those."
            )
    columns = data_args.columns()
    needed = [columns[m] for m in modalities] + ([data_args.label_column] if labelled else [])
    for split in raw.values():
        missing = [column for column in needed if column not in split.column_names]
        if missing:
            raise ValueError(
                f"{data_args.name} has no column(s) {missing} (columns: {split.column_names}): pass "
                "--text_column / --image_column / --audio_column / --label_column, or leave that modality out of "
                "--modalities."
            )
    raw = type(raw)({name: _undecoded(split, [columns[m] for m in ("image", "audio")]) for name, split in raw.items()})
    train = raw[data_args.train_split]
    if data_args.validation_split in raw:
        validation = raw[data_args.validation_split]
    elif data_args.streaming:
        raise ValueError(
            f"{data_args.name} has no {data_args.validation_split!r} split, and --streaming cannot hold out "
            "--validation_fraction of a stream (that needs a pass over all of it): pass --validation_split (a split "
            "of the dataset) or --validation_file."
        )
    else:
        logger.warning(
            f"{data_args.name} has no {data_args.validation_split!r} split: holding out "
            f"{data_args.validation_fraction:.0%} of {data_args.train_split!r} for validation."
        )
        held_out = train.train_test_split(test_size=data_args.validation_fraction, seed=seed)
        train, validation = held_out["train"], held_out["test"]
    train = _first(train, data_args.max_train_samples)
    validation = _in_memory(_first(validation, data_args.max_eval_samples))
    test = _in_memory(_first(raw[data_args.test_split], data_args.max_test_samples))
    extra_tests = {
        name: _in_memory(_first(raw[name], data_args.max_test_samples)) for name in data_args.extra_test_splits
    }
    has_labels = data_args.label_column in train.column_names
    problem_type = data_args.problem_type or "single_label_classification"
    if has_labels and (data_args.streaming or data_args.class_names):
        labels, label_to_id, problem_type = _declared_label_names(
            train.features[data_args.label_column], data_args.label_column, data_args.problem_type,
            data_args.class_names,
        )
    elif has_labels:
        labels, label_to_id, problem_type = _label_names(train, data_args.label_column, data_args.problem_type)
    else:
        labels, label_to_id = [], None
    # A model cannot learn from an example that has too few of its modalities: train only on the others.
    train = _with_modalities(train, [columns[m] for m in modalities], min_modalities)
    if isinstance(train, datasets.IterableDataset):
        # Parquet files are read by row group, each a shard (`reshard`): the shard order is shuffled too, and memory
        # holds the few row groups that feed the buffer, not a large part of each file
        train = train.reshard().shuffle(seed=seed, buffer_size=data_args.shuffle_buffer_size)
    elif len(train) == 0:
        raise ValueError(
            f"no training example has {min_modalities} or more of the modalities {list(modalities)}: check "
            "--modalities and the columns."
        )
    return Splits(train, validation, test, labels, label_to_id, extra_tests, problem_type)


DATA_FILE_FORMATS: dict[str, str] = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
"""Data file suffixes and the `datasets` builder that reads them."""
_SPLIT_FILE_NAMES: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "validation": ("validation", "valid", "dev", "val"),
    "test": ("test",),
}
SAVED_FOLDER_SHARDS = 64
"""Shards of each split of a saved folder read with --streaming: the stream's shard order is shuffled every pass, and
processes and dataloader workers read disjoint shards (up to this many)."""
FEATURE_INFERENCE_EXAMPLES = 1000
"""A stream whose files name no features (CSV, JSON Lines) is cast to the features of its first this many examples."""
LABEL_PRIOR_EXAMPLES = 10_000
"""A streamed run estimates its label prior from the label column of its first this many training examples."""


def _load_dataset(data_args: DataArguments) -> datasets.DatasetDict | datasets.Dataset:
    if data_args.train_file is not None:
        files = {"train": data_args.train_file, "validation": data_args.validation_file, "test": data_args.test_file}
        return _load_data_files({split: Path(path) for split, path in files.items() if path is not None}, data_args)
    folder = Path(data_args.dataset)
    if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
        saved = datasets.load_from_disk(str(folder))
        if data_args.streaming and isinstance(saved, datasets.DatasetDict):
            return datasets.IterableDatasetDict(
                {
                    name: split.to_iterable_dataset(num_shards=max(1, min(SAVED_FOLDER_SHARDS, len(split))))
                    for name, split in saved.items()
                }
            )
        return saved
    if folder.is_dir():
        tables = sorted(path for path in folder.iterdir() if path.suffix.lower() in DATA_FILE_FORMATS)
        if tables:
            return _load_data_files(_split_files(folder, tables), data_args)
    return datasets.load_dataset(data_args.dataset, data_args.dataset_config, streaming=data_args.streaming)


def _split_files(folder: Path, tables: Sequence[Path]) -> dict[str, Path]:
    """The data file of each split in a folder of tables (`train.csv`, `validation.csv`, `test.csv`, ...); a folder
    whose tables do not name their split one-to-one is refused, with the files found and the options to use."""
    found = {}
    for split, names in _SPLIT_FILE_NAMES.items():
        matches = [path for path in tables if path.stem.lower() in names]
        if len(matches) == 1:
            found[split] = matches[0]
    if "train" not in found or len(found) != len(tables):
        raise ValueError(
            f"{folder} holds the data files {[path.name for path in tables]}, which do not say one split each "
            f"(expected names: train, validation, test, with a suffix among {', '.join(DATA_FILE_FORMATS)}): pass "
            "--train_file, --validation_file and --test_file instead of --dataset."
        )
    return found


def _load_data_files(
    files: Mapping[str, Path], data_args: DataArguments
) -> datasets.DatasetDict | datasets.IterableDatasetDict:
    """Read CSV / JSON Lines / Parquet files, one per split (streamed with `--streaming`); relative media paths in the
    image and audio columns are resolved against the folder of the file that names them (not the working
    directory)."""
    formats = {DATA_FILE_FORMATS[path.suffix.lower()] for path in files.values()}
    if len(formats) != 1:
        raise ValueError(f"the data files {[str(path) for path in files.values()]} mix formats: use one format.")
    loaded = datasets.load_dataset(
        formats.pop(), data_files={split: str(path) for split, path in files.items()}, streaming=data_args.streaming
    )
    media = [data_args.columns()[m] for m in ("image", "audio")]
    return type(loaded)(
        {split: _absolute_media_paths(part, media, files[split].resolve().parent) for split, part in loaded.items()}
    )


def _absolute_media_paths(
    dataset: datasets.Dataset | datasets.IterableDataset, columns: Sequence[str], base: Path
) -> datasets.Dataset | datasets.IterableDataset:
    """Make the relative file paths of the string `columns` absolute against `base`."""

    def resolve(batch):
        return {
            column: [value if value is None or os.path.isabs(value) else str(base / value) for value in batch[column]]
            for column in present
        }

    if isinstance(dataset, datasets.IterableDataset):
        dataset = _with_features(dataset)
    present = [
        column for column in columns
        if column in dataset.column_names and getattr(dataset.features[column], "dtype", None) in ("string", "large_string")
    ]
    return dataset.map(resolve, batched=True, features=dataset.features) if present else dataset


def _with_features(stream: datasets.IterableDataset) -> datasets.IterableDataset:
    """`stream` with known features: streamed CSV / JSON Lines files name none until read, so the stream is cast to
    those of its first `FEATURE_INFERENCE_EXAMPLES` examples (as map-style loading infers them from the first chunk)."""
    if stream.features is not None:
        return stream
    head = next(iter(stream.with_format("arrow").iter(batch_size=FEATURE_INFERENCE_EXAMPLES)), None)
    if head is None:
        raise ValueError(f"the {stream.split or ''} split of the stream is empty: it needs examples.")
    return stream.cast(datasets.Features.from_arrow_schema(head.schema))


def _in_memory(dataset: datasets.Dataset | datasets.IterableDataset) -> datasets.Dataset:
    """A bounded split as a map-style `Dataset`: a stream (e.g. the evaluation split of a streamed dataset, or its
    first `--max_eval_samples`) is read whole into memory, as Arrow tables (media stay encoded)."""
    if isinstance(dataset, datasets.Dataset):
        return dataset
    tables = list(dataset.with_format("arrow").iter(batch_size=FEATURE_INFERENCE_EXAMPLES))
    if not tables:
        raise ValueError(f"the {dataset.split or ''} split of the stream is empty: it needs examples.")
    table = datasets.table.InMemoryTable(pa.concat_tables(tables))
    return datasets.Dataset(table, info=dataset.info.copy(), split=dataset.split)


def _undecoded(dataset: datasets.Dataset, columns: Sequence[str]) -> datasets.Dataset:
    """Cast `Image()` / `Audio()` columns to `decode=False`: the collator decodes them (soundfile, PIL) per batch."""
    for column in columns:
        feature = dataset.features.get(column)
        if isinstance(feature, (datasets.Image, datasets.Audio)) and feature.decode:
            dataset = dataset.cast_column(column, type(feature)(decode=False))
    return dataset


def _first(
    dataset: datasets.Dataset | datasets.IterableDataset, count: int | None
) -> datasets.Dataset | datasets.IterableDataset:
    if count is None:
        return dataset
    if isinstance(dataset, datasets.IterableDataset):
        return dataset.take(count)
    return dataset.select(range(min(count, len(dataset))))


def _label_names(
    train: datasets.Dataset, column: str, problem_type: str | None = None
) -> tuple[list[str], dict[Any, int] | None, str]:
    """The label names, the map of string labels to class indices (None for indices) and the problem type of the
    label column; `problem_type=None` reads it from the column: lists are multi-label, floats regression, classes
    single-label. Regression has one "label", the column's name; a multi-hot column names its classes "0", "1", ..."""
    feature = train.features[column]
    is_list = isinstance(feature, (datasets.List, datasets.LargeList))
    if problem_type is None:
        is_float = isinstance(feature, datasets.Value) and feature.dtype.startswith("float")
        problem_type = "multi_label_classification" if is_list else "regression" if is_float else "single_label_classification"
    if problem_type == "regression":
        if is_list or not (isinstance(feature, datasets.Value) and feature.dtype[:3] in ("flo", "int", "uin")):
            raise TypeError(f"--problem_type regression needs a column of numbers; {column!r} holds {feature}.")
        return [column], None, problem_type
    if problem_type == "multi_label_classification":
        if not is_list:
            raise TypeError(
                f"--problem_type multi_label_classification needs a column of label lists or multi-hot lists; "
                f"{column!r} holds {feature}."
            )
        inner, values = feature.feature, [value for row in train[column] for value in row]
        if isinstance(inner, datasets.Value) and (inner.dtype.startswith("float") or inner.dtype == "bool"):
            return [str(index) for index in range(len(train[0][column]))], None, problem_type  # multi-hot
    else:
        inner, values = feature, train[column]
    if isinstance(inner, datasets.ClassLabel):
        return list(inner.names), None, problem_type
    if values and all(isinstance(value, (int, np.integer)) and not isinstance(value, bool) for value in values):
        if min(values) < 0:
            raise ValueError(f"label column {column!r} has negative values: use class indices 0..N-1 or strings.")
        return [str(index) for index in range(max(values) + 1)], None, problem_type
    if values and all(isinstance(value, str) for value in values):
        names = sorted(set(values))
        return names, {name: index for index, name in enumerate(names)}, problem_type
    raise TypeError(
        f"label column {column!r} must hold class indices or strings (or lists of them, or multi-hot float lists, for "
        f"multi-label; floats for regression), got {feature}."
    )


def _declared_label_names(
    feature: Any, column: str, problem_type: str | None, class_names: Sequence[str]
) -> tuple[list[str], dict[Any, int] | None, str]:
    """As `_label_names`, without reading the data (a stream): the names of a ClassLabel (or a list of them), the
    column's name for regression, otherwise `class_names` (`--class_names`), mapped from strings when the column holds
    strings."""
    empty = datasets.Dataset.from_dict({column: []}, features=datasets.Features({column: feature}))
    is_list = isinstance(feature, (datasets.List, datasets.LargeList))
    inner = feature.feature if is_list else feature
    if not class_names:
        is_float = isinstance(feature, datasets.Value) and feature.dtype.startswith("float")  # regression unless told
        if problem_type == "regression" or isinstance(inner, datasets.ClassLabel) or (is_float and problem_type is None):
            return _label_names(empty, column, problem_type)
        raise ValueError(
            f"the classes of label column {column!r} ({feature}) are not in its features, and a stream cannot be read "
            "whole to find them: pass --class_names with the classes in index order (or cast the column to a "
            "ClassLabel)."
        )
    if isinstance(inner, datasets.ClassLabel) and list(inner.names) != list(class_names):
        raise ValueError(
            f"--class_names {list(class_names)} differ from the classes of the ClassLabel column {column!r} "
            f"{inner.names}: leave --class_names out."
        )
    if problem_type is None:
        problem_type = "multi_label_classification" if is_list else "single_label_classification"
    strings = getattr(inner, "dtype", None) in ("string", "large_string")
    return list(class_names), ({name: index for index, name in enumerate(class_names)} if strings else None), problem_type


def _with_modalities(
    dataset: datasets.Dataset | datasets.IterableDataset, columns: Sequence[str], count: int
) -> datasets.Dataset | datasets.IterableDataset:
    """The examples that have at least `count` of the modalities in `columns` (a stream is filtered as it is read,
    one example at a time).

    Example:

    ```python
    >>> list(_with_modalities(datasets.Dataset.from_dict({"text": ["a", None]}), ["text"], 1)["text"])
    ['a']
    ```"""

    def enough(*column_values):
        return [sum(not is_missing(value) for value in row) >= count for row in zip(*column_values)]

    # Each of the 10 readers that feed a stream's shuffle buffer at once runs the filter ahead: batches of one keep
    # what each holds to the row group it reads; 1,000-example batches held up to 1,000 examples each (README:
    # Streaming)
    options = {"batch_size": 1} if isinstance(dataset, datasets.IterableDataset) else {"keep_in_memory": True}
    return dataset.filter(enough, input_columns=list(columns), batched=True, **options)


def resnet_image_processor(size: int) -> MultimodalImageProcessor:
    """Square resize to `size` with ImageNet mean / std (no crop: small images such as digits keep every pixel), with
    the package's fast path for the RGB images the processor hands over."""
    return MultimodalImageProcessor(
        size={"shortest_edge": size}, crop_pct=1.0, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
    )


def parts_started_anew(model: MultimodalPreTrainedModel, loading: Mapping[str, Any]) -> list[str]:
    """The parts of `model` (`classifier`, `modality_classifiers`, `multimodal.fusion`, `multimodal.audio_model`, ...)
    some of whose weights a saved model did not give: missing from it, or of another shape (another label set, another
    fusion head), from `from_pretrained(..., output_loading_info=True)`'s `loading` info.

    Example:

    ```python
    >>> parts_started_anew(model, {"missing_keys": {"multimodal.fusion.output.weight"},
    ...                            "mismatched_keys": {("classifier.bias", (10,), (2,))}})  # doctest: +SKIP
    ['classifier', 'multimodal.fusion']
    ```
    """
    keys = set(loading["missing_keys"]) | {mismatch[0] for mismatch in loading["mismatched_keys"]}
    prefix = model.base_model_prefix
    return sorted({".".join(key.split(".")[: 2 if key.startswith(f"{prefix}.") else 1]) for key in keys})


def _log_parts_started_anew(model: MultimodalPreTrainedModel, source: str, loading: Mapping[str, Any]) -> None:
    """One line on what a run started from `source` trains anew and keeps, above transformers' load report (which
    lists every weight). A saved model that lacks an encoder's weights is refused as it loads (`modeling_safe_io`)."""
    parts = parts_started_anew(model, loading)
    if parts:
        logger.warning(
            f"Started from {source}: new weights for {', '.join(parts)} (the saved model has none that fit the head "
            "or labels asked for; the load report lists them); every other weight is the saved model's."
        )


def build_model_and_processor(
    model_args: ModelArguments,
    data_args: DataArguments,
    labels: Sequence[str],
    problem_type: str = "single_label_classification",
) -> tuple[MultimodalPreTrainedModel, MultimodalProcessor]:
    """The model and its processor: a `MultimodalForSequenceClassification` set up for `labels` and `problem_type`
    (regression: one output, named by `labels`), or for `--objective contrastive` a `MultimodalModel`; loaded from
    `--model_name_or_path` (a classifier may start from an aligned model) or assembled with `from_backbones`."""
    overrides = model_args.config_overrides()
    if model_args.objective == "classification":
        model_class, auto_class = MultimodalForSequenceClassification, AutoModelForSequenceClassification
        id2label = dict(enumerate(labels))
        overrides.update(
            id2label=id2label, label2id={label: index for index, label in id2label.items()}, problem_type=problem_type
        )
    else:
        model_class, auto_class = MultimodalModel, AutoModel
    if model_args.model_name_or_path is not None:
        model, loading = auto_class.from_pretrained(
            model_args.model_name_or_path, ignore_mismatched_sizes=True, output_loading_info=True, **overrides
        )
        _log_parts_started_anew(model, model_args.model_name_or_path, loading)
        processor = AutoProcessor.from_pretrained(model_args.model_name_or_path)
        missing = [m for m in model_args.modalities if m not in model.config.modalities]
        if missing:
            raise ValueError(
                f"{model_args.model_name_or_path} has no encoder for {missing}: its modalities are "
                f"{list(model.config.modalities)}; pass --modalities among those."
            )
    else:
        sources = {}
        for modality in MODALITIES:
            if modality not in model_args.modalities:
                sources[modality] = None
            elif getattr(model_args, f"{modality}_model") is not None:
                sources[modality] = getattr(model_args, f"{modality}_model")
            else:
                sources[modality] = _parse_config(getattr(model_args, f"{modality}_config"), f"--{modality}_config")
        model = model_class.from_backbones(**sources, fusion_hidden_size=model_args.fusion_hidden_size, **overrides)
        processor = MultimodalProcessor.from_backbones(
            **{m: getattr(model_args, f"{m}_model") if m in model_args.modalities else None for m in MODALITIES}
        )
        audio_config = model.config.audio_config
        if isinstance(audio_config, (WaveNetConfig, RecurrentEncoderConfig)) and model_args.audio_model is None:
            # the default feature extractor of a new WaveNet / recurrent encoder works at the rate its config names
            processor.feature_extractor.sampling_rate = audio_config.sampling_rate
    recorded = {**(model.config.backbones or {}), **model_args.backbone_hub_ids()}
    model.config.backbones = {m: recorded[m] for m in model.config.modalities if m in recorded} or None
    processor.max_text_length = data_args.max_text_tokens
    processor.feature_extractor.max_length_seconds = data_args.max_audio_seconds
    if data_args.image_size is not None:
        processor.image_processor = resnet_image_processor(data_args.image_size)
    for modality in model_args.freeze_modalities:
        if modality in model.config.modalities:
            model.get_encoder(modality).requires_grad_(False)
    feature_encoder_option = (  # the option that needs a feature encoder, for the error below
        "--freeze_feature_encoder" if model_args.freeze_feature_encoder
        else "--feature_encoder_learning_rate" if model_args.feature_encoder_learning_rate
        else "--feature_encoder_trainable_blocks" if model_args.feature_encoder_trainable_blocks
        else None
    )  # fmt: skip
    audio_encoder = model.get_encoder("audio") if "audio" in model.config.modalities else None
    if feature_encoder_option and feature_encoder_of(audio_encoder) is None:
        found = "no audio encoder" if audio_encoder is None else f"a {type(audio_encoder).__name__}"
        if hasattr(getattr(audio_encoder, "config", None), "frontend"):
            found += f" with frontend={audio_encoder.config.frontend!r}"
        raise ValueError(
            f"{feature_encoder_option} needs a WaveNet audio encoder with a feature encoder (frontend "
            "'speech_embedding', e.g. --audio_model <folder of scripts/convert_speech_embedding.py>); this model has "
            f"{found}."
        )
    if model_args.freeze_feature_encoder:
        audio_encoder.freeze_feature_encoder()
    elif model_args.feature_encoder_trainable_blocks:
        audio_encoder.freeze_feature_encoder(trainable_top_blocks=model_args.feature_encoder_trainable_blocks)
    if model_args.activation_checkpointing_modalities:
        model.activation_checkpointing_enable(modalities=model_args.activation_checkpointing_modalities)
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


def evaluate_split(
    trainer: MultimodalTrainer, dataset: datasets.Dataset, drop: Sequence[str] = ()
) -> dict[str, tuple[dict[str, float], np.ndarray, np.ndarray]]:
    """
    Predict `dataset` with every modality and without each modality of `drop`, from one pass of the encoders
    ([`MultimodalForSequenceClassification.ablation_logits`]: a variant re-runs only the fusion head and the
    classifier). Returns, for `"all"` then each `"without_<modality>"`, `(metrics, predictions, label_ids)`: the
    metrics of the collator's problem type (`trainer.compute_metrics`) with `num_examples`, and the predictions as
    class indices (the logits for multi-label and regression). As `trainer.predict`, it gathers the processes' batches
    and gives examples left without any modality the trainer's label-prior logits.
    """
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    problem_type = trainer.data_collator.problem_type
    variants = ["all", *(f"without_{modality}" for modality in drop)]
    logit_parts, label_parts = [], []
    for batch in trainer.get_test_dataloader(dataset):
        labels = batch.pop("labels")
        unavailable = batch.pop(UNAVAILABLE_KEY, None)
        keep = ~unavailable if unavailable is not None else torch.ones(len(labels), dtype=torch.bool, device=labels.device)
        logits = trainer.fallback_logits.to(labels.device).repeat(len(labels), len(variants), 1)
        if bool(keep.any()):  # the collator gave model inputs for the kept rows only
            with torch.no_grad(), trainer.accelerator.autocast():
                kept = model.ablation_logits(drop=drop, **batch)
            kept = torch.stack([kept[variant] for variant in variants], dim=1).float()
            logits[keep] = torch.where(kept.isnan(), logits[keep], kept)  # NaN: no modality left in that variant
        logit_parts.append(trainer.accelerator.gather_for_metrics(logits).cpu())
        label_parts.append(trainer.accelerator.gather_for_metrics(labels).cpu())
    all_logits, label_ids = torch.cat(logit_parts).numpy(), torch.cat(label_parts).numpy()
    results = {}
    for position, variant in enumerate(variants):
        logits = all_logits[:, position]
        computed = trainer.compute_metrics(EvalPrediction(predictions=logits, label_ids=label_ids))
        metrics = {name: float(computed[name]) for name in problem_type_metrics(problem_type)}
        metrics["num_examples"] = len(dataset)
        predictions = logits.argmax(-1) if problem_type == "single_label_classification" else logits
        results[variant] = (metrics, predictions, label_ids)
    return results


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
    """A Markdown table of a `metrics.json` dict: a classifier's test metrics (those of its `problem_type`),
    per-modality ablation and extra test splits, or an aligned model's retrieval recall and zero-shot accuracy."""
    modalities = results["modalities"]
    if results.get("objective", "classification") == "contrastive":
        return _format_alignment_table(results)
    rows = [("all modalities", results["test"])]
    rows += [(name.replace("_", " "), values) for name, values in results["ablation"].items()]
    rows += [(f"{name} split", values) for name, values in (results.get("extra_tests") or {}).items()]
    model = f"{results['fusion_type']} fusion of {', '.join(modalities)}" if len(modalities) > 1 else f"{modalities[0]} only"
    names = problem_type_metrics(results.get("problem_type"))
    lines = [
        f"Test results: {model} ({results['test']['num_examples']} examples)",
        "",
        "| evaluation | " + " | ".join(METRIC_NAMES[name] for name in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    lines += [f"| {name} | " + " | ".join(f"{values[m]:.3f}" for m in names) + " |" for name, values in rows]
    return "\n".join(lines)


def _format_alignment_table(results: Mapping[str, Any]) -> str:
    splits = {"test": results["test"], **(results.get("extra_tests") or {})}
    lines = [f"Alignment of {', '.join(results['modalities'])}: retrieval at the label level and zero-shot accuracy", ""]
    lines += ["| split | evaluation | recall@1 | recall@5 |", "|---|---|---|---|"]
    for split, values in splits.items():
        for name, first, wider in retrieval_recalls(values):
            lines.append(f"| {split} | {name.replace('_to_', ' -> ')} | {first:.3f} | {wider:.3f} |")
        for modality, scores in (values.get("zero_shot") or {}).items():
            lines.append(f"| {split} | zero-shot {modality} (accuracy) | {scores['accuracy']:.3f} | |")
    return "\n".join(lines)


def build_trainer(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: MultimodalTrainingArguments,
    callbacks: Sequence[TrainerCallback] = (),
    search: HyperparameterSearch | None = None,
) -> tuple[MultimodalTrainer, Splits]:
    """
    The run's `MultimodalTrainer` (model, processor, on-the-fly collator, metrics, model card and early-stopping
    callbacks, per-modality learning rates and freezing) and the dataset splits it trains and evaluates on. With a
    `search`, the trainer builds each trial's model through `model_init` (for `Trainer.hyperparameter_search`).

    Example:

    ```python
    >>> trainer, splits = build_trainer(*parse_arguments(["--dataset", "outputs/demo/data", "--output_dir", "out"]))
    >>> trainer.train()  # doctest: +SKIP
    ```
    """
    set_seed(training_args.seed)
    if data_args.streaming:
        _check_streaming(model_args, training_args)
    augmentation = data_args.augmentation(training_args.seed)
    if augmentation is not None and training_args.dataloader_persistent_workers and training_args.dataloader_num_workers:
        # persistent workers keep the collator they started with, so every epoch would draw epoch 0's augmentation
        raise ValueError(
            "--augment with --dataloader_persistent_workers: persistent workers would repeat the first epoch's "
            "augmentation every epoch. Drop --dataloader_persistent_workers (or --augment)."
        )
    contrastive = model_args.objective == "contrastive"
    splits = load_splits(
        data_args, model_args.modalities, training_args.seed, labelled=not contrastive, min_modalities=1 + contrastive
    )
    _check_best_model_metric(training_args, splits.problem_type, contrastive)
    model, processor = build_model_and_processor(model_args, data_args, splits.labels, splits.problem_type)
    model_init = None
    if search is not None:  # a trial's model (its fusion type, width, ...) is built as a run's is
        model_init = search.model_init(
            lambda args: build_model_and_processor(args, data_args, splits.labels, splits.problem_type)[0]
        )
    collator = MultimodalDataCollator(
        processor,
        # a saved model may have more encoders than --modalities asks to use
        modalities=[m for m in model.config.modalities if m in model_args.modalities],
        columns=data_args.columns(),
        label_column=None if contrastive else data_args.label_column,
        label_to_id=splits.label_to_id,
        problem_type=splits.problem_type,
        num_labels=len(splits.labels),
        max_audio_seconds=data_args.max_audio_seconds,
        return_loss=contrastive,
        augmentation=augmentation,
        pad_to_multiple_of=_bucket_multiples(data_args, training_args, processor),
    )
    all_callbacks = [*callbacks, ModelCardCallback(dataset=data_args.name)]
    train_dataset = splits.train
    if augmentation is not None:  # only rows carrying their index are augmented: the training split's
        if isinstance(splits.train, datasets.IterableDataset):  # a stream's examples are numbered as they come
            train_dataset = splits.train.map(lambda _, index: {INDEX_COLUMN: index}, with_indices=True)
        else:
            train_dataset = with_column(splits.train, INDEX_COLUMN, list(range(len(splits.train))))
        all_callbacks.append(AugmentationEpochCallback(augmentation))
    if training_args.train_sampling_strategy in LENGTH_STRATEGIES:  # every split the trainer batches is measured
        measured = partial(_with_lengths, name=training_args.length_column_name, data_args=data_args,
                           modalities=collator.modalities, processor=processor)  # fmt: skip
        train_dataset, splits.validation, splits.test = map(measured, (train_dataset, splits.validation, splits.test))
        splits.extra_tests = {name: measured(part) for name, part in splits.extra_tests.items()}
    if training_args.disable_tqdm:  # logs without progress bars (CI, files): one line per evaluation instead
        all_callbacks.append(ProgressLineCallback())
    if training_args.early_stopping_patience:
        all_callbacks.append(
            EarlyStoppingCallback(training_args.early_stopping_patience, training_args.early_stopping_threshold)
        )
    trainer = MultimodalTrainer(
        model=None if model_init else model,
        model_init=model_init,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=splits.validation,
        data_collator=collator,
        processing_class=processor,
        compute_metrics=None
        if contrastive
        else metrics_function(len(splits.labels), splits.problem_type, data_args.multi_label_threshold),
        callbacks=all_callbacks,
        learning_rates=model_args.learning_rates(),
        frozen_modalities=model_args.freeze_modalities,
        label_prior=None if contrastive else _label_prior(splits, collator),
    )
    freeze = None
    epochs = model_args.freeze_epochs()
    if epochs is not None:
        latest = max(epochs.values()) if isinstance(epochs, dict) else epochs
        if training_args.max_steps <= 0 and latest >= training_args.num_train_epochs:
            raise ValueError(
                f"--freeze_encoders_after_epochs {' '.join(model_args.freeze_encoders_after_epochs)} with "
                f"--num_train_epochs {training_args.num_train_epochs}: an encoder would never freeze. Pass fewer "
                "epochs before freezing, or train longer."
            )
        freeze = FreezeEncodersCallback(trainer, epochs)
        trainer.add_callback(freeze)
    if model_args.cache_frozen_features:
        # A whole encoder's cached features are pooled or sequences, as the head reads them: a search caches them only
        # when every head it may try reads what the run's head reads. A feature encoder's outputs fit every head.
        heads = search.fusion_types() if search is not None else ()
        reads = {FUSION_CLASSES[head].uses_sequences for head in heads}
        reads.add(trainer.model.base_model.fusion.uses_sequences)
        _use_feature_cache(trainer, splits, model_args, whole_encoders=len(reads) == 1, freeze=freeze)
    return trainer, splits


LENGTH_STRATEGIES = ("group_by_length", "batch_rebalance")
"""`--train_sampling_strategy` values whose sampler reads each example's length."""


def _with_lengths(
    split: datasets.Dataset | datasets.IterableDataset | None,
    name: str,
    data_args: DataArguments,
    modalities: Sequence[str],
    processor: MultimodalProcessor,
) -> datasets.Dataset | datasets.IterableDataset | None:
    """`split` with a column `name` of lengths (unless it has one), for transformers' length-grouped samplers
    (`--train_sampling_strategy group_by_length` / `batch_rebalance`, `--length_column_name`): each example's audio
    samples at the model's rate, up to `--max_audio_seconds` (read from the files' headers), when the run reads audio,
    the longest input and the costliest one to pad; else its text tokens. Examples of similar lengths then share
    batches and pad little (README: Length-grouped batches). A stream is left as it is: no sampler applies to one."""
    if not isinstance(split, datasets.Dataset) or name in split.column_names:
        return split
    if "audio" in modalities:
        column, rate = data_args.audio_column, processor.feature_extractor.sampling_rate

        def length(value: Any) -> int:
            return int(min(audio_duration(value), data_args.max_audio_seconds) * rate)

    elif "text" in modalities:
        column = data_args.text_column

        def length(value: Any) -> int:
            return len(processor.tokenizer(value, truncation=True, max_length=data_args.max_text_tokens).input_ids)

    else:
        raise ValueError(
            "--train_sampling_strategy group_by_length / batch_rebalance batch examples of similar lengths, and "
            "images have one size: use it in a run that reads text or audio, or give the dataset's splits a "
            f"{name!r} column (--length_column_name) of lengths."
        )
    batches = split.select_columns([column]).iter(batch_size=1000)
    lengths = [0 if is_missing(value) else length(value) for batch in batches for value in batch[column]]
    return with_column(split, name, lengths)


def _bucket_multiples(
    data_args: DataArguments, training_args: MultimodalTrainingArguments, processor: MultimodalProcessor
) -> dict[str, int]:
    """The collator's `pad_to_multiple_of` under `--bucket_shapes` (by default with `--torch_compile`), else none."""
    bucket = training_args.torch_compile if data_args.bucket_shapes is None else data_args.bucket_shapes
    if not bucket:
        return {}
    rate = processor.feature_extractor.sampling_rate
    return bucket_multiples(data_args.max_text_tokens, int(data_args.max_audio_seconds * rate))


def _use_feature_cache(
    trainer: MultimodalTrainer,
    splits: Splits,
    model_args: ModelArguments,
    whole_encoders: bool = True,
    freeze: FreezeEncodersCallback | None = None,
) -> None:
    """`--cache_frozen_features`: the output of each frozen encoder (and of the audio encoder's feature encoder under
    `--freeze_feature_encoder`, or of its frozen lower blocks under `--feature_encoder_trainable_blocks`) over every
    map-style split is computed once (or read from the cache), and the trainer and `splits` take the splits carrying
    its rows (README: Frozen-encoder cache). A training split that `--augment` changes is cached once per
    `--augment_copies` copy, or, without them, runs the encoder as usual, as a streamed one does. Without
    `whole_encoders` (a search whose trials may try a head over sequences while the run's head reads pooled features,
    or the other way round) only feature encoders are cached: their outputs do not depend on the head. The encoders
    that `freeze` (`--freeze_encoders_after_epochs`) freezes later get their rows, computed when they freeze."""
    modalities = [m for m in model_args.freeze_modalities if m in trainer.data_collator.modalities and whole_encoders]
    feature_encoder_modalities = [
        m for m in FEATURE_ENCODER_INPUT_NAMES
        if (model_args.freeze_feature_encoder or model_args.feature_encoder_trainable_blocks)
        and m in trainer.data_collator.modalities and m not in modalities
    ]  # fmt: skip
    if not modalities and not feature_encoder_modalities and not (freeze and freeze.parts):
        return
    parts = {"validation": splits.validation, "test": splits.test}
    parts.update({f"extra:{name}": part for name, part in splits.extra_tests.items()})
    if isinstance(trainer.train_dataset, datasets.Dataset):
        parts["train"] = trainer.train_dataset
    cached = cache_frozen_features(
        trainer, parts, modalities, model_args.feature_cache_dir, feature_encoder_modalities, freeze=freeze
    )
    trainer.train_dataset = cached.get("train", trainer.train_dataset)
    trainer.eval_dataset = splits.validation = cached["validation"]
    splits.test = cached["test"]
    splits.extra_tests = {name: cached[f"extra:{name}"] for name in splits.extra_tests}


def train_and_evaluate(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: MultimodalTrainingArguments,
    callbacks: Sequence[TrainerCallback] = (),
    extra_results: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """
    Train, keep the best checkpoint, save model + processor + pipeline code into `training_args.output_dir`,
    evaluate, and write `metrics.json` and the model card there (and `confusion_matrix.png` for a classifier).

    A classifier is evaluated on the test split with every modality and with each one removed, and on every
    `--extra_test_splits`; an aligned model (`--objective contrastive`) by retrieval recall@1 / recall@5 at the label
    level in every direction between its modalities and by zero-shot accuracy against the label names as text.

    Returns the `metrics.json` dict: `objective`, `problem_type` (a classifier's), `dataset`, `test` (the metrics of
    the problem type, e.g. accuracy, macro precision / recall / F1, and `num_examples`; for an aligned model
    `retrieval` and `zero_shot`), `ablation` (`without_<modality>` for each
    modality of a classifier that has several), `extra_tests`, `hyperparameters`, `modalities`, `fusion_type`,
    `labels` and `confusion_matrix`, and `extra_results` (such as the `hpo` record of a search).
    """
    output_dir = Path(training_args.output_dir)
    resume = _resolve_resume(training_args.resume_from_checkpoint, output_dir)
    trainer, splits = build_trainer(model_args, data_args, training_args, callbacks)
    model, processor = trainer.model, trainer.processing_class
    started = time.perf_counter()
    train_result = trainer.train(resume_from_checkpoint=resume)
    train_seconds = time.perf_counter() - started
    trainer.save_model(str(output_dir))  # the best model (load_best_model_at_end) and its processor, any backend
    tasks = [PIPELINE_TASK] if model_args.objective == "classification" else [RETRIEVAL_TASK]
    if model_args.objective == "contrastive" and "text" in model.config.modalities:
        tasks.append(ZERO_SHOT_TASK)
    if trainer.is_world_process_zero():
        # Saved again through the pipelines, from the files just written: adds their code and the config's
        # `custom_pipelines`, so that `pipeline(model=output_dir, trust_remote_code=True)` works without the package.
        for task in tasks:
            pipeline(task, model=str(output_dir)).save_pretrained(output_dir)

    local = data_args.train_file is not None or Path(data_args.dataset).exists()
    results = {
        "objective": model_args.objective,
        # a local dataset by its own name (datasets' info) or folder name, never by this machine's path
        "dataset": (local and splits.train.info.dataset_name) or data_args.name,
        "dataset_local": local,
        "modalities": list(trainer.data_collator.modalities),
        "fusion_type": model.config.fusion_type,
        "labels": list(splits.labels),
    }
    if model_args.objective == "classification":
        results["problem_type"] = splits.problem_type
    if model_args.objective == "classification":
        results.update(evaluate_classifier(trainer, splits))
    elif trainer.is_world_process_zero():
        tests = {data_args.test_split: splits.test, **splits.extra_tests}
        retriever = pipeline(RETRIEVAL_TASK, model=str(output_dir))
        modalities = [m for m in model.config.modalities if m in trainer.data_collator.modalities]
        batch_size = training_args.per_device_eval_batch_size
        banks = query_banks(retriever, splits.train, data_args, modalities, batch_size, training_args.seed)
        evaluated = {
            name: evaluate_alignment(retriever, part, data_args, splits, modalities, batch_size, banks)
            for name, part in tests.items()
        }
        results["test"] = evaluated.pop(data_args.test_split)
        results["extra_tests"] = evaluated
    results["hyperparameters"] = _hyperparameters(model_args, data_args, trainer, train_result, train_seconds)
    results.update(extra_results or {})
    if trainer.is_world_process_zero():
        if "predictions" in results:
            predictions, label_ids = results.pop("predictions")
            results["confusion_matrix"] = save_confusion_matrix(
                label_ids, predictions, splits.labels, output_dir / "confusion_matrix.png"
            )
        (output_dir / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
        card = model_card_from_output_folder(output_dir, repo_id=training_args.hub_model_id, processor=processor)
        card.save(output_dir / "README.md")
        print(format_results_table(results), flush=True)
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="End of training: best model, processor, test results and model card")
    return results


def evaluate_classifier(trainer: MultimodalTrainer, splits: Splits) -> dict[str, Any]:
    """Test metrics, the per-modality ablation (each modality removed from every test example) and the metrics of
    the extra test splits; `predictions` holds the test predictions and labels for the confusion matrix."""
    modalities = trainer.data_collator.modalities
    test = evaluate_split(trainer, splits.test, drop=modalities if len(modalities) > 1 else ())
    test_metrics, predictions, label_ids = test.pop("all")
    classes = splits.problem_type == "single_label_classification"  # the confusion matrix of class predictions
    ablation = {variant: metrics for variant, (metrics, _, _) in test.items()}
    extra_tests = {name: evaluate_split(trainer, part)["all"][0] for name, part in splits.extra_tests.items()}
    return {
        "test": test_metrics,
        "ablation": ablation,
        "extra_tests": extra_tests,
        **({"predictions": (predictions, label_ids)} if classes else {}),
    }


QUERY_BANK_SIZE = 2048
"""Training examples embedded as the query bank of an aligned model's evaluation (enough for a mean embedding)."""


def _index_modalities(
    retriever: MultimodalRetrievalPipeline,
    rows: Sequence[Mapping[str, Any]],
    columns: Mapping[str, str],
    modalities: Sequence[str],
    batch_size: int,
) -> dict[str, tuple[GalleryIndex, list[int]]]:
    """Each modality's values among `rows` indexed as a gallery, with the row of each item (missing values left out)."""
    galleries = {}
    for modality in modalities:
        present = [row for row, example in enumerate(rows) if not is_missing(example.get(columns[modality]))]
        if present:
            values = [rows[row][columns[modality]] for row in present]
            galleries[modality] = (retriever.index(values, modality=modality, batch_size=batch_size), present)
    return galleries


def query_banks(
    retriever: MultimodalRetrievalPipeline,
    train: datasets.Dataset | datasets.IterableDataset,
    data_args: DataArguments,
    modalities: Sequence[str],
    batch_size: int,
    seed: int,
) -> dict[str, GalleryIndex]:
    """Up to `QUERY_BANK_SIZE` training examples (a seeded sample), each modality indexed as the query bank of the
    queries of that modality (`GalleryIndex.search`): typical queries, never the test examples."""
    if isinstance(train, datasets.Dataset):
        train = train.shuffle(seed=seed)
    rows = list(train.take(QUERY_BANK_SIZE))
    indexed = _index_modalities(retriever, rows, data_args.columns(), modalities, batch_size)
    return {modality: bank for modality, (bank, _) in indexed.items()}


def evaluate_alignment(
    retriever: MultimodalRetrievalPipeline,
    dataset: datasets.Dataset,
    data_args: DataArguments,
    splits: Splits,
    modalities: Sequence[str],
    batch_size: int,
    banks: Mapping[str, GalleryIndex] | None = None,
) -> dict[str, Any]:
    """How well an aligned model (its retrieval pipeline) puts matching examples together.

    Every modality of `dataset` is indexed as a gallery; each item of one modality queries the gallery of each other
    modality, and counts as found at k when one of its top k results has its label (retrieval at the label level:
    for digits, "a recording of a 7 finds a scan of a 7"): `retrieval` ranks by cosine similarity, and
    `retrieval_query_bank` with the queries' modality's bank of `banks` (training examples: `query_banks`). Zero-shot
    accuracy: each non-text item against the label names embedded as text, the closest one being the prediction.
    Without a label column only `num_examples` is reported.
    """
    columns, label_column = data_args.columns(), data_args.label_column
    results: dict[str, Any] = {"num_examples": len(dataset)}
    if label_column not in dataset.column_names or not splits.labels:
        return results
    label_ids = [splits.label_to_id[v] if splits.label_to_id else int(v) for v in dataset[label_column]]
    rows = dataset.select_columns([columns[m] for m in modalities]).to_list()
    indexed = _index_modalities(retriever, rows, columns, modalities, batch_size)
    galleries = {modality: gallery for modality, (gallery, _) in indexed.items()}
    item_labels = {modality: np.array([label_ids[row] for row in present]) for modality, (_, present) in indexed.items()}
    # each ranking with the query bank of each query modality (none for the cosine ranking)
    rankings = {"retrieval": {}, **({"retrieval_query_bank": banks} if banks else {})}
    for ranking, bank_of in rankings.items():
        results[ranking] = {}
        for query, gallery in itertools.permutations(galleries, 2):
            top_k = min(5, len(galleries[gallery]))
            ranked = galleries[gallery].search(galleries[query].embeddings, top_k, query_bank=bank_of.get(query))
            hits = np.array([[item_labels[gallery][hit["index"]] for hit in row] for row in ranked])
            found = hits == item_labels[query][:, None]
            results[ranking][f"{query}_to_{gallery}"] = {
                "recall@1": float(found[:, 0].mean()),
                f"recall@{top_k}": float(found.any(axis=1).mean()),
                "num_queries": len(found),
            }
    if "text" in modalities:
        prompts = retriever.index([{"text": name} for name in splits.labels], batch_size=batch_size).embeddings
        results["zero_shot"] = {
            modality: {
                "accuracy": float(((gallery.embeddings @ prompts.T).argmax(axis=1) == item_labels[modality]).mean()),
                "num_examples": len(gallery),
            }
            for modality, gallery in galleries.items()
            if modality != "text"
        }
    return results


def _check_streaming(model_args: ModelArguments, training_args: MultimodalTrainingArguments) -> None:
    """Refuse the options a `--streaming` run cannot honour (each needs the length of the training data), and let
    every process read its own part of the stream: accelerate then shards it (by its files / shards where there are
    enough, else every process keeps its share of each batch) instead of dispatching every batch from process 0."""
    if training_args.max_steps <= 0:
        raise ValueError(
            "--streaming needs --max_steps: a stream has no known length, so the number of epochs cannot say when "
            "training ends. Pass --max_steps N (e.g. epochs x examples / (batch size x processes))."
        )
    by_epoch = [option for option in ("eval_strategy", "save_strategy") if getattr(training_args, option) == "epoch"]
    if by_epoch:
        raise ValueError(
            f"--streaming with {' and '.join(f'--{option} epoch' for option in by_epoch)}: the end of an epoch of a "
            "stream is not a known step (and may differ between processes). Pass --eval_strategy steps --eval_steps "
            "N --save_strategy steps --save_steps N."
        )
    if model_args.hpo_trials:
        raise ValueError(
            "--hpo_trials with --streaming: the search sizes its trials and pruning in epochs of the training data. "
            "Search on a map-style copy of a part of the data (--max_train_samples without --streaming)."
        )
    if training_args.accelerator_config.dispatch_batches is None:
        training_args.accelerator_config.dispatch_batches = False


def _check_best_model_metric(training_args: MultimodalTrainingArguments, problem_type: str, contrastive: bool) -> None:
    """`--metric_for_best_model` must be the loss or a metric the run computes (those of its problem type)."""
    metric = (training_args.metric_for_best_model or "loss").removeprefix("eval_")
    allowed = ("loss",) if contrastive else ("loss", *problem_type_metrics(problem_type))
    if metric not in allowed:
        raise ValueError(
            f"--metric_for_best_model {metric} is not computed for {'contrastive training' if contrastive else problem_type}: "
            f"pass one of {', '.join(allowed)}."
        )


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


def _label_prior(splits: Splits, collator: MultimodalDataCollator) -> torch.Tensor:
    """The training set's best guess without input (`MultimodalTrainer`'s `label_prior`): class frequencies, per-label
    frequencies (multi-label) or the mean target (regression)."""
    column = collator.label_column
    if isinstance(splits.train, datasets.IterableDataset):  # a stream: estimated from its first examples
        values = [row[column] for row in splits.train.select_columns([column]).take(LABEL_PRIOR_EXAMPLES)]
    else:
        values = splits.train[column]
    labels = collator.labels_tensor(values)
    if splits.problem_type == "single_label_classification":
        counts = torch.bincount(labels, minlength=len(splits.labels)).double()
        return (counts / counts.sum()).float()
    return labels.double().mean(dim=0).reshape(-1).float()


def _hyperparameters(model_args, data_args, trainer, train_result, train_seconds) -> dict[str, Any]:
    """The run's settings and outcome for `metrics.json` (the model card shows them): the model and data arguments,
    the training arguments as `hyperparameters_from_args` names them, and what the run did."""
    state = trainer.state
    backbones = trainer.model.config.backbones or {}
    return without_local_paths({
        **asdict(model_args),
        # a pretrained encoder by its Hub id where known, rather than the folder it was read from
        **{f"{m}_model": backbones[m] for m in backbones if getattr(model_args, f"{m}_model", None)},
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
    })


def search_hyperparameters(
    model_args: ModelArguments, data_args: DataArguments, training_args: MultimodalTrainingArguments
) -> tuple[ModelArguments, dict[str, Any]]:
    """
    `--hpo_trials`: search the settings of `--hpo_space` (default: `default_search_space`) with
    `Trainer.hyperparameter_search` and Optuna. Each trial trains `--hpo_epochs` epochs without checkpoints in a
    temporary folder, is evaluated every `--eval_strategy` on the validation split by `--metric_for_best_model`, and
    is pruned when that lags the median of the earlier trials (from the end of its first epoch on). Returns the model
    arguments with the best trial's settings, and the search record (`metrics.json`'s `hpo`).

    Example:

    ```python
    >>> argv = ["--dataset", "outputs/demo/data", "--output_dir", "out", "--hpo_trials", "8"]
    >>> best_args, record = search_hyperparameters(*parse_arguments(argv))  # doctest: +SKIP
    >>> best_args.fusion_type, len(record["trials"])  # doctest: +SKIP
    ('concat', 8)
    ```
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("--hpo_trials runs in one process: start scripts/train.py with python, not a launcher.")
    if model_args.hpo_space is not None:
        space = load_search_space(model_args.hpo_space)
    else:
        space = default_search_space(
            model_args.modalities, model_args.freeze_modalities, new_model=model_args.model_name_or_path is None
        )
    metric = training_args.metric_for_best_model or "loss"
    search = HyperparameterSearch(space, model_args, metric, greater_is_better=bool(training_args.greater_is_better))
    with tempfile.TemporaryDirectory(prefix="hpo_trials_") as folder:
        trial_args = replace(
            training_args,
            output_dir=folder,
            num_train_epochs=model_args.hpo_epochs or training_args.num_train_epochs,
            save_strategy="no",
            load_best_model_at_end=False,
            early_stopping_patience=0,  # the pruner stops trials early
            push_to_hub=False,
        )
        trainer, splits = build_trainer(model_args, data_args, trial_args, search=search)
        epoch_steps = -(-len(splits.train) // (trial_args.train_batch_size * trial_args.gradient_accumulation_steps))
        record = search.run(trainer, model_args.hpo_trials, training_args.seed, warmup_steps=epoch_steps)
    record["epochs_per_trial"] = trial_args.num_train_epochs
    logger.warning(f"Hyper-parameter search: best trial {record['best']['number']}, {record['best']['params']}.")
    return search.arguments(record["best"]["params"]), record


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
    extra_results = {}
    if model_args.hpo_trials:
        model_args, extra_results["hpo"] = search_hyperparameters(model_args, data_args, training_args)
    return train_and_evaluate(model_args, data_args, training_args, callbacks=callbacks, extra_results=extra_results)


if __name__ == "__main__":
    main()
