"""`pipeline("multimodal-classification")`: decode any mix of text, image and audio inputs and classify them."""

from __future__ import annotations

import collections.abc
import io
import math
import os
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from transformers import BatchFeature, Pipeline
from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator

from .feature_extraction_wavenet import resample_audio, to_mono_float32


PIPELINE_TASK = "multimodal-classification"

CUSTOM_PIPELINES: dict[str, dict] = {
    PIPELINE_TASK: {
        "impl": "pipeline_multimodal.MultimodalClassificationPipeline",
        "pt": ["AutoModelForSequenceClassification"],
        "type": "multimodal",
    }
}
"""`config.custom_pipelines` of a saved model: lets `pipeline(model=..., trust_remote_code=True)` find this pipeline
in the code saved beside the weights, in a process that never imports hf_multimodal."""

EXAMPLE_KEYS: tuple[str, ...] = ("text", "image", "audio", "sampling_rate")
FUNCTIONS_TO_APPLY: tuple[str, ...] = ("softmax", "sigmoid", "none")
MIN_SAMPLING_RATE, MAX_SAMPLING_RATE = 1_000, 384_000
MAX_DOWNLOAD_BYTES = 200 * 2**20
DEFAULT_TIMEOUT = 10.0
_UNSET = object()


def _is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def _read_source(source: str | os.PathLike, what: str, timeout: float | None) -> bytes:
    """The bytes of a local file or an http(s) URL; ValueError naming the source when they cannot be read."""
    source = os.fspath(source)
    if _is_url(source):
        try:
            with urllib.request.urlopen(source, timeout=timeout or DEFAULT_TIMEOUT) as response:
                data = response.read(MAX_DOWNLOAD_BYTES + 1)
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise ValueError(f"could not download the {what} from {source}: {error}.") from error
        if len(data) > MAX_DOWNLOAD_BYTES:
            raise ValueError(f"the {what} at {source} is larger than {MAX_DOWNLOAD_BYTES // 2**20} MiB.")
        return data
    if not os.path.isfile(source):
        raise ValueError(
            f"{what} file not found: {source!r}. Pass an existing file path, an http(s) URL, the file's bytes or "
            "decoded data."
        )
    with open(source, "rb") as file:
        return file.read()


def _undecoded_dataset_value(value: dict, what: str) -> bytes | str:
    """The `{"bytes": ..., "path": ...}` form `datasets` gives for `Image(decode=False)` / `Audio(decode=False)`."""
    data, path = value.get("bytes"), value.get("path")
    if data is not None:
        return data
    if path is not None:
        return path
    raise ValueError(f"the {what} dict has neither 'bytes' nor 'path' set.")


def load_image(image: Any, timeout: float | None = None) -> Image.Image | np.ndarray | torch.Tensor:
    """Decode one image given as a PIL image, numpy array, torch tensor, file path, http(s) URL, bytes or a
    `datasets` `{"bytes", "path"}` dict. Arrays and tensors are returned as they are (the processor checks them).

    Example:

    ```python
    >>> import io
    >>> from PIL import Image
    >>> buffer = io.BytesIO()
    >>> Image.new("RGB", (8, 6)).save(buffer, format="PNG")
    >>> load_image(buffer.getvalue()).size
    (8, 6)
    ```
    """
    if isinstance(image, dict):
        image = _undecoded_dataset_value(image, "image")
    if isinstance(image, Image.Image):
        return _decoded(image, "the PIL image")
    if isinstance(image, (np.ndarray, torch.Tensor)):
        return image
    if isinstance(image, (str, os.PathLike)):
        source = os.fspath(image)
        return _decode_image_bytes(_read_source(source, "image", timeout), repr(source))
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _decode_image_bytes(bytes(image), f"from {len(image)} bytes")
    raise TypeError(
        f"image is a {type(image).__name__}; expected a PIL image, numpy array, torch tensor, file path, http(s) URL, "
        "bytes or a {'bytes', 'path'} dict."
    )


def _decode_image_bytes(data: bytes, source: str) -> Image.Image:
    if not data:
        raise ValueError(f"image {source} is empty (0 bytes).")
    try:
        image = Image.open(io.BytesIO(data))
    except MemoryError:
        raise
    except Exception as error:  # PIL raises many types for corrupt or unknown data
        raise ValueError(
            f"could not decode image {source}: {error}. Pass a valid image file (PNG, JPEG, ...), a PIL image or an "
            "array."
        ) from error
    return _decoded(image, f"image {source}")


