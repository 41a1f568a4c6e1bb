"""Composite configuration of a text + image + audio classifier with a pluggable fusion head."""

from __future__ import annotations

import warnings
from dataclasses import field
from typing import Any, ClassVar

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .configuration_recurrent import RecurrentEncoderConfig
from .configuration_wavenet import WaveNetConfig


MODALITIES: tuple[str, ...] = ("text", "image", "audio")
"""Every modality, in the fixed order used for presence masks and fusion inputs."""

FUSION_TYPES: tuple[str, ...] = (
    "concat",
    "weighted_sum",
    "gated",
    "attention",
    "transformer",
    "bilstm",
    "low_rank_tensor",
    "comparator",
)
"""Names accepted by `MultimodalConfig.fusion_type` (see `modeling_fusion.FUSION_CLASSES`)."""

PROBLEM_TYPES: tuple[str, ...] = ("single_label_classification", "multi_label_classification", "regression")

SUB_CONFIG_KEYS = {"text": "text_config", "image": "vision_config", "audio": "audio_config"}
"""Sub-config attribute per modality. The image encoder's config keeps transformers' name, `vision_config` (as in
CLIP or CLAP); everything else is keyed by the modality's name ("image")."""
_DEFAULT_MODEL_TYPES = {"text_config": "bert", "vision_config": "resnet", "audio_config": "wavenet"}
PACKAGE_CONFIGS: dict[str, type[PreTrainedConfig]] = {
    config_class.model_type: config_class for config_class in (WaveNetConfig, RecurrentEncoderConfig)
}
"""The package's own encoder configs by `model_type`: built without the Auto registry, which remote code lacks."""
RECURRENT_INPUT_KINDS = {"text_config": "tokens", "audio_config": "audio"}
"""The `input_kind` a `RecurrentEncoderConfig` must have under each sub-config key (the default of a dict there)."""


def _build_sub_config(key: str, value: PreTrainedConfig | dict | None) -> PreTrainedConfig | None:
    """A sub-config from a config object, a dict (with an optional `model_type`) or None (modality absent)."""
    if value is None or isinstance(value, PreTrainedConfig):
        return value
    if not isinstance(value, dict):
        raise TypeError(
            f"{key} must be a PreTrainedConfig, a dict or None (modality absent), got {type(value).__name__}."
        )
    values = dict(value)
    model_type = values.pop("model_type", _DEFAULT_MODEL_TYPES[key])
    if model_type == RecurrentEncoderConfig.model_type and key in RECURRENT_INPUT_KINDS:
        values.setdefault("input_kind", RECURRENT_INPUT_KINDS[key])
    if model_type in PACKAGE_CONFIGS:
        return PACKAGE_CONFIGS[model_type](**values)
    try:
        return AutoConfig.for_model(model_type, **values)
    except ValueError as error:
        raise ValueError(
            f"{key} has model_type {model_type!r}, which transformers does not know: use a model type that "
            "AutoModel.from_config can build (e.g. 'bert', 'distilbert', 'resnet', 'vit', 'wav2vec2'), 'wavenet' or "
            "'recurrent_encoder'."
        ) from error


def image_or_deprecated_vision(image: Any, vision: Any, caller: str) -> Any:
    """The `image=` argument of `caller`, or its deprecated spelling `vision=` (with a `FutureWarning`)."""
    if vision is None:
        return image
    if image is not None:
        raise ValueError(f"{caller} got both image= and vision= (its deprecated name): pass image= only.")
    warnings.warn(f"{caller}(vision=...) is deprecated: pass image=... instead.", FutureWarning, stacklevel=3)
    return vision


LOADED_AS_REMOTE_CODE = __name__.startswith("transformers_modules.")
"""True in the copy of this file that `trust_remote_code=True` runs; False in the installed package, whose import
registers every class and `pipeline("multimodal-classification")`."""


class LocallyServedPipelines(dict):
    """A saved config's `custom_pipelines` (task -> pipeline code in the folder), as the installed package keeps it.

    transformers' `pipeline()` infers a missing task from these keys, then runs the folder's pipeline code for a task
    `in` them, which demands `trust_remote_code=True`. A task that the imported package registered itself is not `in`
    this mapping, so `pipeline(model=folder)` and `pipeline("multimodal-classification", model=folder)` both run the
    installed pipeline, with or without `trust_remote_code`, while the entries still save unchanged for remote code.
    """

    def __contains__(self, task: object) -> bool:
        from transformers.pipelines import PIPELINE_REGISTRY

        return super().__contains__(task) and task not in PIPELINE_REGISTRY.get_supported_tasks()


