"""`pipeline("multimodal-classification")`: decode any mix of text, image and audio inputs and classify them; and
`MultimodalPipeline`, the base of every pipeline of hf_multimodal models (decoding, batching, saving)."""

from __future__ import annotations

import collections.abc
import json
import math
import os
import sys
import threading
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import BatchFeature, Pipeline
from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator

from .configuration_multimodal import MODALITIES
from .feature_extraction_wavenet import check_sampling_rate
from .media_loading import load_audio, load_image
from .modeling_multimodal import (
    add_model_card_if_missing,
    allow_compiling_recurrent_layers,
    default_score_function,
    scores_from_logits,
)
from .processing_multimodal import MODALITY_ARGUMENTS, bucket_multiples, check_text, padding_kwargs, prepare_image


PIPELINE_TASK = "multimodal-classification"

EXAMPLE_KEYS: tuple[str, ...] = ("text", "image", "audio", "sampling_rate")
FUNCTIONS_TO_APPLY: tuple[str, ...] = ("softmax", "sigmoid", "none")
_UNSET = object()


class _Numbered(collections.abc.Sequence):
    """A sized input of a pipeline, read as `(position, example)` pairs."""

    def __init__(self, examples: collections.abc.Sequence):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return index, self.examples[index]


class MultimodalPipeline(Pipeline):
    r"""
    Base of the pipelines of hf_multimodal models: examples are dicts with any of `"text"` (str), `"image"` (PIL
    image, numpy array, tensor, file path, http(s) URL, bytes) and `"audio"` (file path, URL, bytes of a WAV/FLAC/OGG
    file, `{"array", "sampling_rate"}` dict, or a waveform array with `sampling_rate`), or the same as keyword
    arguments. A list of dicts is a batch; a `datasets.Dataset`, a torch dataset or a generator streams through.
    Each example is decoded on its own (`preprocess`; audio mono at the feature extractor's rate), and the processor
    runs on whole batches (`_collate`), so the examples of a batch may lack different modalities.

    `pipeline(..., torch_compile=True)` (or a dict of `torch.compile` keyword arguments, e.g. `{"mode":
    "max-autotune"}`) compiles the model in place (`model.compile(...)`) and pads every batch's text and audio to
    bucketed lengths (`processing_multimodal.bucket_multiples`), so that a bounded number of graphs is compiled; the
    first call of each shape pays the compilation (README: Benchmarks says when it wins; off by default).

    Subclasses define `_forward` and `postprocess`, and may extend `_sanitize_parameters`.
    """

    _load_processor = True
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False
    _load_video_processor = False

    def __init__(self, *args, torch_compile: bool | collections.abc.Mapping[str, Any] = False, **kwargs):
        super().__init__(*args, **kwargs)
        if self.processor is None:
            raise ValueError(
                f"the {type(self).__name__} needs the model's processor: save it beside the model "
                "(processor.save_pretrained(folder)) or pass processor=... to pipeline()."
            )
        self.model.eval()
        # Fast tokenizers may not be called from several threads while one of them changes the padding / truncation
        # settings; the processor runs under this lock so that concurrent calls are safe.
        self._processor_lock = threading.Lock()
        self.pad_to_multiple_of: dict[str, int] = {}
        if torch_compile:
            allow_compiling_recurrent_layers(self.model)
            self.model.compile(**(torch_compile if isinstance(torch_compile, collections.abc.Mapping) else {}))
            extractor = self.processor.feature_extractor
            seconds, rate = getattr(extractor, "max_length_seconds", None), getattr(extractor, "sampling_rate", None)
            max_samples = int(seconds * rate) if seconds and rate else None
            self.pad_to_multiple_of = bucket_multiples(getattr(self.processor, "max_text_length", 512), max_samples)

    def __call__(self, inputs: Any = None, **kwargs) -> list | Iterator:
        example = {key: kwargs.pop(key) for key in MODALITIES if key in kwargs}
        if example:
            if inputs is not None:
                raise ValueError("pass the example either as a dict or as text=/image=/audio= keywords, not both.")
            inputs = example
        if inputs is None:
            raise ValueError("nothing to process: pass a dict with text, image and/or audio, or text=/image=/audio=.")
        if isinstance(inputs, tuple):
            inputs = list(inputs)
        if isinstance(inputs, list) and not inputs:
            return []
        inputs = _rows_if_hf_dataset(inputs)
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(
        self, sampling_rate: int | None = None, timeout: float | None = None, **kwargs
    ) -> tuple[dict, dict, dict]:
        if kwargs:
            raise TypeError(f"{type(self).__name__} got unexpected parameters {sorted(kwargs)}.")
        preprocess_params = {}
        if sampling_rate is not None:
            preprocess_params["sampling_rate"] = check_sampling_rate(sampling_rate)
        if timeout is not None:
            if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
                raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}.")
            preprocess_params["timeout"] = float(timeout)
        return preprocess_params, {}, {}

    def preprocess(
        self, inputs: dict, sampling_rate: int | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """Check and decode one example into `{"text": str | None, "image": image | None, "audio": waveform | None}`,
        with audio mono at the feature extractor's rate. The processor runs on whole batches (see `_collate`)."""
        if not isinstance(inputs, collections.abc.Mapping):
            raise TypeError(
                f"an example must be a dict with any of 'text', 'image', 'audio' (or keyword arguments), got "
                f"{type(inputs).__name__}. To classify several examples pass a list of dicts."
            )
        unknown = sorted(str(key) for key in inputs if key not in EXAMPLE_KEYS)
        if unknown:
            raise ValueError(f"unknown example keys {unknown}: expected any of {', '.join(EXAMPLE_KEYS)}.")
        modalities = self.model.config.modalities
        given = {key for key in MODALITIES if inputs.get(key) is not None}
        missing = sorted(given - set(modalities))
        if missing:
            raise ValueError(
                f"this model has no {' or '.join(missing)} encoder (it reads {', '.join(modalities)}): drop "
                f"{', '.join(repr(key) for key in missing)} from the example."
            )
        if inputs.get("sampling_rate") is not None:
            sampling_rate = check_sampling_rate(inputs["sampling_rate"])
        example = {"text": check_text(inputs.get("text")), "image": None, "audio": None}
        if inputs.get("image") is not None:
            example["image"] = prepare_image(load_image(inputs["image"], timeout=timeout))
        if inputs.get("audio") is not None:
            target = getattr(self.processor.feature_extractor, "sampling_rate", None)
            max_seconds = getattr(self.processor.feature_extractor, "max_length_seconds", None)
            audio = load_audio(inputs["audio"], sampling_rate, target, timeout=timeout, max_seconds=max_seconds)
            check_clip = getattr(self.processor.feature_extractor, "check_clip", None)
            example["audio"] = check_clip(audio) if check_clip else audio
        if all(value is None for value in example.values()):
            raise ValueError(
                "the example has nothing to classify: give a non-empty 'text', an 'image' or an 'audio' clip."
            )
        return example

    def _preprocess_numbered(self, numbered: tuple[int, Any], **preprocess_params) -> dict[str, Any]:
        """`preprocess` of the example at a position of the input: its errors say which example is wrong."""
        index, inputs = numbered
        try:
            return self.preprocess(inputs, **preprocess_params)
        except (TypeError, ValueError) as error:
            raise type(error)(f"example {index}: {error}") from error

    def _collate(self, examples: list[dict[str, Any]]) -> BatchFeature:
        """Run the processor on a batch of decoded examples; a modality missing from every example is left out."""
        arguments = {}
        for modality, argument in MODALITY_ARGUMENTS.items():
            column = [example[modality] for example in examples]
            if any(value is not None for value in column):
                arguments[argument] = column
        if "audio" in arguments:
            arguments["sampling_rate"] = getattr(self.processor.feature_extractor, "sampling_rate", None)
        given = [modality for modality, name in MODALITY_ARGUMENTS.items() if name in arguments]
        padding = padding_kwargs(self.pad_to_multiple_of, given)
        with self._processor_lock:
            return self.processor(**arguments, **padding, return_tensors="pt")

    def get_inference_context(self):
        # `Pipeline.forward` runs `_forward` under this; `inference_mode` also skips autograd's version counters and
        # view tracking (the base class uses `no_grad`). Outputs leave the pipeline as Python floats.
        return torch.inference_mode

    def run_single(self, inputs, preprocess_params, forward_params, postprocess_params):
        batch = self._collate([self.preprocess(inputs, **preprocess_params)])
        return self.postprocess(self.forward(batch, **forward_params), **postprocess_params)

    def get_iterator(self, inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params):
        # As `Pipeline.get_iterator`, but batches are built by the processor from decoded examples: examples of one
        # batch may lack different modalities, which tensor-level padding cannot express.
        # Examples are decoded with their position, so that a bad one among many is named in the error.
        if isinstance(inputs, collections.abc.Sized):
            dataset = PipelineDataset(_Numbered(inputs), self._preprocess_numbered, preprocess_params)
        else:
            num_workers = min(num_workers, 1)  # an iterable cannot be split between several workers
            dataset = PipelineIterator(enumerate(inputs), self._preprocess_numbered, preprocess_params)
        dataloader = DataLoader(dataset, num_workers=num_workers, batch_size=batch_size, collate_fn=self._collate)
        model_iterator = PipelineIterator(dataloader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(model_iterator, self.postprocess, postprocess_params)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """`Pipeline.save_pretrained` (the model, and with the task registered by `import hf_multimodal`, this
        pipeline's code and the config's `custom_pipelines` entry), plus the processor, which transformers' version
        leaves out: `pipeline(model=save_directory)` then rebuilds this pipeline, with `trust_remote_code=True` even
        where hf_multimodal is not installed. Tasks saved into the folder earlier by other pipelines of the same
        model (e.g. retrieval, then zero-shot) stay in `custom_pipelines`; the live config is left as it was."""
        config = self.model.config
        live = getattr(config, "custom_pipelines", None)
        config_file = Path(save_directory) / "config.json"
        saved = json.loads(config_file.read_text()).get("custom_pipelines") if config_file.is_file() else None
        try:
            super().save_pretrained(save_directory, **kwargs)
            if saved and getattr(config, "custom_pipelines", None):
                config.custom_pipelines = {**saved, **config.custom_pipelines}
                config.save_pretrained(save_directory)
        finally:
            if live is None:
                config.__dict__.pop("custom_pipelines", None)
            else:
                config.custom_pipelines = live
        self.processor.save_pretrained(save_directory)

    def push_to_hub(self, repo_id: str, **kwargs):
        """`Pipeline.push_to_hub` (model, processor, code); a repo without a model card first gets this package's
        ([`add_model_card_if_missing`]) instead of transformers' generic one."""
        repo_id = add_model_card_if_missing(self.model.config, repo_id, processor=self.processor, **kwargs)
        return super().push_to_hub(repo_id, **kwargs)


class MultimodalClassificationPipeline(MultimodalPipeline):
    r"""
    Classifies examples made of any subset of text, an image and audio with a multimodal sequence classifier.

    Examples are given as for every [`MultimodalPipeline`]: a dict with any of `"text"`, `"image"`, `"audio"`, a list
    of them (a batch), a dataset or a generator. Audio at another rate than the feature extractor's is resampled.
    Each example gives a JSON-serialisable list of `{"label", "score"}`, best first.

    Call parameters:
        top_k (`int` or `None`, *optional*):
            How many labels to return per example; all of them by default (`None`).
        function_to_apply (`str`, *optional*):
            `"softmax"`, `"sigmoid"` or `"none"` (raw logits). Defaults to sigmoid for multi-label models (and models
            with one label), none for regression and softmax otherwise.
        sampling_rate (`int`, *optional*):
            Rate of raw waveform arrays passed without one (audio files carry their own).
        batch_size (`int`, *optional*):
            Examples per forward pass when given a list, dataset or generator.
        timeout (`float`, *optional*):
            Seconds a URL download may take in all, however the server sends it (10 by default).
        return_modality_importance (`bool`, *optional*, defaults to `False`):
            Also say how much each modality drove the prediction: each example then gives `{"labels": [...],
            "modality_importance": {modality: drop or None}}`, the drop of the top label's score when that modality
            is left out (None where the example lacks it or has no other one). The encoders run once; only the
            fusion head and classifier run again per modality (see
            [`MultimodalForSequenceClassification.modality_importance`]). For the fusion heads that weigh the
            modalities (weighted_sum, gated, attention), also `"fusion_weights": {modality: weight}`, the head's own
            weights, a second view (they sum to 1 over the present modalities, 0 where the example lacks one).

    Example:

    ```python
    >>> import hf_multimodal  # registers the task
    >>> from transformers import pipeline
    >>> classifier = pipeline("multimodal-classification", model="path/to/trained-folder")
    >>> classifier({"text": "seven", "image": "digit.png", "audio": "seven.wav"}, top_k=2)
    [{'label': '7', 'score': 0.93}, {'label': '1', 'score': 0.02}]
    >>> classifier([{"text": "two"}, {"audio": {"array": waveform, "sampling_rate": 8000}}], batch_size=2)
    [[{'label': '2', ...}, ...], [...]]
    ```
    """

    def __call__(self, inputs: Any = None, **kwargs) -> list | Iterator:
        """
        Classify one example, a batch of examples or a stream of them.

        Args:
            inputs (`dict`, `list[dict]`, `datasets.Dataset`, torch dataset or generator of dicts, *optional*):
                The example(s); or give one example's `text=`, `image=`, `audio=` as keyword arguments.
            kwargs:
                `top_k`, `function_to_apply`, `sampling_rate`, `batch_size`, `timeout`, `return_modality_importance`
                (see the class docstring).

        Returns:
            A list of `{"label", "score"}` dicts for one example (with `return_modality_importance`, a dict of that
            list and the importances), a list of them for a list of examples, or an iterator over them for a dataset
            or generator.
        """
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(
        self,
        top_k: Any = _UNSET,
        function_to_apply: str | None = None,
        return_modality_importance: bool | None = None,
        **kwargs,
    ) -> tuple[dict, dict, dict]:
        preprocess_params, forward_params, postprocess_params = super()._sanitize_parameters(**kwargs)
        if return_modality_importance is not None:
            if not isinstance(return_modality_importance, bool):
                raise ValueError(f"return_modality_importance must be True or False, got {return_modality_importance!r}.")
            forward_params["return_modality_importance"] = return_modality_importance
        if top_k is not _UNSET:
            if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
                raise ValueError(f"top_k must be a positive integer or None (all labels), got {top_k!r}.")
            postprocess_params["top_k"] = top_k
        if function_to_apply is not None:
            name = str(getattr(function_to_apply, "value", function_to_apply)).lower()
            if name not in FUNCTIONS_TO_APPLY:
                raise ValueError(
                    f"function_to_apply must be one of {', '.join(FUNCTIONS_TO_APPLY)}; got {function_to_apply!r}."
                )
            postprocess_params["function_to_apply"] = name
        return preprocess_params, forward_params, postprocess_params

    def _forward(self, model_inputs: BatchFeature, return_modality_importance: bool = False) -> dict[str, torch.Tensor]:
        if return_modality_importance:
            output = self.model.modality_importance(**model_inputs)
            views = {"modality_importance": output.importance, "fusion_weights": output.fusion_weights}
            return {"logits": output.logits, **{name: view for name, view in views.items() if view is not None}}
        return {"logits": self.model(**model_inputs).logits}

    def postprocess(
        self, model_outputs: dict[str, torch.Tensor], top_k: int | None = None, function_to_apply: str | None = None
    ) -> list[dict[str, Any]] | dict[str, Any]:
        labels = self._labels(model_outputs, top_k, function_to_apply)
        if "modality_importance" not in model_outputs:
            return labels
        modalities = self.model.config.modalities
        values = model_outputs["modality_importance"][0].tolist()
        importance = {modality: None if math.isnan(value) else value for modality, value in zip(modalities, values)}
        result = {"labels": labels, "modality_importance": importance}
        if "fusion_weights" in model_outputs:
            result["fusion_weights"] = dict(zip(modalities, model_outputs["fusion_weights"][0].tolist()))
        return result

    def _labels(
        self, model_outputs: dict[str, torch.Tensor], top_k: int | None, function_to_apply: str | None
    ) -> list[dict[str, Any]]:
        logits = model_outputs["logits"][0].float()
        scores = scores_from_logits(logits, function_to_apply or default_score_function(self.model.config))
        id2label = self.model.config.id2label or {}
        order = sorted(range(scores.shape[0]), key=lambda index: -scores[index].item())
        if top_k is not None:
            order = order[:top_k]
        return [
            {"label": str(id2label.get(index, f"LABEL_{index}")), "score": scores[index].item()} for index in order
        ]


def _rows_if_hf_dataset(inputs: Any) -> Any:
    """A `datasets.Dataset` / `IterableDataset` as a generator of its rows, keeping the example columns."""
    datasets = sys.modules.get("datasets")  # never imported here: a dataset object means the user imported it
    if datasets is None or not isinstance(inputs, (datasets.Dataset, datasets.IterableDataset)):
        return inputs
    columns = inputs.column_names
    if columns is not None:
        keep = [column for column in EXAMPLE_KEYS if column in columns]
        if not set(keep) - {"sampling_rate"}:
            raise ValueError(
                f"the dataset has none of the columns text, image, audio (it has {columns}): rename them, e.g. "
                "dataset.rename_column('sentence', 'text')."
            )
        inputs = inputs.select_columns(keep)
    return ({key: value for key, value in row.items() if key in EXAMPLE_KEYS} for row in inputs)


__all__ = ["PIPELINE_TASK", "MultimodalClassificationPipeline", "MultimodalPipeline"]