def _decoded(image: Image.Image, source: str) -> Image.Image:
    """Force PIL's lazy decoding now, so that truncated or corrupt data fails here with a clear error."""
    try:
        image.load()
    except MemoryError:
        raise
    except Exception as error:
        raise ValueError(f"could not decode {source}: {error}. The file is truncated or corrupt.") from error
    return image


def load_audio(
    audio: Any,
    sampling_rate: int | None = None,
    target_sampling_rate: int | None = None,
    timeout: float | None = None,
    max_seconds: float | None = None,
) -> np.ndarray:
    """Decode one clip to a mono float32 waveform at `target_sampling_rate` (resampled when needed).

    With `max_seconds`, only the start of a longer clip is decoded, mixed down and resampled: its first `max_seconds`
    plus one second (a margin for the resampling filter, so the kept part equals that of the whole clip resampled).
    Memory and time then stay those of a short clip, however long the input.

    `audio` is a file path, an http(s) URL, the bytes of an audio file (WAV, FLAC, OGG: anything `soundfile`
    reads), a `{"array", "sampling_rate"}` (or `{"raw", "sampling_rate"}`) dict, a `datasets` `{"bytes", "path"}`
    dict, or a waveform (numpy array, torch tensor, list of floats) at `sampling_rate`.

    Example:

    ```python
    >>> import numpy as np
    >>> clip = {"array": np.zeros(8000, dtype=np.float32), "sampling_rate": 8000}
    >>> load_audio(clip, target_sampling_rate=16000).shape
    (16000,)
    ```
    """
    if isinstance(audio, dict):
        audio, sampling_rate = _audio_from_dict(audio, sampling_rate)
    if isinstance(audio, (str, os.PathLike)):
        data, source = _read_source(audio, "audio", timeout), repr(os.fspath(audio))
        audio, sampling_rate = _decode_audio_bytes(data, source, max_seconds)
    elif isinstance(audio, (bytes, bytearray, memoryview)):
        audio, sampling_rate = _decode_audio_bytes(bytes(audio), f"from {len(audio)} bytes", max_seconds)
    elif hasattr(audio, "get_all_samples"):  # a torchcodec AudioDecoder, as `datasets` 5 decodes Audio() columns
        samples = audio.get_all_samples()
        audio, sampling_rate = samples.data, samples.sample_rate
    elif sampling_rate is None:
        raise ValueError(
            "audio is a raw waveform without a sampling rate: pass {'array': waveform, 'sampling_rate': rate}, or "
            "sampling_rate=rate to the pipeline call."
        )
    sampling_rate = check_sampling_rate(sampling_rate)
    waveform = to_mono_float32(audio)
    if max_seconds is not None:
        waveform = waveform[: _samples_to_keep(max_seconds, sampling_rate)]
    if target_sampling_rate is None:
        return waveform
    return resample_audio(waveform, sampling_rate, target_sampling_rate)


def _audio_from_dict(audio: dict, sampling_rate: int | None) -> tuple[Any, int | None]:
    if "bytes" in audio or "path" in audio:
        return _undecoded_dataset_value(audio, "audio"), sampling_rate
    keys = [key for key in ("array", "raw") if key in audio]
    if len(keys) != 1 or "sampling_rate" not in audio or set(audio) - {keys[0], "sampling_rate"}:
        raise ValueError(
            f"audio dict has keys {sorted(audio)}: expected {{'array', 'sampling_rate'}} (or 'raw' instead of "
            "'array'), or a datasets {'bytes', 'path'} dict."
        )
    return audio[keys[0]], audio["sampling_rate"]


def _samples_to_keep(max_seconds: float, sampling_rate: int) -> int:
    return int(math.ceil((max_seconds + 1.0) * sampling_rate))


