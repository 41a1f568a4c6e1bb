"""ONNX export of a trained [`MultimodalForSequenceClassification`] with torch.onnx's dynamo (torch.export-based)
exporter, and [`OnnxMultimodalClassifier`], which runs the exported file with ONNX Runtime on the processor's outputs.

The exported graph takes every modality of the model plus the presence masks (`has_text`, `has_image`, `has_audio`),
with a dynamic batch size, text length and audio length: an example without a modality is flagged absent, and a
batch without it at all gets placeholder rows from [`OnnxMultimodalClassifier`]. Unlike the eager forward, which
encodes only the rows where a modality is present, the graph encodes every row and masks the absent ones (a graph
cannot branch on data), so its logits match the eager model's to float rounding, not bitwise.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .configuration_multimodal import MODALITIES
from .modeling_multimodal import INPUT_NAMES, PRESENCE_NAMES, MultimodalForSequenceClassification

DEFAULT_OPSET = 18
"""The ONNX opset exported by default (ONNX Runtime 1.16 and later run it)."""

METADATA_KEY = "hf_multimodal"
"""Key of the ONNX metadata entry (JSON) that [`OnnxMultimodalClassifier`] reads: the labels, the audio framing and
the lengths of placeholder rows."""

MIN_LENGTHS = {"text": 2, "audio": 2}
"""Shortest text (tokens) and audio (frames) of an export example: torch.export specializes dimensions of size 0 or 1
instead of keeping them dynamic."""


def _require(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise ImportError(
            f"ONNX export and inference need {module}: pip install 'hf_multimodal[onnx]' (onnx, onnxscript and "
            "onnxruntime)."
        ) from None


class _LogitsModule(nn.Module):
    """The classifier as the graph to export: a dict of named input tensors in, the logits out."""

    def __init__(self, model: MultimodalForSequenceClassification):
        super().__init__()
        self.model = model

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(**inputs, return_dict=True).logits


def _samples_per_frame(model: MultimodalForSequenceClassification) -> int | None:
    """How many audio samples make one encoder frame (WaveNet encoders; None for others or without audio)."""
    audio_config = model.config.audio_config
    return getattr(audio_config, "samples_per_frame", None) if audio_config is not None else None


def pad_audio(
    inputs: Mapping[str, torch.Tensor | np.ndarray], samples_per_frame: int | None, min_frames: int = 1
) -> dict[str, torch.Tensor | np.ndarray]:
    """`inputs` with `input_values` (and `audio_attention_mask`) zero-padded at the end to a whole number of frames,
    at least `min_frames`, as the WaveNet encoder pads them itself: its outputs do not change. The exported graph
    takes whole frames only."""
    values = inputs.get("input_values")
    if values is None or samples_per_frame is None:
        return dict(inputs)
    length = values.shape[-1]
    target = max(-(-length // samples_per_frame), min_frames) * samples_per_frame
    if target == length:
        return dict(inputs)
    padded = dict(inputs)
    for name in ("input_values", "audio_attention_mask"):
        if inputs.get(name) is not None:
            tensor = inputs[name]
            if isinstance(tensor, np.ndarray):
                padded[name] = np.pad(tensor, ((0, 0), (0, target - length)))
            else:
                padded[name] = nn.functional.pad(tensor, (0, target - length))
    return padded


def _export_inputs(model: MultimodalForSequenceClassification, example_inputs: Mapping) -> dict[str, torch.Tensor]:
    """The example batch as the graph's inputs: every input of the model's modalities it holds, a presence mask per
    modality, at least two examples and the minimum lengths (see `MIN_LENGTHS`)."""
    modalities = model.config.modalities
    missing = [INPUT_NAMES[m][0] for m in modalities if example_inputs.get(INPUT_NAMES[m][0]) is None]
    if missing:
        raise ValueError(
            f"example_inputs lacks {', '.join(missing)}: the graph takes every modality of the model, so export "
            "with a batch that has each (e.g. processor(text=..., images=..., audio=...)); absent examples are "
            "flagged by has_* masks at inference."
        )
    names = [name for m in modalities for name in (*INPUT_NAMES[m], PRESENCE_NAMES[m])]
    inputs = {name: torch.as_tensor(example_inputs[name]) for name in names if example_inputs.get(name) is not None}
    batch_size = inputs[INPUT_NAMES[modalities[0]][0]].shape[0]
    for modality in modalities:
        inputs.setdefault(PRESENCE_NAMES[modality], torch.ones(batch_size, dtype=torch.bool))
    if batch_size < 2:
        inputs = {name: torch.cat([tensor, tensor]) for name, tensor in inputs.items()}
    if "text" in modalities and inputs["input_ids"].shape[1] < MIN_LENGTHS["text"]:
        width = MIN_LENGTHS["text"] - inputs["input_ids"].shape[1]
        inputs.update(
            {name: nn.functional.pad(inputs[name], (0, width)) for name in INPUT_NAMES["text"] if name in inputs}
        )
    return pad_audio(inputs, _samples_per_frame(model), MIN_LENGTHS["audio"])


def _dynamic_shapes(model: MultimodalForSequenceClassification, inputs: dict[str, torch.Tensor]) -> dict:
    """torch.export dimensions: one batch size for every input, a text length, an audio length (in whole frames for
    WaveNet encoders, so that its padding to whole frames is no branch of the graph); images keep their size."""
    batch = torch.export.Dim("batch")
    lengths = {}
    if "text" in model.config.modalities:
        max_length = getattr(model.config.text_config, "max_position_embeddings", None)
        lengths["text"] = torch.export.Dim("text_length", min=MIN_LENGTHS["text"], max=max_length)
    if "audio" in model.config.modalities:
        samples_per_frame = _samples_per_frame(model)
        if samples_per_frame is None:
            lengths["audio"] = torch.export.Dim("audio_length", min=2)
        else:
            lengths["audio"] = samples_per_frame * torch.export.Dim("audio_frames", min=MIN_LENGTHS["audio"])
    shapes = {}
    for name in inputs:
        modality = next(m for m in MODALITIES if name in INPUT_NAMES[m] or name == PRESENCE_NAMES[m])
        shapes[name] = {0: batch}
        if modality in lengths and name != PRESENCE_NAMES[modality]:
            shapes[name][1] = lengths[modality]
    return shapes


def export_onnx(
    model: MultimodalForSequenceClassification,
    example_inputs: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
) -> Path:
    r"""
    Export a classifier to one ONNX file with `torch.onnx.export(..., dynamo=True)`: inputs named as the model's
    (`input_ids`, `attention_mask`, `pixel_values`, `input_values`, `audio_attention_mask`, `has_*`, ...), output
    `logits`; dynamic batch size, text length and audio length, fixed image size (the example's).

    Args:
        model ([`MultimodalForSequenceClassification`]): The model; exported in eval mode (its mode is restored).
        example_inputs (`Mapping[str, torch.Tensor]`): A processor output holding every modality of the model
            (examples may be flagged absent); it fixes the image size and which text inputs the graph takes.
        path (`str` or `os.PathLike`): The `.onnx` file to write (weights inside it).
        opset (`int`, *optional*, defaults to `DEFAULT_OPSET`): The ONNX opset.

    Returns:
        `Path`: `path`.

    Raises `NotImplementedError` for a model the exporter cannot translate (naming the part), `ValueError` for
    example inputs without some modality, `ImportError` without onnx / onnxscript.

    Example:

    ```python
    >>> from hf_multimodal.exporting_onnx import OnnxMultimodalClassifier, export_onnx
    >>> batch = processor(text=["seven", None], images=[image, image], audio=[clip, None], sampling_rate=16000)
    >>> export_onnx(model, batch, "model.onnx")  # doctest: +SKIP
    >>> OnnxMultimodalClassifier("model.onnx")(batch).shape  # doctest: +SKIP
    (2, 10)
    ```
    """
    for module in ("onnx", "onnxscript"):
        _require(module)
    if not isinstance(model, MultimodalForSequenceClassification):
        raise TypeError(f"export_onnx exports a MultimodalForSequenceClassification, got a {type(model).__name__}.")
    inputs = _export_inputs(model, example_inputs)
    was_training = model.training
    try:
        program = torch.onnx.export(
            _LogitsModule(model).eval(),  # the model too
            (),
            kwargs={"inputs": inputs},
            dynamic_shapes={"inputs": _dynamic_shapes(model, inputs)},
            input_names=list(inputs),
            output_names=["logits"],
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
    except torch.onnx.errors.OnnxExporterError as error:
        encoders = ", ".join(f"{m} {model.config.sub_config(m).model_type}" for m in model.config.modalities)
        raise NotImplementedError(
            f"torch.onnx cannot export this model (fusion_type {model.config.fusion_type!r}; encoders: {encoders}): "
            "some part of its forward branches on the data or uses an operator ONNX lacks (the exporter's error is "
            "above). Every fusion head of hf_multimodal with the WaveNet, BERT and ResNet encoders exports."
        ) from error
    finally:
        model.train(was_training)
    samples_per_frame = _samples_per_frame(model)
    placeholder_lengths = {"text": MIN_LENGTHS["text"]}
    if "audio" in model.config.modalities:  # whole frames for WaveNet; other encoders may need the example's length
        placeholder_lengths["audio"] = (
            MIN_LENGTHS["audio"] * samples_per_frame if samples_per_frame else inputs["input_values"].shape[1]
        )
    metadata = {
        "id2label": {str(index): label for index, label in model.config.id2label.items()},
        "samples_per_frame": samples_per_frame,
        "placeholder_lengths": placeholder_lengths,
    }
    program.model.metadata_props[METADATA_KEY] = json.dumps(metadata)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(path, external_data=False)
    return path


class OnnxMultimodalClassifier:
    r"""
    Runs a classifier exported by [`export_onnx`] with ONNX Runtime: the processor's outputs (torch tensors or numpy
    arrays) in, the logits out, as `model(**batch).logits`.

    A modality the batch lacks altogether (the processor then returns only its `has_*` mask) gets placeholder rows
    flagged absent; missing attention masks default to all-real and token type ids to zeros, as in the model.

    Args:
        path (`str` or `os.PathLike`): The exported `.onnx` file.
        providers (`list[str]`, *optional*): ONNX Runtime execution providers; CPU by default.
        num_threads (`int`, *optional*): Threads of ONNX Runtime's operators; its default (every core) when unset.

    Example:

    ```python
    >>> from hf_multimodal.exporting_onnx import OnnxMultimodalClassifier
    >>> classifier = OnnxMultimodalClassifier("model.onnx")  # doctest: +SKIP
    >>> logits = classifier(processor(text=["seven"], audio=[clip], sampling_rate=16000))  # doctest: +SKIP
    >>> classifier.id2label[int(logits.argmax(-1)[0])]  # doctest: +SKIP
    'seven'
    ```
    """

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None, num_threads: int | None = None):
        _require("onnxruntime")
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
        self.session = onnxruntime.InferenceSession(
            str(path), options, providers=providers or ["CPUExecutionProvider"]
        )
        metadata = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if metadata is None:
            raise ValueError(f"{path} was not exported by hf_multimodal.exporting_onnx.export_onnx (no metadata).")
        metadata = json.loads(metadata)
        self.id2label: dict[int, str] = {int(index): label for index, label in metadata["id2label"].items()}
        self.samples_per_frame: int | None = metadata["samples_per_frame"]
        self.placeholder_lengths: dict[str, int] = metadata["placeholder_lengths"]
        self.inputs = {node.name: node for node in self.session.get_inputs()}
        self.modalities = tuple(m for m in MODALITIES if PRESENCE_NAMES[m] in self.inputs)

    def __call__(self, inputs: Mapping[str, torch.Tensor | np.ndarray]) -> np.ndarray:
        """The logits, `(batch_size, num_labels)` float32, of the model inputs `inputs` (a processor output)."""
        arrays = {
            name: value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            for name, value in inputs.items()
            if value is not None
        }
        unknown = sorted(set(arrays) - set(self.inputs))
        if unknown:
            raise ValueError(f"this graph takes {', '.join(self.inputs)}; got also {unknown}.")
        main = [arrays[INPUT_NAMES[m][0]] for m in self.modalities if INPUT_NAMES[m][0] in arrays]
        flags = [arrays[PRESENCE_NAMES[m]] for m in self.modalities if PRESENCE_NAMES[m] in arrays]
        if not main and not flags:
            raise ValueError(f"no inputs given: pass the processor's outputs ({', '.join(self.inputs)}).")
        batch_size = (main or flags)[0].shape[0]
        for modality in self.modalities:
            arrays.update(self._complete(modality, arrays, batch_size))
        presence = np.stack([arrays[PRESENCE_NAMES[m]] for m in self.modalities], axis=1)
        empty = np.flatnonzero(~presence.any(axis=1)).tolist()
        if empty:
            raise ValueError(
                f"examples {empty} have no modality at all (every has_* flag is False): each example needs at least "
                "one of text, image or audio. Drop those examples."
            )
        arrays = pad_audio(arrays, self.samples_per_frame, MIN_LENGTHS["audio"])
        feed = {name: arrays[name].astype(_numpy_type(node.type)) for name, node in self.inputs.items()}
        if "pixel_values" in feed and list(feed["pixel_values"].shape[1:]) != self.inputs["pixel_values"].shape[1:]:
            raise ValueError(
                f"pixel_values has shape {feed['pixel_values'].shape}; the graph takes images of the exported size "
                f"{self.inputs['pixel_values'].shape[1:]}: use the image processor the model was exported with."
            )
        return self.session.run(["logits"], feed)[0]

    def _complete(self, modality: str, arrays: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
        """The graph inputs of `modality` that `arrays` lacks: placeholders flagged absent when its main input is
        missing, else all-true presence, all-real masks and zero token types."""
        main_name, presence_name = INPUT_NAMES[modality][0], PRESENCE_NAMES[modality]
        names = [name for name in INPUT_NAMES[modality] if name in self.inputs]
        if main_name not in arrays:
            flags = arrays.get(presence_name)
            if flags is not None and flags.any():
                raise ValueError(
                    f"{presence_name} marks examples as having {modality} but {main_name} is missing: pass the "
                    f"{modality} inputs."
                )
            length = self.placeholder_lengths.get(modality)
            completed = {name: self._placeholder(name, batch_size, length) for name in names}
            return {**completed, presence_name: np.zeros(batch_size, dtype=bool)}
        length = arrays[main_name].shape[1] if arrays[main_name].ndim > 1 else None
        completed = {
            name: self._placeholder(name, batch_size, length, fill=name.endswith("attention_mask"))
            for name in names
            if name not in arrays
        }
        if presence_name not in arrays:
            completed[presence_name] = np.ones(batch_size, dtype=bool)
        return completed

    def _placeholder(self, name: str, batch_size: int, length: int | None, fill: bool = False) -> np.ndarray:
        """An input of zeros (ones with `fill`): the graph's static sizes, `length` for its dynamic one."""
        node = self.inputs[name]
        shape = [batch_size, *(dim if isinstance(dim, int) else length for dim in node.shape[1:])]
        return np.full(shape, 1 if fill else 0, dtype=_numpy_type(node.type))


def _numpy_type(onnx_type: str) -> type:
    """The numpy dtype of an ONNX Runtime input type such as `"tensor(int64)"`."""
    types = {"float": np.float32, "double": np.float64, "int32": np.int32, "int64": np.int64, "bool": np.bool_}
    return types[onnx_type.removeprefix("tensor(").removesuffix(")")]


def max_logit_difference(
    model: MultimodalForSequenceClassification, classifier: OnnxMultimodalClassifier, inputs: Mapping
) -> float:
    """Largest absolute difference between the eager model's logits and the ONNX graph's on `inputs`."""
    with torch.inference_mode():
        expected = model(**inputs).logits.float().numpy()
    return float(np.abs(classifier(inputs) - expected).max())


__all__ = ["DEFAULT_OPSET", "OnnxMultimodalClassifier", "export_onnx", "max_logit_difference", "pad_audio"]
