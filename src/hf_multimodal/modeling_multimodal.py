"""Multimodal (text + image + audio) encoders fused by a pluggable head, and the sequence classifier on top."""

from __future__ import annotations

import inspect
import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import MODEL_MAPPING, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling, ModelOutput

from .configuration_multimodal import MODALITIES, SUB_CONFIG_KEYS, MultimodalConfig, image_or_deprecated_vision
from .configuration_recurrent import RecurrentEncoderConfig
from .configuration_wavenet import WaveNetConfig
from .modeling_fusion import FUSION_CLASSES, LowRankTensorFusion, MultimodalFusion
from .modeling_recurrent import RecurrentEncoderModel
from .modeling_safe_io import SafeSerializationMixin, load_safetensors_only
from .modeling_wavenet import WaveNetModel, masked_mean


INPUT_NAMES: dict[str, tuple[str, ...]] = {
    "text": ("input_ids", "attention_mask", "token_type_ids"),
    "image": ("pixel_values",),
    "audio": ("input_values", "audio_attention_mask"),
}
"""Model input names per modality; the first one of each is the modality's main input."""

PACKAGE_ENCODERS: dict[str, type[PreTrainedModel]] = {
    WaveNetConfig.model_type: WaveNetModel,
    RecurrentEncoderConfig.model_type: RecurrentEncoderModel,
}
"""The package's own encoders by `model_type` (by name: remote code may load a second copy of their classes, which
the Auto registry does not know)."""

PRESENCE_NAMES: dict[str, str] = {"text": "has_text", "image": "has_image", "audio": "has_audio"}
"""Per-example presence masks, `(batch_size,)` bool: False where an example lacks that modality."""

FEATURE_INPUT_NAMES: dict[str, tuple[str, str]] = {
    "text": ("text_encoder_features", "text_encoder_mask"),
    "image": ("image_encoder_features", "image_encoder_mask"),
    "audio": ("audio_encoder_features", "audio_encoder_mask"),
}
"""Per modality, the inputs that stand for its encoder's output (from [`MultimodalModel.encoder_features`], e.g.
cached for a frozen encoder): the features, then the mask of their real positions (sequences only)."""

FEATURE_ENCODER_INPUT_NAMES: dict[str, tuple[str, str]] = {
    "audio": ("audio_feature_encoder_outputs", "audio_feature_encoder_mask"),
}
"""Per modality whose encoder has a feature encoder (the WaveNet encoder's `"speech_embedding"` stack), the inputs
that stand for that part's output, or for the output of its lower blocks (from
[`WaveNetModel.compute_feature_encoder_outputs`], e.g. cached for a frozen stack or its frozen lower blocks): the
outputs, then the mask of their real frames (columns). The rest of the encoder runs on them."""

ENCODER_ATTRIBUTES: dict[str, str] = {"text": "text_model", "image": "vision_model", "audio": "audio_model"}

REMOTE_CODE_AUTO_MAP: dict[str, str] = {
    "AutoConfig": "configuration_multimodal.MultimodalConfig",
    "AutoModel": "modeling_multimodal.MultimodalModel",
    "AutoModelForSequenceClassification": "modeling_multimodal.MultimodalForSequenceClassification",
}
"""Every Auto class a saved folder loads with under `trust_remote_code=True`, whichever head was saved."""


def default_score_function(config: MultimodalConfig) -> str:
    """How a classifier's logits become the scores users see by default: `"none"` (the values) for regression,
    `"sigmoid"` for multi-label models and models with one label, `"softmax"` otherwise."""
    if config.problem_type == "regression":
        return "none"
    if config.problem_type == "multi_label_classification" or config.num_labels == 1:
        return "sigmoid"
    return "softmax"


def scores_from_logits(logits: torch.Tensor, function: str) -> torch.Tensor:
    """`logits` turned into scores by `function`: `"softmax"` (over the last dimension), `"sigmoid"` or `"none"`."""
    if function == "softmax":
        return torch.softmax(logits, dim=-1)
    if function == "sigmoid":
        return torch.sigmoid(logits)
    return logits


@dataclass
class ModalityImportanceOutput(ModelOutput):
    r"""
    Output of [`MultimodalForSequenceClassification.modality_importance`].

    Args:
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
            The classifier's logits with every present modality.
        predicted (`torch.LongTensor` of shape `(batch_size,)`):
            The label each importance refers to: the best-scored one with every present modality.
        importance (`torch.FloatTensor` of shape `(batch_size, num_modalities)`):
            For each example and modality (in `config.modalities` order), the score of `predicted` with every present
            modality minus its score with that modality left out. NaN where the example lacks the modality, or has
            no other one.
        fusion_weights (`torch.FloatTensor` of shape `(batch_size, num_modalities)`, *optional*):
            A second view, for fusion heads that weigh the modalities (`weighted_sum`: its softmax weights, `gated`:
            its gates, `attention`: the query's attention, averaged over heads): the weight each present modality got
            in the fused embedding, summing to 1 per example, 0 where absent; `None` for the other heads. A weight
            says how much of a modality went into the fused vector, not whether it moved the prediction.
    """

    logits: torch.FloatTensor | None = None
    predicted: torch.LongTensor | None = None
    importance: torch.FloatTensor | None = None
    fusion_weights: torch.FloatTensor | None = None