def _decode_audio_bytes(data: bytes, source: str, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    if not data:
        raise ValueError(f"audio {source} is empty (0 bytes).")
    try:
        import soundfile
    except ImportError as error:
        raise ImportError("decoding audio files needs soundfile: pip install soundfile") from error
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as file:
            sampling_rate = file.samplerate
            count = -1 if max_seconds is None else _samples_to_keep(max_seconds, sampling_rate)
            frames = file.read(count, dtype="float32", always_2d=True)
    except MemoryError:
        raise
    except Exception as error:  # libsndfile errors for corrupt, truncated or unknown formats
        raise ValueError(
            f"could not decode audio {source}: {error}. Pass a valid WAV / FLAC / OGG file or a waveform array."
        ) from error
    return frames.mean(axis=1), sampling_rate  # (frames, channels) -> mono


def check_sampling_rate(sampling_rate: Any) -> int:
    """`sampling_rate` as an int, or ValueError when it is not a whole number of Hz in a plausible range."""
    if isinstance(sampling_rate, (float, np.floating)) and float(sampling_rate).is_integer():
        sampling_rate = int(sampling_rate)
    if (
        not isinstance(sampling_rate, (int, np.integer))
        or isinstance(sampling_rate, bool)
        or not MIN_SAMPLING_RATE <= sampling_rate <= MAX_SAMPLING_RATE
    ):
        raise ValueError(
            f"sampling_rate must be a whole number of Hz between {MIN_SAMPLING_RATE} and {MAX_SAMPLING_RATE}, got "
            f"{sampling_rate!r}."
        )
    return int(sampling_rate)


def _check_text(text: Any) -> str | None:
    if text is None:
        return None
    if isinstance(text, (bytes, bytearray)):
        raise TypeError("text is bytes: decode it to str first (e.g. text.decode('utf-8')).")
    if not isinstance(text, str):
        raise TypeError(f"text is a {type(text).__name__}; expected a str.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"text is not valid Unicode ({error.reason} at position {error.start}): clean it first."
        ) from None
    return text if text.strip() else None


class MultimodalClassificationPipeline(Pipeline):
    r"""
    Classifies examples made of any subset of text, an image and audio with a multimodal sequence classifier.

    Each example is a dict with any of `"text"` (str), `"image"` (PIL image, numpy array, tensor, file path, http(s)
    URL, bytes) and `"audio"` (file path, URL, bytes of a WAV/FLAC/OGG file, `{"array", "sampling_rate"}` dict, or a
    waveform array with `sampling_rate`), or the same as keyword arguments. A list of dicts is a batch; a
    `datasets.Dataset`, a torch dataset or a generator streams through the pipeline. Audio at another rate than the
    feature extractor's is resampled. Each example gives a JSON-serialisable list of `{"label", "score"}`, best first.

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
            Seconds to wait for a URL download (10 by default).

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

    _load_processor = True
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False
    _load_video_processor = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.processor is None:
            raise ValueError(
                "the multimodal-classification pipeline needs the model's processor: save it beside the model "
                "(processor.save_pretrained(folder)) or pass processor=... to pipeline()."
            )
        self.model.eval()
        # Fast tokenizers may not be called from several threads while one of them changes the padding / truncation
        # settings; the processor runs under this lock so that concurrent calls are safe.
        self._processor_lock = threading.Lock()

    def __call__(self, inputs: Any = None, **kwargs) -> list | Iterator:
        """
        Classify one example, a batch of examples or a stream of them.

        Args:
            inputs (`dict`, `list[dict]`, `datasets.Dataset`, torch dataset or generator of dicts, *optional*):
                The example(s); or give one example's `text=`, `image=`, `audio=` as keyword arguments.
            kwargs:
                `top_k`, `function_to_apply`, `sampling_rate`, `batch_size`, `timeout` (see the class docstring).

        Returns:
            A list of `{"label", "score"}` dicts for one example, a list of such lists for a list of examples, or an
            iterator over them for a dataset or generator.
        """
        example = {key: kwargs.pop(key) for key in ("text", "image", "audio") if key in kwargs}
        if example:
            if inputs is not None:
                raise ValueError("pass the example either as a dict or as text=/image=/audio= keywords, not both.")
            inputs = example
        if inputs is None:
            raise ValueError("nothing to classify: pass a dict with text, image and/or audio, or text=/image=/audio=.")
        if isinstance(inputs, tuple):
            inputs = list(inputs)
        if isinstance(inputs, list) and not inputs:
            return []
        inputs = _rows_if_hf_dataset(inputs)
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(
        self,
        top_k: Any = _UNSET,
        function_to_apply: str | None = None,
        sampling_rate: int | None = None,
        timeout: float | None = None,
    ) -> tuple[dict, dict, dict]:
        preprocess_params, postprocess_params = {}, {}
        if sampling_rate is not None:
            preprocess_params["sampling_rate"] = check_sampling_rate(sampling_rate)
        if timeout is not None:
            if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
                raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}.")
            preprocess_params["timeout"] = float(timeout)
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
        return preprocess_params, {}, postprocess_params

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
        given = {key for key in ("text", "image", "audio") if inputs.get(key) is not None}
        missing = sorted(given - set(modalities))
        if missing:
            raise ValueError(
                f"this model has no {' or '.join(missing)} encoder (it reads {', '.join(modalities)}): drop "
                f"{', '.join(repr(key) for key in missing)} from the example."
            )
        if inputs.get("sampling_rate") is not None:
            sampling_rate = check_sampling_rate(inputs["sampling_rate"])
        example = {"text": _check_text(inputs.get("text")), "image": None, "audio": None}
        if inputs.get("image") is not None:
            example["image"] = load_image(inputs["image"], timeout=timeout)
        if inputs.get("audio") is not None:
            target = getattr(self.processor.feature_extractor, "sampling_rate", None)
            max_seconds = getattr(self.processor.feature_extractor, "max_length_seconds", None)
            example["audio"] = load_audio(inputs["audio"], sampling_rate, target, timeout=timeout, max_seconds=max_seconds)
        if all(value is None for value in example.values()):
            raise ValueError(
                "the example has nothing to classify: give a non-empty 'text', an 'image' or an 'audio' clip."
            )
        return example

    def _collate(self, examples: list[dict[str, Any]]) -> BatchFeature:
        """Run the processor on a batch of decoded examples; a modality missing from every example is left out."""
        arguments = {}
        for key, argument in (("text", "text"), ("image", "images"), ("audio", "audio")):
            column = [example[key] for example in examples]
            if any(value is not None for value in column):
                arguments[argument] = column
        if "audio" in arguments:
            arguments["sampling_rate"] = getattr(self.processor.feature_extractor, "sampling_rate", None)
        with self._processor_lock:
            return self.processor(**arguments, return_tensors="pt")

    def get_inference_context(self):
        # `Pipeline.forward` runs `_forward` under this; `inference_mode` also skips autograd's version counters and
        # view tracking (the base class uses `no_grad`). Outputs leave the pipeline as Python floats.
        return torch.inference_mode

    def _forward(self, model_inputs: BatchFeature) -> dict[str, torch.Tensor]:
        return {"logits": self.model(**model_inputs).logits}

    def postprocess(
        self, model_outputs: dict[str, torch.Tensor], top_k: int | None = None, function_to_apply: str | None = None
    ) -> list[dict[str, Any]]:
        logits = model_outputs["logits"][0].float()
        function_to_apply = function_to_apply or self._default_function()
        if function_to_apply == "softmax":
            scores = torch.softmax(logits, dim=-1)
        elif function_to_apply == "sigmoid":
            scores = torch.sigmoid(logits)
        else:
            scores = logits
        id2label = self.model.config.id2label or {}
        order = sorted(range(scores.shape[0]), key=lambda index: -scores[index].item())
        if top_k is not None:
            order = order[:top_k]
        return [
            {"label": str(id2label.get(index, f"LABEL_{index}")), "score": scores[index].item()} for index in order
        ]

    def _default_function(self) -> str:
        config = self.model.config
        if config.problem_type == "regression":
            return "none"
        if config.problem_type == "multi_label_classification" or config.num_labels == 1:
            return "sigmoid"
        return "softmax"

    def run_single(self, inputs, preprocess_params, forward_params, postprocess_params):
        batch = self._collate([self.preprocess(inputs, **preprocess_params)])
        return self.postprocess(self.forward(batch, **forward_params), **postprocess_params)

    def get_iterator(self, inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params):
        # As `Pipeline.get_iterator`, but batches are built by the processor from decoded examples: examples of one
        # batch may lack different modalities, which tensor-level padding cannot express.
        if isinstance(inputs, collections.abc.Sized):
            dataset = PipelineDataset(inputs, self.preprocess, preprocess_params)
        else:
            num_workers = min(num_workers, 1)  # an iterable cannot be split between several workers
            dataset = PipelineIterator(inputs, self.preprocess, preprocess_params)
        dataloader = DataLoader(dataset, num_workers=num_workers, batch_size=batch_size, collate_fn=self._collate)
        model_iterator = PipelineIterator(dataloader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(model_iterator, self.postprocess, postprocess_params)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Save the model (with its code and `custom_pipelines`) and the processor, so that
        `pipeline(model=save_directory)` rebuilds this pipeline."""
        self.model.save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory)


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


__all__ = ["CUSTOM_PIPELINES", "PIPELINE_TASK", "MultimodalClassificationPipeline", "load_audio", "load_image"]