class MultimodalConfig(PreTrainedConfig):
    r"""
    Configuration of [`MultimodalModel`] and [`MultimodalForSequenceClassification`]: one encoder per modality, each
    projected to `fusion_hidden_size`, fused by the head named in `fusion_type`.

    Args:
        text_config (`PreTrainedConfig`, `dict` or `None`, *optional*):
            Text encoder config; any config that `AutoModel.from_config` builds (a dict may name its `model_type`).
            Defaults to `BertConfig()`; `None` builds a model without text.
        vision_config (`PreTrainedConfig`, `dict` or `None`, *optional*):
            Image encoder config; defaults to `ResNetConfig()`; `None` builds a model without images.
        audio_config (`PreTrainedConfig`, `dict` or `None`, *optional*):
            Audio encoder config (a raw-waveform encoder); defaults to `WaveNetConfig()`; `None` builds a model
            without audio.
        fusion_type (`str`, *optional*, defaults to `"gated"`):
            One of `"concat"`, `"weighted_sum"`, `"gated"`, `"attention"`, `"transformer"`, `"bilstm"`,
            `"low_rank_tensor"`, `"comparator"` (see `FUSION_CLASSES` in `modeling_fusion.py`; for labels that are
            a relation between modalities, such as "do the image and the recording show the same thing", use one
            that can express it: `"comparator"`, `"concat"`, `"transformer"` or `"low_rank_tensor"`).
        fusion_hidden_size (`int`, *optional*, defaults to 256):
            Width every modality is projected to, and of the fused embedding.
        fusion_num_layers (`int`, *optional*, defaults to 2):
            Layers of the `"transformer"` and `"bilstm"` fusion heads.
        fusion_num_heads (`int`, *optional*, defaults to 4):
            Attention heads of the `"attention"` and `"transformer"` fusion heads.
        fusion_rank (`int`, *optional*, defaults to 8):
            Rank of the `"low_rank_tensor"` fusion head.
        fusion_dropout (`float`, *optional*, defaults to 0.1):
            Dropout inside the fusion head.
        classifier_dropout (`float`, *optional*, defaults to 0.1):
            Dropout before the classification layer.
        modality_dropout (`float`, *optional*, defaults to 0.0):
            Training-time probability of hiding each present modality of an example from the fusion head, to make the
            model robust to missing modalities. At least `modality_dropout_min_present` of them are always kept.
        modality_dropout_min_present (`int`, *optional*, defaults to 1):
            Modality dropout never leaves an example with fewer present modalities than this (nor hides any of an
            example that has no more). Set 2 when the label is a relation between modalities: a row left with one
            modality says nothing about the relation, and dropout would turn its label into noise.
        contrastive_loss_weight (`float`, *optional*, defaults to 0.0):
            Weight of an auxiliary InfoNCE loss that aligns the embeddings of every pair of modalities present in the
            same example (see `MultimodalModel.forward(return_loss=True)`), added to the classification loss during
            training. Only meaningful when the modalities of an example describe the same thing (not for relational
            labels such as "same" / "different").
        modality_loss_weight (`float`, *optional*, defaults to 0.0):
            Weight of auxiliary per-modality classification losses (a linear classifier on each modality's own
            embedding, on the examples that have it), added during training so that every encoder learns to read
            its modality even when another one dominates the fused prediction.
        logit_scale_init_value (`float`, *optional*, defaults to 2.6592):
            Initial value of the learnable log inverse temperature of the contrastive loss (CLIP's `ln(1 / 0.07)`).
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialiser of the projection, fusion and classification layers.
        backbones (`dict[str, str]`, *optional*):
            Where each pretrained encoder came from (`{"text": "<hub id or folder>"}`), recorded by
            `from_backbones` for model cards.
        num_labels, id2label, label2id, problem_type:
            As in transformers' sequence classifiers.

    Example:

    ```python
    >>> from hf_multimodal import MultimodalConfig
    >>> config = MultimodalConfig(
    ...     text_config={"model_type": "distilbert", "dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64},
    ...     vision_config=None,
    ...     fusion_type="attention",
    ...     num_labels=3,
    ... )
    >>> config.modalities
    ('text', 'audio')
    ```
    """

    model_type = "hf_multimodal"
    sub_configs_defaults: ClassVar[dict] = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="bert", optional=True),
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="resnet", optional=True),
        "audio_config": SubConfigSpec(config_class=WaveNetConfig, optional=True),
    }
    keys_to_ignore_at_inference: ClassVar[list[str]] = [
        "fused_embeds",
        "text_embeds",
        "image_embeds",
        "audio_embeds",
        "presence",
    ]

    # An empty dict means "the default encoder of this modality"; None means "no such modality".
    text_config: dict | PreTrainedConfig | None = field(default_factory=dict)
    vision_config: dict | PreTrainedConfig | None = field(default_factory=dict)
    audio_config: dict | PreTrainedConfig | None = field(default_factory=dict)
    fusion_type: str = "gated"
    fusion_hidden_size: int = 256
    fusion_num_layers: int = 2
    fusion_num_heads: int = 4
    fusion_rank: int = 8
    fusion_dropout: float = 0.1
    classifier_dropout: float = 0.1
    modality_dropout: float = 0.0
    modality_dropout_min_present: int = 1
    contrastive_loss_weight: float = 0.0
    modality_loss_weight: float = 0.0
    logit_scale_init_value: float = 2.6592
    initializer_range: float = 0.02
    backbones: dict[str, str] | None = None

    def __post_init__(self, **kwargs):
        if kwargs.get("custom_pipelines") and not LOADED_AS_REMOTE_CODE:
            kwargs["custom_pipelines"] = LocallyServedPipelines(kwargs["custom_pipelines"])
        for key in SUB_CONFIG_KEYS.values():
            setattr(self, key, _build_sub_config(key, getattr(self, key)))
        super().__post_init__(**kwargs)
        self._check()

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities this model has an encoder for, in `MODALITIES` order."""
        return tuple(modality for modality in MODALITIES if self.sub_config(modality) is not None)

    def sub_config(self, modality: str) -> PreTrainedConfig | None:
        """The encoder config of `modality` ("text", "image" or "audio"), or None when the model has no such encoder."""
        if modality not in SUB_CONFIG_KEYS:
            raise ValueError(f"unknown modality {modality!r}: expected one of {', '.join(MODALITIES)}.")
        return getattr(self, SUB_CONFIG_KEYS[modality])

    def _check(self) -> None:
        if self.fusion_type not in FUSION_TYPES:
            raise ValueError(f"fusion_type must be one of {', '.join(FUSION_TYPES)}; got {self.fusion_type!r}.")
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"problem_type must be one of {', '.join(PROBLEM_TYPES)} or None; got {self.problem_type!r}.")
        if not self.modalities:
            raise ValueError(
                "text_config, vision_config and audio_config are all None: a multimodal model needs at least one "
                "encoder. Pass a config (or {} for the default) for at least one modality."
            )
        for key in SUB_CONFIG_KEYS.values():
            sub_config = getattr(self, key)
            expected = RECURRENT_INPUT_KINDS.get(key)
            if getattr(sub_config, "model_type", None) == RecurrentEncoderConfig.model_type and (
                sub_config.input_kind != expected
            ):
                raise ValueError(
                    f"{key} is a recurrent_encoder with input_kind {sub_config.input_kind!r}: "
                    + (f"set input_kind={expected!r}." if expected else "recurrent encoders read tokens or audio only.")
                )
        sizes = ("fusion_hidden_size", "fusion_num_layers", "fusion_num_heads", "fusion_rank", "modality_dropout_min_present")
        for name in sizes:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
        if self.fusion_hidden_size % self.fusion_num_heads:
            raise ValueError(
                f"fusion_hidden_size ({self.fusion_hidden_size}) must be divisible by fusion_num_heads "
                f"({self.fusion_num_heads}): change one of them."
            )
        for name in ("fusion_dropout", "classifier_dropout", "modality_dropout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}.")
        for name in ("contrastive_loss_weight", "modality_loss_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0.0:
                raise ValueError(f"{name} must be a number >= 0 (0 turns the loss off), got {value!r}.")


__all__ = ["FUSION_TYPES", "MODALITIES", "PACKAGE_CONFIGS", "SUB_CONFIG_KEYS", "MultimodalConfig"]