@dataclass
class MultimodalModelOutput(ModelOutput):
    r"""
    Output of [`MultimodalModel`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, returned with `return_loss=True`):
            Contrastive (InfoNCE) loss between the embeddings of every pair of modalities present in the same
            examples (see [`MultimodalModel.contrastive_loss`]).
        fused_embeds (`torch.FloatTensor` of shape `(batch_size, fusion_hidden_size)`):
            The fused embedding of each example.
        text_embeds, image_embeds, audio_embeds (`torch.FloatTensor` of shape `(batch_size, fusion_hidden_size)`):
            Each modality's pooled, projected embedding (zeros for examples without it); `None` when the modality
            was not in the inputs. These live in one space shared by the modalities (aligned by the contrastive
            loss), as `get_text_features` / `get_image_features` / `get_audio_features` return them.
        presence (`torch.BoolTensor` of shape `(batch_size, num_modalities)`):
            Which modalities the fusion head used for each example, columns in `config.modalities` order (after
            `modality_dropout` during training).
        text_hidden_states, image_hidden_states, audio_hidden_states (`tuple(torch.FloatTensor)`, returned with
            `output_hidden_states=True`):
            The hidden states of each encoder (its embeddings, then every layer or stage, as that encoder returns them
            with `output_hidden_states=True`), each of shape `(batch_size, ...)`, zero for examples without the
            modality; `None` when no example has it.
    """

    loss: torch.FloatTensor | None = None
    fused_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    audio_embeds: torch.FloatTensor | None = None
    presence: torch.BoolTensor | None = None
    text_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    image_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    audio_hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class MultimodalSequenceClassifierOutput(ModelOutput):
    r"""
    Output of [`MultimodalForSequenceClassification`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, returned when `labels` is given):
            Cross-entropy, binary cross-entropy or mean squared error, depending on `config.problem_type`; in
            training mode plus the auxiliary losses that `config.contrastive_loss_weight` and
            `config.modality_loss_weight` turn on.
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
            Classification (or regression) scores before softmax / sigmoid.
        fused_embeds, text_embeds, image_embeds, audio_embeds, presence, text_hidden_states, image_hidden_states,
        audio_hidden_states:
            As in [`MultimodalModelOutput`].
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    fused_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    audio_embeds: torch.FloatTensor | None = None
    presence: torch.BoolTensor | None = None
    text_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    image_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    audio_hidden_states: tuple[torch.FloatTensor, ...] | None = None


def build_encoder(config: PreTrainedConfig) -> PreTrainedModel:
    """A randomly initialised encoder for `config`, without a pooling layer where the architecture has one to drop
    (poolers would be unused parameters: the multimodal model mean-pools the last hidden state)."""
    if config.model_type in PACKAGE_ENCODERS:
        return PACKAGE_ENCODERS[config.model_type](config)
    model_class = MODEL_MAPPING[type(config)]
    if "add_pooling_layer" in inspect.signature(model_class.__init__).parameters:
        return model_class(config, add_pooling_layer=False)
    return model_class(config)


def encoder_output_size(config: PreTrainedConfig) -> int:
    """Width of the last hidden state of the encoder built from `config`."""
    hidden_sizes = getattr(config, "hidden_sizes", None)
    return hidden_sizes[-1] if hidden_sizes else config.hidden_size


def allow_compiling_recurrent_layers(model: nn.Module) -> bool:
    """Let `torch.compile` trace the `nn.LSTM` / `nn.GRU` / `nn.RNN` layers of `model` (the `bilstm` fusion head, the
    recurrent encoders) into its graph: dynamo refuses them unless `torch._dynamo.config.allow_rnn` is set, which
    this sets (process-wide) when `model` has one. Returns whether it did. `MultimodalTrainer` under `torch_compile`
    and `pipeline(..., torch_compile=True)` call it.

    Example:

    ```python
    >>> allow_compiling_recurrent_layers(model)  # doctest: +SKIP
    True
    ```
    """
    if not any(isinstance(module, nn.RNNBase) for module in model.modules()):
        return False
    torch._dynamo.config.allow_rnn = True
    return True


class ModalityProjection(nn.Module):
    """Linear map of one modality's encoder features to the shared fusion width, then layer norm and dropout."""

    def __init__(self, input_size: int, config: MultimodalConfig):
        super().__init__()
        self.dense = nn.Linear(input_size, config.fusion_hidden_size)
        self.layer_norm = nn.LayerNorm(config.fusion_hidden_size)
        self.dropout = nn.Dropout(config.fusion_dropout)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.layer_norm(self.dense(features)))


def add_model_card_if_missing(config: MultimodalConfig, repo_id: str, processor=None, **push_kwargs) -> str:
    """Give a Hub repo that has no model card yet this package's card for a model of `config` (modalities, encoders,
    fusion, how to use it, tags and `base_model`), in a commit of its own, and return the repo's full id.

    `push_to_hub` of the models and of the pipelines calls this first with its own keyword arguments (`token`,
    `private`; nothing is written for a push to another `revision` or a pull request): transformers would otherwise
    write its generic card ("More Information Needed", no tags). Without the installed package (remote code) or its
    `[train]` extra, nothing is written and transformers' card stays.
    """
    try:  # the card is the package's Hub integration, not part of the model files
        from hf_multimodal.model_card import build_model_card
    except ImportError:
        return repo_id
    if push_kwargs.get("revision") or push_kwargs.get("create_pr"):
        return repo_id
    from huggingface_hub import HfApi

    api = HfApi(token=push_kwargs.get("token"))
    repo_id = api.create_repo(repo_id, private=push_kwargs.get("private"), exist_ok=True).repo_id
    if not api.file_exists(repo_id, "README.md"):
        card = build_model_card(config, repo_id=repo_id, processor=processor)
        api.upload_file(
            path_or_fileobj=str(card).encode(), path_in_repo="README.md", repo_id=repo_id, commit_message="Model card"
        )
    return repo_id


class MultimodalPreTrainedModel(SafeSerializationMixin, PreTrainedModel):
    config: MultimodalConfig
    config_class = MultimodalConfig
    base_model_prefix = "multimodal"
    main_input_name = "input_ids"
    input_modalities = ("text", "image", "audio")
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, MultimodalModel):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)
        if isinstance(module, MultimodalFusion):
            std = self.config.initializer_range
            for name, parameter in module.named_parameters(recurse=False):
                if name in ("modality_logits", "bias"):
                    init.zeros_(parameter)
                elif name == "rank_weights":
                    init.constant_(parameter, 1.0 / parameter.shape[-1])
                else:
                    init.normal_(parameter, mean=0.0, std=std)
            if isinstance(module, LowRankTensorFusion):
                for factor in module.factors.values():
                    # Unit-scale factors keep the product over several modalities from vanishing.
                    init.normal_(factor, mean=0.0, std=1.0 / math.sqrt(factor.shape[1]))

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, with an `auto_map` naming every head of this family when the classes
        are registered for remote code (importing `hf_multimodal` does that), so that a saved classifier also loads
        with `AutoModel` under `trust_remote_code=True`. The pipeline's code and `custom_pipelines` entry are written
        by `MultimodalClassificationPipeline.save_pretrained`."""
        if self._auto_class is not None:
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **REMOTE_CODE_AUTO_MAP}
        return super().save_pretrained(save_directory, *args, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs):
        """`PreTrainedModel.push_to_hub`; a repo without a model card first gets this package's
        ([`add_model_card_if_missing`]) instead of transformers' generic one."""
        return super().push_to_hub(add_model_card_if_missing(self.config, repo_id, **kwargs), **kwargs)

    @classmethod
    def from_backbones(
        cls,
        text: str | os.PathLike | PreTrainedConfig | dict | None = None,
        image: str | os.PathLike | PreTrainedConfig | dict | None = None,
        audio: str | os.PathLike | PreTrainedConfig | dict | None = None,
        vision: str | os.PathLike | PreTrainedConfig | dict | None = None,
        **config_kwargs,
    ) -> MultimodalPreTrainedModel:
        r"""
        Build a model whose encoders start from pretrained checkpoints.

        Each of `text`, `image` and `audio` is a local folder or Hub id of a pretrained encoder (its weights are
        copied in and the source is recorded in `config.backbones`), a config or dict (that encoder starts from random
        weights), or `None` (no such modality). `vision` is the deprecated name of `image`. Other keyword arguments go
        to [`MultimodalConfig`].

        Example:

        ```python
        >>> from hf_multimodal import MultimodalForSequenceClassification, WaveNetConfig
        >>> model = MultimodalForSequenceClassification.from_backbones(
        ...     text="sentence-transformers/all-MiniLM-L6-v2",  # or a local folder
        ...     image={"model_type": "resnet", "hidden_sizes": [32, 64], "depths": [1, 1]},
        ...     audio=WaveNetConfig(),
        ...     fusion_type="gated",
        ...     num_labels=10,
        ... )
        ```
        """
        image = image_or_deprecated_vision(image, vision, f"{cls.__name__}.from_backbones")
        sources = {"text": text, "image": image, "audio": audio}
        pretrained, sub_configs, backbones = {}, {}, {}
        for modality, source in sources.items():
            if isinstance(source, (str, os.PathLike)):
                encoder = _load_pretrained_encoder(source)
                # A Hub id as given; a local folder by its name only: saved configs travel (Hub pushes, other
                # machines) and must not carry this machine's paths.
                backbones[modality] = Path(source).name if os.path.isdir(source) else str(source)
                encoder.config._name_or_path = backbones[modality]
                pretrained[modality] = encoder
                sub_configs[modality] = encoder.config
            else:
                sub_configs[modality] = source
        config = MultimodalConfig(
            text_config=sub_configs["text"],
            vision_config=sub_configs["image"],
            audio_config=sub_configs["audio"],
            backbones=backbones or None,
            **config_kwargs,
        )
        model = cls(config)
        for modality, encoder in pretrained.items():
            target = model.get_encoder(modality)
            # Strict over the target's keys; weights it does not build (e.g. an unused pooler) are left out.
            needed = target.state_dict().keys()
            target.load_state_dict({k: v for k, v in encoder.state_dict().items() if k in needed}, strict=True)
        return model

    def activation_checkpointing_enable(
        self,
        activation_checkpointing_kwargs: dict | None = None,
        every_n_layers: int = 1,
        offload: bool = False,
        modalities: Sequence[str] | None = None,
    ) -> None:
        r"""
        `PreTrainedModel.activation_checkpointing_enable` (gradient checkpointing), for every encoder or, with
        `modalities`, only for those encoders: their layers' activations are recomputed in the backward pass instead
        of kept, trading step time for memory where it pays (a long text or audio sequence), while the other encoders
        keep theirs. `scripts/train.py --activation_checkpointing_modalities text audio` calls it.

        Raises `ValueError` for a modality the model has no encoder for, and for an encoder whose class does not
        support checkpointing (`supports_gradient_checkpointing` False).

        Example:

        ```python
        >>> model.activation_checkpointing_enable(modalities=["text", "audio"])  # doctest: +SKIP
        >>> model.get_encoder("text").is_activation_checkpointing, model.get_encoder("image").is_activation_checkpointing  # doctest: +SKIP
        (True, False)
        ```
        """
        if modalities is None:
            super().activation_checkpointing_enable(activation_checkpointing_kwargs, every_n_layers, offload)
            return
        encoders = {modality: self.get_encoder(modality) for modality in modalities}
        unsupported = [f"{m} ({type(e).__name__})" for m, e in encoders.items() if not e.supports_gradient_checkpointing]
        if unsupported:
            raise ValueError(
                f"activation checkpointing is not supported by the encoder of {', '.join(unsupported)}: leave it out "
                "of the checkpointed modalities."
            )
        for encoder in encoders.values():
            encoder.activation_checkpointing_enable(activation_checkpointing_kwargs, every_n_layers, offload)

    def get_encoder(self, modality: str) -> PreTrainedModel:
        """The encoder of `modality` ("text", "image" or "audio"); `ValueError` if the model has none."""
        if modality not in ENCODER_ATTRIBUTES:
            raise ValueError(f"unknown modality {modality!r}: expected one of {', '.join(MODALITIES)}.")
        encoder = getattr(self.base_model, ENCODER_ATTRIBUTES[modality], None)
        if encoder is None:
            raise ValueError(f"this model has no {modality} encoder (config.{SUB_CONFIG_KEYS[modality]} is None).")
        return encoder

    def get_text_features(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple[torch.Tensor, ...]:
        r"""
        The text encoder's output, its `pooler_output` being the text embedding in the space shared by the
        modalities (`(batch_size, fusion_hidden_size)`, not normalised), as `CLIPModel.get_text_features` returns it;
        with `output_hidden_states`, the encoder's hidden states too.

        Example:

        ```python
        >>> inputs = processor(text=["seven", "a shaky 7"])
        >>> model.get_text_features(inputs["input_ids"], inputs["attention_mask"]).pooler_output.shape  # doctest: +SKIP
        torch.Size([2, 256])
        ```
        """
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return self.base_model.encode_modality("text", inputs, output_hidden_states, return_dict)

    def get_image_features(
        self,
        pixel_values: torch.FloatTensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple[torch.Tensor, ...]:
        """The image encoder's output, its `pooler_output` being the image embedding in the shared space (see
        `get_text_features`)."""
        return self.base_model.encode_modality("image", {"pixel_values": pixel_values}, output_hidden_states, return_dict)

    def get_audio_features(
        self,
        input_values: torch.FloatTensor,
        audio_attention_mask: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple[torch.Tensor, ...]:
        """The audio encoder's output, its `pooler_output` being the audio embedding in the shared space (see
        `get_text_features`)."""
        inputs = {"input_values": input_values, "audio_attention_mask": audio_attention_mask}
        return self.base_model.encode_modality("audio", inputs, output_hidden_states, return_dict)


def _load_pretrained_encoder(source: str | os.PathLike) -> PreTrainedModel:
    """Load a pretrained encoder from a folder or Hub id (the package's own encoders load without Auto
    registration)."""
    config_dict, _ = PreTrainedConfig.get_config_dict(source)
    model_class = PACKAGE_ENCODERS.get(config_dict.get("model_type"), AutoModel)
    return load_safetensors_only(model_class.from_pretrained, source)


def _stand_in_names(modality: str) -> tuple[str, ...]:
    """The inputs that can each stand for `modality`: its main model input, its feature encoder's outputs (where
    it has one) and its precomputed encoder features."""
    feature_encoder_outputs = FEATURE_ENCODER_INPUT_NAMES.get(modality, ())[:1]
    return (INPUT_NAMES[modality][0], *feature_encoder_outputs, FEATURE_INPUT_NAMES[modality][0])


def _main_input(inputs: dict[str, torch.Tensor | None], modality: str) -> torch.Tensor | None:
    """The tensor that stands for `modality` in `inputs` (the first given of `_stand_in_names`)."""
    return next((inputs[name] for name in _stand_in_names(modality) if inputs.get(name) is not None), None)


class MultimodalModel(MultimodalPreTrainedModel):
    r"""
    Encodes each present modality, mean-pools it over its real tokens / patches / frames, projects it to
    `config.fusion_hidden_size` and fuses the modalities with the head named by `config.fusion_type`.

    Example:

    ```python
    >>> import torch
    >>> from hf_multimodal import MultimodalConfig, MultimodalModel
    >>> config = MultimodalConfig(
    ...     text_config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    ...     vision_config=None,
    ...     audio_config={"hidden_size": 32, "num_stacks": 1, "layers_per_stack": 2},
    ...     fusion_hidden_size=32,
    ... )
    >>> model = MultimodalModel(config).eval()
    >>> outputs = model(
    ...     input_ids=torch.tensor([[101, 7592, 102], [101, 102, 0]]),
    ...     attention_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]),
    ...     has_text=torch.tensor([True, False]),
    ...     input_values=torch.randn(2, 16000),
    ... )
    >>> outputs.fused_embeds.shape, outputs.presence.tolist()
    (torch.Size([2, 32]), [[True, True], [False, True]])
    ```
    """

    # Checkpoints older than the contrastive loss have no logit_scale; a fusion head of another type starts anew.
    newly_initialized_prefixes = ("logit_scale", "fusion.")

    def __init__(self, config: MultimodalConfig):
        super().__init__(config)
        self.text_model = build_encoder(config.text_config) if config.text_config is not None else None
        self.vision_model = build_encoder(config.vision_config) if config.vision_config is not None else None
        self.audio_model = build_encoder(config.audio_config) if config.audio_config is not None else None
        self.projections = nn.ModuleDict(
            {m: ModalityProjection(encoder_output_size(config.sub_config(m)), config) for m in config.modalities}
        )
        self.fusion = FUSION_CLASSES[config.fusion_type](config)
        # Learnable log inverse temperature of the contrastive loss, as CLIP's `logit_scale`.
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self._encoder_kwargs = {m: self._accepted_kwargs(m) for m in config.modalities}
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        """The text encoder's token embeddings (so that `resize_token_embeddings` reaches them, as in `CLIPModel`)."""
        return self._text_encoder_for("input embeddings").get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self._text_encoder_for("input embeddings").set_input_embeddings(value)

    def _text_encoder_for(self, what: str) -> PreTrainedModel:
        if self.text_model is None:
            raise ValueError(f"this model has no text encoder (text_config is None), so it has no {what}.")
        return self.text_model

    def _accepted_kwargs(self, modality: str) -> dict[str, str]:
        """Map our input names of `modality` to the keyword names its encoder's forward accepts."""
        encoder = getattr(self, ENCODER_ATTRIBUTES[modality])
        parameters = inspect.signature(encoder.forward).parameters
        names = {INPUT_NAMES[modality][0]: encoder.main_input_name}
        for name in INPUT_NAMES[modality][1:]:
            if name in parameters:
                names[name] = name
            elif name == "audio_attention_mask" and "attention_mask" in parameters:
                names[name] = "attention_mask"
        if modality in FEATURE_ENCODER_INPUT_NAMES and "feature_encoder_outputs" in parameters:
            outputs_name, mask_name = FEATURE_ENCODER_INPUT_NAMES[modality]
            names.update({outputs_name: "feature_encoder_outputs", mask_name: "attention_mask"})
        return names

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        input_values: torch.FloatTensor | None = None,
        audio_attention_mask: torch.LongTensor | None = None,
        has_text: torch.BoolTensor | None = None,
        has_image: torch.BoolTensor | None = None,
        has_audio: torch.BoolTensor | None = None,
        return_loss: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        text_encoder_features: torch.FloatTensor | None = None,
        text_encoder_mask: torch.BoolTensor | None = None,
        image_encoder_features: torch.FloatTensor | None = None,
        image_encoder_mask: torch.BoolTensor | None = None,
        audio_encoder_features: torch.FloatTensor | None = None,
        audio_encoder_mask: torch.BoolTensor | None = None,
        audio_feature_encoder_outputs: torch.FloatTensor | None = None,
        audio_feature_encoder_mask: torch.BoolTensor | None = None,
        **kwargs,
    ) -> MultimodalModelOutput | tuple[torch.Tensor, ...]:
        r"""
        input_ids, attention_mask, token_type_ids (`torch.LongTensor` of shape `(batch_size, text_length)`):
            Tokenized text, as returned by the processor's tokenizer.
        pixel_values (`torch.FloatTensor` of shape `(batch_size, channels, height, width)`):
            Images, as returned by the processor's image processor.
        input_values (`torch.FloatTensor` of shape `(batch_size, samples)`):
            Audio: the main input of the audio encoder (raw 16 kHz waveforms for the WaveNet encoder).
        audio_attention_mask (`torch.LongTensor` of shape `(batch_size, samples)`):
            1 for real audio samples, 0 for padding.
        has_text, has_image, has_audio (`torch.BoolTensor` of shape `(batch_size,)`):
            False for examples that lack that modality (their rows of the inputs are placeholders: never encoded in
            eager mode; a traced or exported graph encodes them and masks them out). Defaults to True for every
            example of a modality whose inputs are given.
        return_loss (`bool`, *optional*):
            Also return the contrastive loss (see `contrastive_loss`): the objective of alignment pre-training on
            unlabelled examples whose modalities describe the same thing, as `CLIPModel(return_loss=True)`.
        output_hidden_states (`bool`, *optional*):
            Also return every encoder's hidden states (`text_hidden_states`, ...). Defaults to
            `config.output_hidden_states`.
        text_encoder_features, image_encoder_features, audio_encoder_features (`torch.FloatTensor`):
            A modality's encoder output computed beforehand by [`encoder_features`] (e.g. cached once for a frozen
            encoder, as `scripts/train.py` does through `hf_multimodal.feature_cache`), given instead of that
            modality's inputs: its encoder does not run and the fusion head sees the same tensors. `(batch_size,
            hidden_size)` pooled features, or `(batch_size, length, hidden_size)` sequences (needed by heads over
            sequences). Rows of examples without the modality are placeholders. No hidden states are returned for it.
        text_encoder_mask, image_encoder_mask, audio_encoder_mask (`torch.BoolTensor` of shape `(batch_size, length)`):
            The real positions of sequence features (default: every position).
        audio_feature_encoder_outputs (`torch.FloatTensor` of shape `(batch_size, frames, 96)`):
            The output of the audio encoder's feature encoder (the `"speech_embedding"` stack) computed beforehand by
            [`WaveNetModel.compute_feature_encoder_outputs`] (e.g. cached once for a frozen stack), given instead of
            `input_values`: the rest of the audio encoder runs on it. Or the output of the stack's lower blocks,
            `(batch_size, columns, channels, mel bands)` (cached for a stack whose top blocks learn).
        audio_feature_encoder_mask (`torch.BoolTensor` of shape `(batch_size, frames)` or `(batch_size, columns)`):
            The real frames (columns) of `audio_feature_encoder_outputs` (default: every one).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
            "pixel_values": pixel_values,
            "input_values": input_values,
            "audio_attention_mask": audio_attention_mask,
            "text_encoder_features": text_encoder_features,
            "text_encoder_mask": text_encoder_mask,
            "image_encoder_features": image_encoder_features,
            "image_encoder_mask": image_encoder_mask,
            "audio_encoder_features": audio_encoder_features,
            "audio_encoder_mask": audio_encoder_mask,
            "audio_feature_encoder_outputs": audio_feature_encoder_outputs,
            "audio_feature_encoder_mask": audio_feature_encoder_mask,
        }
        given = {"has_text": has_text, "has_image": has_image, "has_audio": has_audio}
        presence = self._presence(inputs, given)
        if self.training and self.config.modality_dropout > 0:
            presence = self._drop_modalities(presence)
        embeddings, features, padding_masks, hidden_states = self._encode_present(
            inputs, presence, output_hidden_states
        )
        fused = self.fuse(features, presence, padding_masks)
        loss = self.contrastive_loss(embeddings, presence, required=True) if return_loss else None
        output = MultimodalModelOutput(
            loss=loss,
            fused_embeds=fused,
            text_embeds=embeddings.get("text"),
            image_embeds=embeddings.get("image"),
            audio_embeds=embeddings.get("audio"),
            presence=presence,
            text_hidden_states=hidden_states.get("text"),
            image_hidden_states=hidden_states.get("image"),
            audio_hidden_states=hidden_states.get("audio"),
        )
        return output if return_dict else output.to_tuple()

    def fuse(
        self, features: dict[str, torch.Tensor], presence: torch.BoolTensor, padding_masks: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """The fusion head on encoded modalities: `(batch_size, fusion_hidden_size)`. Rows that `presence` marks
        absent are never read, so the same encodings can be fused again under another presence mask (what
        [`MultimodalForSequenceClassification.modality_importance`] and `ablation_logits` do to leave a modality
        out)."""
        return self.fusion(features, presence, padding_masks if self.fusion.uses_sequences else None)

    def _encode_present(
        self, inputs: dict[str, torch.Tensor | None], presence: torch.BoolTensor, output_hidden_states: bool = False
    ) -> tuple[dict[str, torch.Tensor | None], dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, tuple]]:
        """Encode each modality's present rows: the pooled embeddings, the fusion head's features, (for heads over
        sequences) the padding masks and (with `output_hidden_states`) the encoders' hidden states, each scattered
        back to `(batch_size, ...)`."""
        batch_size = presence.shape[0]
        embeddings: dict[str, torch.Tensor | None] = {}
        features, padding_masks, hidden_states = {}, {}, {}
        tracing = torch.compiler.is_compiling()
        for index, modality in enumerate(self.config.modalities):
            rows = presence[:, index]
            # A traced graph (torch.export / ONNX, torch.compile) cannot branch on data: it encodes every row of each
            # given modality and masks the absent ones; eager mode skips modalities no example has.
            main = _main_input(inputs, modality)
            skipped = main is None if tracing else not bool(rows.any())
            if skipped:
                given_zeros = main is not None
                embeddings[modality] = self._zeros(batch_size, presence.device, sequence=False) if given_zeros else None
                features[modality] = self._zeros(batch_size, presence.device, self.fusion.uses_sequences)
                padding_masks[modality] = presence.new_zeros(batch_size, 1)
                continue
            if inputs.get(FEATURE_INPUT_NAMES[modality][0]) is None:
                sequence, sequence_mask, encoder_states = self._encode(modality, inputs, rows, output_hidden_states)
            else:
                sequence, sequence_mask, encoder_states = self._precomputed(modality, inputs, rows)
            if encoder_states is not None:
                hidden_states[modality] = tuple(self._scatter(state, rows) for state in encoder_states)
            mean = sequence if sequence.dim() == 2 else masked_mean(sequence, sequence_mask)  # 2-D: pooled features
            pooled = self.projections[modality](mean)
            embeddings[modality] = self._scatter(pooled, rows)
            if self.fusion.uses_sequences:
                projected = self.projections[modality](sequence)
                features[modality] = self._scatter(projected, rows)
                mask = sequence_mask if sequence_mask is not None else rows.new_ones(projected.shape[:2])
                padding_masks[modality] = self._scatter(mask, rows)
            else:
                features[modality] = embeddings[modality]
        return embeddings, features, padding_masks, hidden_states

    def _presence(self, inputs: dict, given: dict) -> torch.BoolTensor:
        """(batch_size, num_modalities) bool mask of the modalities each example has; validates the inputs."""
        modalities = self.config.modalities
        for modality in MODALITIES:
            feature_encoder_names = FEATURE_ENCODER_INPUT_NAMES.get(modality, ())
            names = (*INPUT_NAMES[modality], *feature_encoder_names, *FEATURE_INPUT_NAMES[modality])
            supplied = [name for name in names if inputs.get(name) is not None]
            stand_ins = [name for name in _stand_in_names(modality) if inputs.get(name) is not None]
            if modality in modalities and len(stand_ins) > 1:
                raise ValueError(
                    f"got {' and '.join(stand_ins)} for {modality}: pass the inputs for the encoder to run, the "
                    "outputs of its feature encoder, or its precomputed features, one of them."
                )
            waveform_names = [name for name in INPUT_NAMES[modality][1:] if inputs.get(name) is not None]
            if feature_encoder_names and inputs.get(feature_encoder_names[0]) is not None and waveform_names:
                raise ValueError(
                    f"got {feature_encoder_names[0]} with {', '.join(waveform_names)}: the mask of its frames is "
                    f"{feature_encoder_names[1]}."
                )
            if modality not in modalities and (supplied or given[PRESENCE_NAMES[modality]] is not None):
                raise ValueError(
                    f"got {modality} inputs ({', '.join(supplied) or PRESENCE_NAMES[modality]}) but this model has no "
                    f"{modality} encoder (config.{SUB_CONFIG_KEYS[modality]} is None): drop them, or build the model with "
                    f"a {SUB_CONFIG_KEYS[modality]}."
                )
        main_inputs = {m: _main_input(inputs, m) for m in modalities}
        sizes = {m: tensor.shape[0] for m, tensor in main_inputs.items() if tensor is not None}
        if not sizes:
            expected = ", ".join(INPUT_NAMES[m][0] for m in modalities)
            raise ValueError(f"no inputs given: pass at least one of {expected}.")
        batch_size = next(iter(sizes.values()))
        if any(size != batch_size for size in sizes.values()):  # not a set: traced graphs' sizes are unhashable
            raise ValueError(f"the modalities have different batch sizes {sizes}: pass one row per example for each.")
        device = next(t for t in main_inputs.values() if t is not None).device
        columns = []
        for modality in modalities:
            flags = given[PRESENCE_NAMES[modality]]
            if main_inputs[modality] is None:
                if flags is not None and bool(torch.as_tensor(flags).any()):
                    raise ValueError(
                        f"{PRESENCE_NAMES[modality]} marks examples as having {modality} but "
                        f"{INPUT_NAMES[modality][0]} is None: pass the {modality} inputs."
                    )
                columns.append(torch.zeros(batch_size, dtype=torch.bool, device=device))
            elif flags is None:
                columns.append(torch.ones(batch_size, dtype=torch.bool, device=device))
            else:
                flags = torch.as_tensor(flags, device=device).bool().reshape(-1)
                if flags.shape[0] != batch_size:
                    raise ValueError(
                        f"{PRESENCE_NAMES[modality]} has {flags.shape[0]} entries for a batch of {batch_size}."
                    )
                columns.append(flags)
        presence = torch.stack(columns, dim=1)
        if torch.compiler.is_compiling():  # a check on the data: traced graphs leave it to their callers
            return presence
        empty = (~presence.any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(
                f"examples {empty} have no modality at all (every has_* flag is False): each example needs at least "
                "one of text, image or audio. Drop those examples."
            )
        return presence

    def _drop_modalities(self, presence: torch.BoolTensor) -> torch.BoolTensor:
        """Hide each present modality with probability `config.modality_dropout`, keeping at least
        `config.modality_dropout_min_present` of every example's modalities (all of them when it has no more): the
        best-scored ones of the draw are kept back."""
        scores = torch.rand(presence.shape, device=presence.device)
        kept = presence & (scores >= self.config.modality_dropout)
        needed = presence.sum(dim=1, keepdim=True).clamp(max=self.config.modality_dropout_min_present)
        rank = scores.masked_fill(~presence, -1.0).argsort(dim=1, descending=True).argsort(dim=1)
        return kept | (presence & (rank < needed))

    def contrastive_loss(
        self, embeddings: dict[str, torch.Tensor | None], presence: torch.BoolTensor, required: bool = False
    ) -> torch.Tensor | None:
        r"""
        InfoNCE between every pair of modalities, as CLIP / CLAP / ImageBind align theirs: for each pair `(a, b)`, the
        examples that have both give `logit_scale.exp() * cos(a_i, b_j)`, and each `a_i` must pick its own `b_i`
        among the batch's `b` (and the other way round). The mean over pairs is returned.

        Args:
            embeddings (`dict[str, torch.Tensor]`): `(batch_size, fusion_hidden_size)` embeddings per modality.
            presence (`torch.BoolTensor` of shape `(batch_size, num_modalities)`): Which examples have which.
            required (`bool`, *optional*): Raise a `ValueError` when the batch has no pair of modalities shared by
                two examples (else return None).
        """
        losses = []
        for (i, a), (j, b) in itertools.combinations(enumerate(self.config.modalities), 2):
            both = presence[:, i] & presence[:, j]
            if embeddings.get(a) is None or embeddings.get(b) is None or int(both.sum()) < 2:
                continue
            first = nn.functional.normalize(embeddings[a][both], dim=-1)
            second = nn.functional.normalize(embeddings[b][both], dim=-1)
            logits = self.logit_scale.clamp(max=math.log(100.0)).exp() * first @ second.T
            targets = torch.arange(logits.shape[0], device=logits.device)
            losses.append((nn.functional.cross_entropy(logits, targets) + nn.functional.cross_entropy(logits.T, targets)) / 2)
        if not losses:
            if required:
                raise ValueError(
                    "the contrastive loss needs pairs: no two examples of this batch share two modalities. Give every "
                    "example at least two modalities (e.g. an image and its recording), and batches of 2 or more."
                )
            return None
        return torch.stack(losses).mean()

    @torch.no_grad()
    def encoder_features(
        self, modality: str, inputs: dict[str, torch.Tensor | None], sequences: bool = False
    ) -> tuple[torch.FloatTensor, torch.BoolTensor | None]:
        r"""
        What `forward` takes from the encoder of `modality` before projecting and fusing it, for every example of
        `inputs` (that modality's model inputs): its last hidden state averaged over the real positions, `(batch_size,
        hidden_size)`, or with `sequences=True` (what heads over sequences read) the last hidden state `(batch_size,
        length, hidden_size)` and the bool mask of its real positions (None when every position is real).

        Passed back to `forward` as `{modality}_encoder_features` (and `{modality}_encoder_mask`), they stand for the
        encoder: a frozen encoder's features can be computed once per dataset (`hf_multimodal.feature_cache`). Run it
        with the encoder in eval mode, as the training of a frozen encoder keeps it.

        Example:

        ```python
        >>> import torch
        >>> from hf_multimodal import MultimodalConfig, MultimodalModel
        >>> model = MultimodalModel(MultimodalConfig(text_config=None, fusion_hidden_size=32)).eval()
        >>> pixel_values = torch.randn(2, 3, 64, 64)
        >>> features, _ = model.encoder_features("image", {"pixel_values": pixel_values})
        >>> cached = model(image_encoder_features=features).fused_embeds  # the encoder does not run
        >>> torch.allclose(cached, model(pixel_values=pixel_values).fused_embeds, atol=1e-5)
        True
        ```
        """
        self.get_encoder(modality)
        unknown = sorted(set(inputs) - set(INPUT_NAMES[modality]))
        if unknown or inputs.get(INPUT_NAMES[modality][0]) is None:
            raise ValueError(
                f"encoder_features of {modality} takes {', '.join(INPUT_NAMES[modality])} (the first one required); "
                f"got {sorted(inputs)}."
            )
        everything = {name: inputs.get(name) for names in INPUT_NAMES.values() for name in names}
        rows = torch.ones(everything[INPUT_NAMES[modality][0]].shape[0], dtype=torch.bool)
        sequence, mask, _ = self._encode(modality, everything, rows.to(self.device))
        return (sequence, mask) if sequences else (masked_mean(sequence, mask), None)

    def encode_modality(
        self,
        modality: str,
        inputs: dict[str, torch.Tensor | None],
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple[torch.Tensor, ...]:
        """Encode one modality of every example: the encoder's last hidden state (as a `(batch, length, hidden)`
        sequence), as `pooler_output` its mean over the real positions projected into the shared space, and with
        `output_hidden_states` (default: `config.output_hidden_states`) the encoder's hidden states."""
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        self.get_encoder(modality)
        unknown = sorted(set(inputs) - set(INPUT_NAMES[modality]))
        if unknown:
            raise ValueError(f"{modality} takes {', '.join(INPUT_NAMES[modality])}; got also {unknown}.")
        main = inputs.get(INPUT_NAMES[modality][0])
        if main is None:
            raise ValueError(f"pass {INPUT_NAMES[modality][0]} to encode {modality}.")
        everything = {name: inputs.get(name) for names in INPUT_NAMES.values() for name in names}
        rows = torch.ones(main.shape[0], dtype=torch.bool, device=main.device)
        sequence, mask, hidden_states = self._encode(modality, everything, rows, output_hidden_states)
        pooled = self.projections[modality](masked_mean(sequence, mask))
        output = BaseModelOutputWithPooling(last_hidden_state=sequence, pooler_output=pooled, hidden_states=hidden_states)
        return output if return_dict else output.to_tuple()

    def _encode(
        self, modality: str, inputs: dict, rows: torch.BoolTensor, output_hidden_states: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, ...] | None]:
        """Run the encoder of `modality` on the rows where it is present.

        Returns its last hidden state as a `(rows, length, hidden)` sequence, a `(rows, length)` bool mask of the
        real positions (None when every position is real) and, with `output_hidden_states`, the encoder's hidden
        states (else None).
        """
        encoder = getattr(self, ENCODER_ATTRIBUTES[modality])
        every_row = torch.compiler.is_compiling() or bool(rows.all())  # traced graphs encode every row, then mask
        select = (lambda tensor: tensor) if every_row else (lambda tensor: tensor[rows])

        def prepared(name: str) -> torch.Tensor:
            # Float inputs (pixels, waveforms) take the encoder's dtype: a model loaded with dtype=torch.bfloat16
            # reads the processor's float32 tensors.
            tensor = select(inputs[name])
            tensor = tensor.to(encoder.dtype) if tensor.is_floating_point() else tensor
            # Images reach the convolutions channels-last, the layout oneDNN's CPU kernels run fastest (the default
            # ResNet at batch 16 on a Xeon: inference 1.2x faster in float32, 2.1x in bfloat16, same values)
            return tensor.contiguous(memory_format=torch.channels_last) if tensor.dim() == 4 else tensor

        kwargs = {
            encoder_name: prepared(name)
            for name, encoder_name in self._encoder_kwargs[modality].items()
            if inputs.get(name) is not None
        }
        outputs = encoder(**kwargs, output_hidden_states=output_hidden_states, return_dict=True)
        hidden = outputs.last_hidden_state
        if hidden.dim() == 4:  # convolutional feature map (rows, channels, height, width)
            hidden = hidden.flatten(2).transpose(1, 2)
        mask = None
        if modality == "text" and inputs["attention_mask"] is not None:
            mask = select(inputs["attention_mask"]).bool()
        elif modality == "audio" and inputs["audio_attention_mask"] is not None:
            mask = encoder._get_feature_vector_attention_mask(hidden.shape[1], select(inputs["audio_attention_mask"]))
            mask = mask.bool()
        elif modality == "audio" and inputs.get("audio_feature_encoder_mask") is not None:
            mask = encoder.feature_encoder_frame_mask(
                select(inputs["audio_feature_encoder_outputs"]), select(inputs["audio_feature_encoder_mask"])
            )
        return hidden, mask, outputs.hidden_states if output_hidden_states else None

    def _precomputed(
        self, modality: str, inputs: dict, rows: torch.BoolTensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, None]:
        """`_encode`'s answer for the rows where `modality` is present, read from its precomputed features (the
        second entry is None for pooled features, which are returned as they are, 2-D)."""
        features_name, mask_name = FEATURE_INPUT_NAMES[modality]
        features, mask = inputs[features_name], inputs.get(mask_name)
        if features.dim() not in (2, 3) or (mask is not None and mask.shape != features.shape[:2]):
            raise ValueError(
                f"{features_name} must be (batch_size, hidden_size) or (batch_size, length, hidden_size) with "
                f"{mask_name} (batch_size, length); got {tuple(features.shape)} and "
                f"{None if mask is None else tuple(mask.shape)}."
            )
        if features.dim() == 2 and self.fusion.uses_sequences:
            raise ValueError(
                f"{features_name} holds pooled features, but the {self.config.fusion_type} fusion head reads "
                f"sequences: compute them with encoder_features({modality!r}, ..., sequences=True)."
            )
        every_row = torch.compiler.is_compiling() or bool(rows.all())
        features = (features if every_row else features[rows]).to(self.projections[modality].dense.weight.dtype)
        if mask is not None:
            mask = (mask if every_row else mask[rows]).bool()
        return features, mask, None

    @staticmethod
    def _scatter(values: torch.Tensor, rows: torch.BoolTensor) -> torch.Tensor:
        """`values` computed for the true `rows` (or for every example) as one entry per example, zero where `rows`
        is false."""
        if values.shape[0] == rows.shape[0]:
            rows = rows.view(-1, *(1,) * (values.dim() - 1))
            # `&` for masks: ONNX Runtime has no Where over booleans.
            return values & rows if values.dtype == torch.bool else torch.where(rows, values, torch.zeros_like(values))
        full = values.new_zeros((rows.shape[0], *values.shape[1:]))
        return full.index_put((rows.nonzero().flatten(),), values)

    def _zeros(self, batch_size: int, device: torch.device, sequence: bool) -> torch.Tensor:
        width = self.config.fusion_hidden_size
        shape = (batch_size, 1, width) if sequence else (batch_size, width)
        return torch.zeros(shape, device=device, dtype=self.dtype)


class MultimodalForSequenceClassification(MultimodalPreTrainedModel):
    r"""
    [`MultimodalModel`] with a linear classification (or regression) layer on the fused embedding.

    The loss follows `config.problem_type`, inferred as transformers' sequence classifiers do when unset:
    `"regression"` (MSE) for `num_labels == 1`, `"single_label_classification"` (cross-entropy) for integer labels,
    `"multi_label_classification"` (binary cross-entropy) for float multi-hot labels.

    Example:

    ```python
    >>> import torch
    >>> from hf_multimodal import MultimodalConfig, MultimodalForSequenceClassification
    >>> config = MultimodalConfig(
    ...     text_config=None,
    ...     vision_config={"hidden_sizes": [16, 32], "depths": [1, 1], "embedding_size": 16},
    ...     audio_config={"hidden_size": 32, "num_stacks": 1, "layers_per_stack": 2},
    ...     fusion_type="concat",
    ...     fusion_hidden_size=32,
    ...     num_labels=3,
    ... )
    >>> model = MultimodalForSequenceClassification(config)
    >>> outputs = model(pixel_values=torch.randn(2, 3, 32, 32), input_values=torch.randn(2, 8000), labels=torch.tensor([0, 2]))
    >>> outputs.logits.shape, outputs.loss.shape
    (torch.Size([2, 3]), torch.Size([]))
    ```
    """

    # A classifier may start from a saved `MultimodalModel` (e.g. an aligned one) with another fusion head, and from
    # checkpoints older than the contrastive loss: these weights may be missing and start from their initialisation.
    newly_initialized_prefixes = ("classifier.", "modality_classifiers.", "multimodal.fusion.", "multimodal.logit_scale")

    def __init__(self, config: MultimodalConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.multimodal = MultimodalModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.fusion_hidden_size, config.num_labels)
        if config.modality_loss_weight > 0:
            self.modality_classifiers = nn.ModuleDict(
                {m: nn.Linear(config.fusion_hidden_size, config.num_labels) for m in config.modalities}
            )
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        input_values: torch.FloatTensor | None = None,
        audio_attention_mask: torch.LongTensor | None = None,
        has_text: torch.BoolTensor | None = None,
        has_image: torch.BoolTensor | None = None,
        has_audio: torch.BoolTensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        text_encoder_features: torch.FloatTensor | None = None,
        text_encoder_mask: torch.BoolTensor | None = None,
        image_encoder_features: torch.FloatTensor | None = None,
        image_encoder_mask: torch.BoolTensor | None = None,
        audio_encoder_features: torch.FloatTensor | None = None,
        audio_encoder_mask: torch.BoolTensor | None = None,
        audio_feature_encoder_outputs: torch.FloatTensor | None = None,
        audio_feature_encoder_mask: torch.BoolTensor | None = None,
        **kwargs,
    ) -> MultimodalSequenceClassifierOutput | tuple[torch.Tensor, ...]:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)` or `torch.FloatTensor` of shape `(batch_size, num_labels)`):
            Class indices for single-label classification, multi-hot floats for multi-label classification, targets
            for regression.

        The other inputs are those of [`MultimodalModel.forward`].
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.multimodal(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            pixel_values=pixel_values,
            input_values=input_values,
            audio_attention_mask=audio_attention_mask,
            has_text=has_text,
            has_image=has_image,
            has_audio=has_audio,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            text_encoder_features=text_encoder_features,
            text_encoder_mask=text_encoder_mask,
            image_encoder_features=image_encoder_features,
            image_encoder_mask=image_encoder_mask,
            audio_encoder_features=audio_encoder_features,
            audio_encoder_mask=audio_encoder_mask,
            audio_feature_encoder_outputs=audio_feature_encoder_outputs,
            audio_feature_encoder_mask=audio_feature_encoder_mask,
        )
        logits = self.classifier(self.dropout(outputs.fused_embeds))
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config, **kwargs)
            if self.training:
                loss = loss + self._auxiliary_losses(outputs, labels)
        output = MultimodalSequenceClassifierOutput(
            loss=loss,
            logits=logits,
            fused_embeds=outputs.fused_embeds,
            text_embeds=outputs.text_embeds,
            image_embeds=outputs.image_embeds,
            audio_embeds=outputs.audio_embeds,
            presence=outputs.presence,
            text_hidden_states=outputs.text_hidden_states,
            image_hidden_states=outputs.image_hidden_states,
            audio_hidden_states=outputs.audio_hidden_states,
        )
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def modality_importance(self, **inputs: torch.Tensor | None) -> ModalityImportanceOutput:
        r"""
        How much each present modality contributed to each example's prediction, by leaving it out: the encoders run
        once, then only the fusion head and the classifier run again, once per modality and on the examples that
        have it, with that modality masked in the presence mask (as if the example lacked it). The importance is the
        drop of the predicted label's score (softmax probability; sigmoid for multi-label models; the value itself for
        regression): positive when the modality supported the prediction, negative when it argued against it, near 0
        when the others decide alone.

        It measures what this model does without a modality, not what the modality "means": two modalities that say
        the same thing can each look unimportant (either one suffices), and a head trained with modality dropout
        0 may behave unusually on the masks it never saw. Averaged over a test set it tracks the accuracy drop of
        the leave-one-modality-out ablation. Call it in eval mode, with the inputs of `forward` (no labels).

        Example:

        ```python
        >>> import torch
        >>> from hf_multimodal import MultimodalConfig, MultimodalForSequenceClassification
        >>> model = MultimodalForSequenceClassification(MultimodalConfig(text_config=None, num_labels=3)).eval()
        >>> output = model.modality_importance(pixel_values=torch.randn(2, 3, 224, 224), input_values=torch.randn(2, 16000))
        >>> output.importance.shape  # (examples, modalities): image, audio
        torch.Size([2, 2])
        ```
        """
        presence, features, padding_masks = self._encode_once("modality_importance", inputs)
        logits = self._classify(features, presence, padding_masks)
        function = default_score_function(self.config)
        scores = scores_from_logits(logits, function)
        predicted = scores.argmax(dim=-1, keepdim=True)
        importance = torch.full(presence.shape, float("nan"), device=logits.device)
        for index in range(presence.shape[1]):
            without, rows = self._leave_out(presence, index)
            if not bool(rows.any()):
                continue
            left_out = scores_from_logits(self._classify_rows(features, without, padding_masks, rows), function)
            top = predicted[rows]
            importance[rows, index] = (scores[rows].gather(1, top) - left_out.gather(1, top))[:, 0]
        fusion_weights = self.multimodal.fusion.modality_weights(features, presence, padding_masks)
        return ModalityImportanceOutput(
            logits=logits, predicted=predicted[:, 0], importance=importance, fusion_weights=fusion_weights
        )

    @torch.no_grad()
    def ablation_logits(
        self, drop: Sequence[str] | None = None, **inputs: torch.Tensor | None
    ) -> dict[str, torch.FloatTensor]:
        r"""
        The logits with every present modality and, for each modality of `drop`, with that modality removed from
        every example, from one pass of the encoders: only the fusion head and the classifier run again per variant
        (the per-modality ablation of `scripts/train.py` costs one encoding of the test set, not one per variant).

        Returns a dict of `(batch_size, num_labels)` logits: `"all"`, then `"without_<modality>"` for each modality of
        `drop` (in that order). Each variant equals the ordinary forward with that modality's `has_*` flag set to
        False; rows of the examples that have no other modality (which the forward refuses) are NaN, for the caller
        to fill with its answer without input (as [`MultimodalTrainer`] does with the training label prior). Call it in
        eval mode, with the inputs of `forward` (no labels).

        Args:
            drop (`Sequence[str]`, *optional*): The modalities to leave out, one variant each; defaults to every
                modality of the model.

        Example:

        ```python
        >>> import torch
        >>> from hf_multimodal import MultimodalConfig, MultimodalForSequenceClassification
        >>> model = MultimodalForSequenceClassification(MultimodalConfig(text_config=None, num_labels=3)).eval()
        >>> logits = model.ablation_logits(pixel_values=torch.randn(2, 3, 224, 224), input_values=torch.randn(2, 16000))
        >>> list(logits), logits["without_audio"].shape
        (['all', 'without_image', 'without_audio'], torch.Size([2, 3]))
        ```
        """
        modalities = self.config.modalities
        drop = modalities if drop is None else tuple(drop)
        unknown = [modality for modality in drop if modality not in modalities]
        if unknown:
            raise ValueError(f"drop names {unknown}, which this model does not read: pick among {list(modalities)}.")
        presence, features, padding_masks = self._encode_once("ablation_logits", inputs)
        logits = {"all": self._classify(features, presence, padding_masks)}
        for modality in drop:
            index = modalities.index(modality)
            without, rows = self._leave_out(presence, index)
            left_alone = without[:, index, None]  # the example's only modality: nothing left to classify
            variant = logits["all"].masked_fill(left_alone, float("nan"))
            if bool(rows.any()):
                variant[rows] = self._classify_rows(features, without, padding_masks, rows)
            logits[f"without_{modality}"] = variant
        return logits

    def _encode_once(
        self, caller: str, inputs: dict[str, torch.Tensor | None]
    ) -> tuple[torch.BoolTensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Validate the model inputs of `caller` and encode them: the presence mask, the fusion head's features and
        padding masks, ready to be fused under several presence masks."""
        groups = (*INPUT_NAMES.values(), *FEATURE_ENCODER_INPUT_NAMES.values(), *FEATURE_INPUT_NAMES.values())
        input_names = [name for names in groups for name in names]
        accepted = [*input_names, *PRESENCE_NAMES.values()]
        unknown = sorted(set(inputs) - set(accepted))
        if unknown:
            raise TypeError(f"{caller} takes the model's inputs ({', '.join(accepted)}); got also {unknown}.")
        tensors = {name: inputs.get(name) for name in input_names}
        presence = self.multimodal._presence(tensors, {name: inputs.get(name) for name in PRESENCE_NAMES.values()})
        _, features, padding_masks, _ = self.multimodal._encode_present(tensors, presence)
        return presence, features, padding_masks

    def _classify(
        self, features: dict[str, torch.Tensor], presence: torch.BoolTensor, padding_masks: dict[str, torch.Tensor]
    ) -> torch.FloatTensor:
        """The logits of encoded modalities fused under `presence` (the eval-mode classifier of `forward`)."""
        return self.classifier(self.multimodal.fuse(features, presence, padding_masks))

    def _classify_rows(
        self,
        features: dict[str, torch.Tensor],
        presence: torch.BoolTensor,
        padding_masks: dict[str, torch.Tensor],
        rows: torch.BoolTensor,
    ) -> torch.FloatTensor:
        """`_classify` on the examples of `rows` only, `(rows.sum(), num_labels)`: a variant's presence mask changes
        some examples, the others keep the logits of the first pass (the fusion head reads each row alone)."""
        return self._classify(
            {modality: feature[rows] for modality, feature in features.items()},
            presence[rows],
            {modality: mask[rows] for modality, mask in padding_masks.items()},
        )

    @staticmethod
    def _leave_out(presence: torch.BoolTensor, index: int) -> tuple[torch.BoolTensor, torch.BoolTensor]:
        """`presence` with modality `index` removed from every example that has another one, and those examples'
        rows (an example whose only modality it is keeps it)."""
        rows = presence[:, index] & (presence.sum(dim=1) > 1)
        without = presence.clone()
        without[rows, index] = False
        return without, rows

    def _auxiliary_losses(self, outputs: MultimodalModelOutput, labels: torch.Tensor) -> torch.Tensor | float:
        """`config.contrastive_loss_weight` x the contrastive loss between the modalities of the batch, plus
        `config.modality_loss_weight` x the mean of the per-modality classification losses (each modality's own
        classifier on the examples that have it)."""
        total = 0.0
        embeddings = {m: getattr(outputs, f"{m}_embeds") for m in self.config.modalities}
        if self.config.contrastive_loss_weight > 0:
            contrastive = self.multimodal.contrastive_loss(embeddings, outputs.presence)
            if contrastive is not None:
                total = total + self.config.contrastive_loss_weight * contrastive
        if self.config.modality_loss_weight > 0:
            losses = []
            for index, modality in enumerate(self.config.modalities):
                rows = outputs.presence[:, index]
                if bool(rows.any()):
                    own_logits = self.modality_classifiers[modality](self.dropout(embeddings[modality][rows]))
                    losses.append(self.loss_function(labels[rows], own_logits, self.config))
            total = total + self.config.modality_loss_weight * torch.stack(losses).mean()
        return total


__all__ = [
    "ModalityImportanceOutput",
    "MultimodalForSequenceClassification",
    "MultimodalModel",
    "MultimodalModelOutput",
    "MultimodalPreTrainedModel",
    "MultimodalSequenceClassifierOutput",
]
