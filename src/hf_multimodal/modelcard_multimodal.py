"""Model cards for multimodal classifiers: card data from the config and a training run, rendered from a Jinja
template in `model_cards/`, a `TrainerCallback` that fills the card while training, and a one-call push of a trained
output folder (model, processor, code and card) to the Hub."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import huggingface_hub
import transformers
from huggingface_hub import CommitInfo, EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import HfHubHTTPError
from safetensors import safe_open
from torch import nn
from transformers import AutoProcessor, TrainerCallback

from .configuration_multimodal import SUB_CONFIG_KEYS, MultimodalConfig
from .modeling_multimodal import ENCODER_ATTRIBUTES, MultimodalForSequenceClassification, encoder_output_size

try:  # huggingface_hub 2.x sends its requests through httpx2, 1.x through httpx
    from httpx2 import TimeoutException as HubTimeoutError
    from httpx2 import TransportError as HubTransportError
except ImportError:
    from httpx import TimeoutException as HubTimeoutError
    from httpx import TransportError as HubTransportError


DEFAULT_TEMPLATE = "multimodal_classification.jinja"
DEFAULT_LICENSE = "apache-2.0"
PIPELINE_TAG = "other"
"""The Hub accepts only its own task ids as `pipeline_tag` and none of them is multimodal classification; the task
name of `pipeline("multimodal-classification")` goes into the tags."""

LIBRARY_NAME = "transformers"
METRICS_FILE = "metrics.json"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
TRAINER_STATE_FILE = "trainer_state.json"
EXTRA_FILES: tuple[str, ...] = (METRICS_FILE, CONFUSION_MATRIX_FILE)
"""Files of a trained output folder that are pushed beside the model, processor, code and card."""

METRIC_NAMES: dict[str, str] = {
    "accuracy": "Accuracy",
    "precision": "Precision (macro)",
    "recall": "Recall (macro)",
    "f1": "F1 (macro)",
}
FUSION_DESCRIPTIONS: dict[str, str] = {
    "concat": "concatenation of the modality embeddings, then an MLP",
    "weighted_sum": "a learned weight per modality, softmax over the present ones",
    "gated": "a gated multimodal unit with context-dependent gates",
    "attention": "a learned query attending over one token per modality",
    "transformer": "a cross-modal transformer over all token sequences with a [CLS] readout",
    "bilstm": "a bidirectional LSTM over the modality tokens",
    "low_rank_tensor": "low-rank multimodal tensor fusion (LMF)",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_LOG_SKIP = ("runtime", "samples_per_second", "steps_per_second", "epoch")


def template_path(name: str = DEFAULT_TEMPLATE) -> Path:
    """The card template `name` from `model_cards/` (shipped inside the package, or at the root of a source tree)."""
    here = Path(__file__).resolve().parent
    for folder in (here / "model_cards", here.parents[1] / "model_cards"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(
        f"model card template {name!r} not found in {here / 'model_cards'} or the source tree's model_cards/."
    )


def looks_like_hub_id(value: str | None) -> bool:
    """Whether `value` names a Hub repo (`name` or `namespace/name`) rather than a local path."""
    if not value or os.path.isabs(value) or value.startswith(".") or os.path.exists(value):
        return False
    return bool(_HUB_ID.match(value))


@dataclass
class TrainingReport:
    r"""
    What a training run recorded, as a trained output folder holds it (`metrics.json` written by `scripts/train.py`,
    `trainer_state.json` for the training log).

    Args:
        dataset (`str`, *optional*): Hub id or local path of the training data.
        test (`dict`, *optional*): Test metrics: `accuracy`, `precision`, `recall`, `f1` (macro), `num_examples`.
        ablation (`dict`, *optional*): Test metrics with one modality removed, keyed `without_text`, ...
        hyperparameters (`dict`, *optional*): Training hyper-parameters, shown as a table.
        log_history (`list[dict]`, *optional*): `TrainerState.log_history` (training loss and validation metrics).
        base_model (`dict[str, str]`, *optional*): Hub ids of the pretrained encoders, by modality, where the config
            only knows local folders.
        limitations (`list[str]`, *optional*): Extra limitations to state in the card.

    Example:

    ```python
    >>> report = TrainingReport(dataset="my-org/my-dataset", test={"accuracy": 0.91, "f1": 0.9, "num_examples": 200})
    >>> report.test["accuracy"]
    0.91
    ```
    """

    dataset: str | None = None
    test: dict[str, Any] | None = None
    ablation: dict[str, dict[str, Any]] | None = None
    hyperparameters: dict[str, Any] | None = None
    log_history: list[dict[str, Any]] = field(default_factory=list)
    base_model: dict[str, str] | None = None
    limitations: list[str] = field(default_factory=list)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> TrainingReport:
        """Read `metrics.json` (optional; checked when present) and the training log of a trained output folder."""
        folder = Path(folder)
        report = cls(log_history=_read_log_history(folder))
        metrics_file = folder / METRICS_FILE
        if not metrics_file.is_file():
            return report
        try:
            metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{metrics_file} is not valid JSON ({error}): rewrite it or remove it.") from error
        if not isinstance(metrics, dict):
            raise ValueError(f"{metrics_file} must hold a JSON object, got {type(metrics).__name__}.")
        for key, kind in (("test", dict), ("ablation", dict), ("hyperparameters", dict), ("base_model", dict)):
            if metrics.get(key) is not None and not isinstance(metrics[key], kind):
                raise ValueError(f"{metrics_file}: '{key}' must be a JSON object, got {type(metrics[key]).__name__}.")
        for name, value in (metrics.get("test") or {}).items():
            if name in METRIC_NAMES and not isinstance(value, (int, float)):
                raise ValueError(f"{metrics_file}: test metric '{name}' must be a number, got {value!r}.")
        report.dataset = metrics.get("dataset")
        report.test = metrics.get("test")
        report.ablation = metrics.get("ablation")
        report.hyperparameters = metrics.get("hyperparameters")
        report.base_model = metrics.get("base_model")
        report.limitations = list(metrics.get("limitations") or [])
        return report


def _read_log_history(folder: Path) -> list[dict[str, Any]]:
    """`log_history` of the folder's `trainer_state.json`, or of its latest checkpoint's; empty when there is none."""
    candidates = [folder / TRAINER_STATE_FILE]
    steps = {path: path.name.rpartition("-")[2] for path in folder.glob("checkpoint-*")}
    latest_first = sorted((path for path, step in steps.items() if step.isdigit()), key=lambda p: -int(steps[p]))
    candidates += [checkpoint / TRAINER_STATE_FILE for checkpoint in latest_first]
    for candidate in candidates:
        if candidate.is_file():
            try:
                return list(json.loads(candidate.read_text(encoding="utf-8")).get("log_history") or [])
            except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
                continue
    return []


def hyperparameters_from_args(args: transformers.TrainingArguments) -> dict[str, Any]:
    """The training hyper-parameters of `args` worth a model card (as `Trainer.create_model_card` lists them)."""
    hyperparameters = {
        "learning_rate": args.learning_rate,
        "train_batch_size (per device)": args.per_device_train_batch_size,
        "eval_batch_size (per device)": args.per_device_eval_batch_size,
        "seed": args.seed,
    }
    if args.data_seed is not None:
        hyperparameters["data_seed"] = args.data_seed
    if args.world_size > 1:
        hyperparameters["num_devices"] = args.world_size
    if args.gradient_accumulation_steps > 1:
        hyperparameters["gradient_accumulation_steps"] = args.gradient_accumulation_steps
    hyperparameters["total_train_batch_size"] = (
        args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps
    )
    hyperparameters["optimizer"] = str(getattr(args.optim, "value", args.optim))
    hyperparameters["weight_decay"] = args.weight_decay
    hyperparameters["lr_scheduler_type"] = str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))
    if args.warmup_steps:
        hyperparameters["warmup_steps"] = args.warmup_steps
    if args.max_steps is not None and args.max_steps > 0:
        hyperparameters["training_steps"] = args.max_steps
    else:
        hyperparameters["num_epochs"] = args.num_train_epochs
    if args.bf16 or args.fp16:
        hyperparameters["mixed_precision"] = "bf16" if args.bf16 else "fp16"
    return hyperparameters


def count_parameters(source: nn.Module | str | os.PathLike) -> dict[str, int]:
    """Parameters per modality encoder and in total (`"total"`), of a model or of the weights of a saved folder.

    `source` is a `MultimodalPreTrainedModel` or a folder holding `model.safetensors` (or safetensors shards); a
    folder is read from the safetensors headers, without loading the weights.
    """
    if isinstance(source, (str, os.PathLike)):
        shapes = _safetensors_shapes(Path(source))
    else:
        shapes = {name: tuple(parameter.shape) for name, parameter in source.state_dict().items()}
    counts = {"total": 0}
    prefixes = {attribute: modality for modality, attribute in ENCODER_ATTRIBUTES.items()}
    for name, shape in shapes.items():
        size = math.prod(shape)
        counts["total"] += size
        parts = name.split(".")
        for attribute in (parts[0], parts[1] if len(parts) > 1 else None):
            if attribute in prefixes:
                counts[prefixes[attribute]] = counts.get(prefixes[attribute], 0) + size
                break
    return counts


def _safetensors_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{folder} holds no .safetensors weights: save the model there with save_pretrained first.")
    shapes = {}
    for file in files:
        with safe_open(str(file), framework="pt") as weights:
            for name in weights.keys():
                shapes[name] = tuple(weights.get_slice(name).get_shape())
    return shapes


def build_model_card(
    config: MultimodalConfig,
    report: TrainingReport | None = None,
    *,
    repo_id: str | None = None,
    model_name: str | None = None,
    license: str = DEFAULT_LICENSE,
    base_model: dict[str, str] | None = None,
    parameter_counts: dict[str, int] | None = None,
    processor: Any = None,
    confusion_matrix: str | None = None,
    template: str | os.PathLike | None = None,
) -> ModelCard:
    r"""
    Render the model card of a multimodal classifier with `huggingface_hub`'s `ModelCard` / `ModelCardData` /
    `EvalResult`, from the Jinja template in `model_cards/`.

    Metadata: `library_name`, `pipeline_tag`, tags, datasets, metrics, `base_model` (Hub ids of pretrained encoders),
    license and a `model-index` with the test results. Body: modalities, encoders and fusion, how to use (a snippet
    that runs as is), intended use and limitations, training hyper-parameters and log, test results with the
    per-modality ablation.

    Args:
        config ([`MultimodalConfig`]): The model's config.
        report ([`TrainingReport`], *optional*): The training run's data and results.
        repo_id (`str`, *optional*): Where the model lives (used by the usage snippet); defaults to `model_name`.
        model_name (`str`, *optional*): Title of the card; defaults to the last part of `repo_id`.
        license (`str`, *optional*, defaults to `"apache-2.0"`): Hub license id.
        base_model (`dict[str, str]`, *optional*): Hub ids of pretrained encoders by modality, overriding those found
            in `config.backbones` and the report.
        parameter_counts (`dict[str, int]`, *optional*): As returned by [`count_parameters`].
        processor ([`MultimodalProcessor`], *optional*): Its settings (text length, sampling rate) are stated.
        confusion_matrix (`str`, *optional*): Relative path of a confusion-matrix image shipped with the card.
        template (`str` or `os.PathLike`, *optional*): Another Jinja template to render.

    Example:

    ```python
    >>> from hf_multimodal import MultimodalConfig
    >>> from hf_multimodal.modelcard_multimodal import TrainingReport, build_model_card
    >>> config = MultimodalConfig(id2label={0: "neg", 1: "pos"})
    >>> card = build_model_card(config, TrainingReport(test={"accuracy": 0.9, "f1": 0.89}), repo_id="me/my-model")
    >>> card.data.model_name, card.data.eval_results[0].metric_value
    ('my-model', 0.9)
    ```
    """
    report = report or TrainingReport()
    if repo_id is None and model_name is None:
        raise ValueError("build_model_card needs repo_id or model_name to name the model.")
    repo_id = repo_id or model_name
    model_name = model_name or repo_id.split("/")[-1]
    modalities = list(config.modalities)
    labels = [str(config.id2label[index]) for index in sorted(config.id2label)]
    base_models = _base_models(config, report, base_model)
    dataset = _dataset_info(report)
    counts = parameter_counts or {}

    card_data = ModelCardData(
        model_name=model_name,
        library_name=LIBRARY_NAME,
        pipeline_tag=PIPELINE_TAG,
        license=license,
        base_model=[base_models[m] for m in modalities if m in base_models] or None,
        datasets=[dataset["id"]] if dataset and dataset["id"] else None,
        metrics=[name for name in METRIC_NAMES if name in (report.test or {})] or None,
        tags=["hf_multimodal", "multimodal", "multimodal-classification", *modalities, f"fusion-{config.fusion_type}"],
        eval_results=_eval_results(report, dataset) or None,
    )
    sampling_rate = getattr(getattr(processor, "feature_extractor", None), "sampling_rate", None) or 16000
    context = {
        "model_name": model_name,
        "repo_id": repo_id,
        "modalities": modalities,
        "labels": labels,
        "problem_type": config.problem_type or "single_label_classification",
        "fusion": {
            "name": config.fusion_type,
            "description": FUSION_DESCRIPTIONS.get(config.fusion_type, config.fusion_type),
            "hidden_size": config.fusion_hidden_size,
            "modality_dropout": config.modality_dropout,
        },
        "encoders": [_encoder_row(config, m, base_models, counts) for m in modalities],
        "num_parameters": _format_count(counts["total"]) if "total" in counts else None,
        "input_notes": _input_notes(modalities, processor),
        "sampling_rate": sampling_rate,
        "dataset": dataset,
        "hyperparameters": {
            str(name): _format_value(value)
            for name, value in (report.hyperparameters or {}).items()
            if value is not None and value != [] and value != {}
        },
        "limitations": _limitations(config, report, processor, dataset),
        "confusion_matrix": confusion_matrix,
        "versions": {
            "hf_multimodal": _package_version(),
            "transformers": transformers.__version__,
            "huggingface_hub": huggingface_hub.__version__,
        },
        **_results_context(report, modalities),
        **_training_log_context(report.log_history),
    }
    path = Path(template) if template is not None else template_path()
    return ModelCard.from_template(card_data, template_path=str(path), **context)


def _package_version() -> str:
    from . import __version__

    return __version__


def _base_models(config: MultimodalConfig, report: TrainingReport, overrides: dict[str, str] | None) -> dict[str, str]:
    found = {m: source for m, source in (config.backbones or {}).items() if looks_like_hub_id(source)}
    for extra in (report.base_model, overrides):
        for modality, repo in (extra or {}).items():
            if modality not in SUB_CONFIG_KEYS:
                raise ValueError(f"base_model has unknown modality {modality!r}: use text, image or audio.")
            if not looks_like_hub_id(repo):
                raise ValueError(f"base_model[{modality!r}] = {repo!r} is not a Hub repo id (namespace/name).")
            found[modality] = repo
    return found


def _dataset_info(report: TrainingReport) -> dict[str, Any] | None:
    if not report.dataset:
        return None
    is_hub = looks_like_hub_id(report.dataset)
    return {
        "id": report.dataset if is_hub else None,
        "name": report.dataset if is_hub else Path(report.dataset).name,
        "num_test": (report.test or {}).get("num_examples"),
    }


def _eval_results(report: TrainingReport, dataset: dict[str, Any] | None) -> list[EvalResult]:
    dataset_type = (dataset or {}).get("id") or (dataset or {}).get("name") or "custom"
    dataset_name = (dataset or {}).get("name") or "custom"
    return [
        EvalResult(
            task_type=PIPELINE_TAG,
            task_name="Multimodal classification",
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            dataset_split="test",
            metric_type=name,
            metric_name=pretty,
            metric_value=round(float(report.test[name]), 4),
            metric_args={"average": "macro"} if name != "accuracy" else None,
        )
        for name, pretty in METRIC_NAMES.items()
        if name in (report.test or {})
    ]


def _encoder_row(config: MultimodalConfig, modality: str, base_models: dict, counts: dict) -> dict[str, str]:
    sub_config = config.sub_config(modality)
    details = [f"width {encoder_output_size(sub_config)}"]
    for attribute, label in (("num_hidden_layers", "layers"), ("depths", "stages")):
        value = getattr(sub_config, attribute, None)
        if value:
            details.append(f"{len(value) if isinstance(value, (list, tuple)) else value} {label}")
    if getattr(sub_config, "num_stacks", None):
        details.append(f"{sub_config.num_stacks} x {sub_config.layers_per_stack} dilated layers")
    source = (config.backbones or {}).get(modality)
    if modality in base_models:
        origin = f"[{base_models[modality]}](https://huggingface.co/{base_models[modality]})"
    elif source:
        origin = f"local checkpoint `{Path(source).name}`"
    else:
        origin = "random weights"
    return {
        "modality": modality,
        "architecture": f"{sub_config.model_type} ({', '.join(details)})",
        "source": origin,
        "parameters": _format_count(counts[modality]) if modality in counts else "-",
    }


def _input_notes(modalities: list[str], processor: Any) -> list[str]:
    notes = []
    if "text" in modalities:
        length = getattr(processor, "max_text_length", None)
        notes.append(f"text up to {length} tokens (longer text is truncated)" if length else "text")
    if "image" in modalities:
        notes.append("images in any PIL mode, converted to RGB and resized by the image processor")
    if "audio" in modalities:
        extractor = getattr(processor, "feature_extractor", None)
        rate = getattr(extractor, "sampling_rate", None)
        seconds = getattr(extractor, "max_length_seconds", None)
        note = f"mono audio at {rate} Hz (other rates are resampled)" if rate else "mono audio"
        notes.append(note + (f", at most {seconds:g} s" if seconds else ""))
    return notes


def _limitations(config: MultimodalConfig, report: TrainingReport, processor: Any, dataset: dict | None) -> list[str]:
    items = []
    if dataset:
        items.append(
            f"It was trained and evaluated on {dataset['name']} only: expect lower accuracy on data from another "
            "distribution (other domains, vocabulary, image styles or recording conditions)."
        )
    worst = _ablation_rows(report, list(config.modalities))
    if worst:
        row = min(worst, key=lambda item: item["delta_value"])
        items.append(
            f"Without {row['modality']} its test accuracy changes by {row['delta']} points, the largest change of the "
            f"ablation: the model relies most on {row['modality']}, so examples lacking it are the least reliable."
        )
    if config.problem_type == "multi_label_classification":
        items.append("It is a multi-label model: each label gets an independent sigmoid score.")
    items.append(
        "Scores are the model's confidences, not calibrated probabilities. It has not been evaluated for fairness "
        "or for safety-critical use: validate it on your own data before relying on its predictions."
    )
    return items + [str(item) for item in report.limitations]


def _ablation_rows(report: TrainingReport, modalities: list[str]) -> list[dict[str, Any]]:
    test, ablation = report.test or {}, report.ablation or {}
    if "accuracy" not in test:
        return []
    rows = []
    for modality in modalities:
        metrics = ablation.get(f"without_{modality}")
        if not isinstance(metrics, dict) or "accuracy" not in metrics:
            continue
        delta = 100.0 * (float(metrics["accuracy"]) - float(test["accuracy"]))
        rows.append(
            {
                "modality": modality,
                "accuracy": _format_value(metrics["accuracy"]),
                "f1": _format_value(metrics.get("f1", "-")),
                "delta": f"{delta:+.1f}",
                "delta_value": delta,
            }
        )
    return rows


def _results_context(report: TrainingReport, modalities: list[str]) -> dict[str, Any]:
    test = report.test or {}
    return {
        "test": test or None,
        "test_metrics": [
            {"name": METRIC_NAMES.get(name, name), "value": _format_value(value)}
            for name, value in test.items()
            if name != "num_examples" and isinstance(value, (int, float))
        ],
        "test_accuracy": _format_value(test.get("accuracy", "-")),
        "test_f1": _format_value(test.get("f1", "-")),
        "ablation": _ablation_rows(report, modalities),
    }


def _training_log_context(log_history: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows of (epoch, step, last training loss, validation metrics) per evaluation in a `Trainer` log history."""
    rows, metric_names, last_loss = [], [], "-"
    for entry in log_history:
        if "loss" in entry:
            last_loss = _format_value(entry["loss"])
        metrics = {
            key[len("eval_") :]: _format_value(value)
            for key, value in entry.items()
            if key.startswith("eval_") and not key.endswith(_LOG_SKIP)
        }
        if metrics:
            metric_names += [name for name in metrics if name not in metric_names]
            rows.append(
                {
                    "epoch": _format_value(entry.get("epoch", "-")),
                    "step": entry.get("step", "-"),
                    "loss": last_loss,
                    "metrics": metrics,
                }
            )
    return {"training_log": rows, "training_log_metrics": metric_names}


def _format_value(value: Any) -> str:
    """A value for a card table; absolute local paths are reduced to their last part (they say nothing to readers
    of a Hub card and may expose a user's folders)."""
    value = _without_local_paths(value)
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 and value != 0 else f"{value:.4f}".rstrip("0").rstrip(".")
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    return str(value)


def _without_local_paths(value: Any) -> Any:
    if isinstance(value, str) and os.path.isabs(value):
        return Path(value).name
    if isinstance(value, dict):
        return {key: _without_local_paths(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_local_paths(item) for item in value]
    return value


def _format_count(count: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f}{unit} ({count:,})"
    return f"{count:,}"


def model_card_from_output_folder(
    folder: str | os.PathLike,
    *,
    repo_id: str | None = None,
    license: str = DEFAULT_LICENSE,
    base_model: dict[str, str] | None = None,
    processor: Any = None,
) -> ModelCard:
    """
    Build the model card of a trained output folder: the saved model's config and weights, its processor,
    `metrics.json` (test results, ablation, hyper-parameters) and the training log in `trainer_state.json`.

    Example:

    ```python
    >>> card = model_card_from_output_folder("outputs/demo", repo_id="me/demo-classifier")  # doctest: +SKIP
    >>> card.save("outputs/demo/README.md")  # doctest: +SKIP
    ```
    """
    folder = _checked_model_folder(folder)
    config = MultimodalConfig.from_pretrained(folder)
    return build_model_card(
        config,
        TrainingReport.from_folder(folder),
        repo_id=repo_id,
        model_name=None if repo_id else folder.name,
        license=license,
        base_model=base_model,
        parameter_counts=count_parameters(folder),
        processor=processor if processor is not None else AutoProcessor.from_pretrained(folder),
        confusion_matrix=CONFUSION_MATRIX_FILE if (folder / CONFUSION_MATRIX_FILE).is_file() else None,
    )


def _checked_model_folder(folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"{folder} is not a saved model folder (no config.json): pass the output folder of scripts/train.py, "
            "or a folder written by model.save_pretrained() and processor.save_pretrained()."
        )
    return folder


class ModelCardCallback(TrainerCallback):
    r"""
    Fills the model card while `Trainer` trains: after every evaluation and at the end of training it renders the
    card (hyper-parameters from the `TrainingArguments`, the training log so far) into `output_dir/README.md`, and at
    the end saves the `trainer_state.json` that [`model_card_from_output_folder`] reads the log from.

    Args:
        dataset (`str`, *optional*): Hub id or name of the training data.
        repo_id (`str`, *optional*): Hub repo the model is meant for; defaults to `args.hub_model_id`, else the name
            of `output_dir`.
        license (`str`, *optional*, defaults to `"apache-2.0"`): Hub license id.
        base_model (`dict[str, str]`, *optional*): Hub ids of pretrained encoders by modality.

    Example:

    ```python
    >>> from transformers import Trainer
    >>> callback = ModelCardCallback(dataset="me/my-data")
    >>> trainer = Trainer(model=model, args=args, ..., callbacks=[callback])  # doctest: +SKIP
    >>> trainer.train()  # doctest: +SKIP  (writes args.output_dir/README.md)
    ```
    """

    def __init__(
        self,
        dataset: str | None = None,
        repo_id: str | None = None,
        license: str = DEFAULT_LICENSE,
        base_model: dict[str, str] | None = None,
    ):
        self.dataset = dataset
        self.repo_id = repo_id
        self.license = license
        self.base_model = base_model

    def on_evaluate(self, args, state, control, model=None, processing_class=None, **kwargs):
        self._write_card(args, state, model, processing_class)

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if state.is_world_process_zero:
            os.makedirs(args.output_dir, exist_ok=True)
            state.save_to_json(os.path.join(args.output_dir, TRAINER_STATE_FILE))
        self._write_card(args, state, model, processing_class)

    def _write_card(self, args, state, model, processing_class) -> None:
        if not state.is_world_process_zero or model is None:
            return
        report = TrainingReport(
            dataset=self.dataset, hyperparameters=hyperparameters_from_args(args), log_history=list(state.log_history)
        )
        card = build_model_card(
            model.config,
            report,
            repo_id=self.repo_id or args.hub_model_id or Path(args.output_dir).resolve().name,
            license=self.license,
            base_model=self.base_model,
            parameter_counts=count_parameters(model),
            processor=processing_class,
        )
        os.makedirs(args.output_dir, exist_ok=True)
        card.save(os.path.join(args.output_dir, "README.md"))


class HubPushError(OSError):
    r"""
    A push of a trained output folder failed after its repo existed: the Hub answered an error, or the connection
    dropped or timed out, beyond what the `huggingface_hub` client retries by itself. The message says which repo,
    what failed (the Hub's status and message, or the broken connection, and the request), where the repo stands
    (normally still at its previous commit: the Hub applies a commit whole or not at all) and what to do. It never
    holds the token; the client's original error is chained as `__cause__`.

    Attributes:
        repo_id (`str`): The repo pushed to.
        previous_commit (`str`, *optional*): The repo's commit when the push started.
        current_commit (`str`, *optional*): Its commit read back after the failure; None when that failed too.
        status (`int`, *optional*): The Hub's HTTP status; None when the connection failed.

    Example:

    ```python
    >>> try:
    ...     push_output_folder_to_hub("outputs/demo", "me/demo-classifier")  # doctest: +SKIP
    ... except HubPushError as error:
    ...     print(error.repo_id, error.current_commit == error.previous_commit)  # doctest: +SKIP
    me/demo-classifier True
    ```
    """

    def __init__(
        self,
        message: str,
        repo_id: str | None = None,
        previous_commit: str | None = None,
        current_commit: str | None = None,
        status: int | None = None,
    ):
        super().__init__(message)
        self.repo_id = repo_id
        self.previous_commit = previous_commit
        self.current_commit = current_commit
        self.status = status


def push_output_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | bool | None = None,
    commit_message: str | None = None,
    license: str = DEFAULT_LICENSE,
    base_model: dict[str, str] | None = None,
) -> CommitInfo:
    """
    Push a trained output folder to the Hub in one commit: the model (safetensors + config with `auto_map` and
    `custom_pipelines`), its processor, the code of model, processor and pipeline, the generated model card
    (`README.md`), `metrics.json` and the confusion matrix. Checkpoints and other training files stay local.

    The model and processor are loaded first (a folder whose weights do not load is refused before anything is
    sent) and saved again by the installed package. The repo is created if needed (`private` applies then). The
    commit is made on top of the commit the repo is at when the upload starts, so it either lands whole on exactly
    that commit or not at all.

    Raises:
        [`HubPushError`]: The upload or the commit failed (an HTTP error, or a dropped or timed-out connection, after
            the client's own retries). The message says what failed, that the repo is still at its previous commit
            (or where it stands) and to rerun the push, which sends only what the Hub does not store yet.
        [`~huggingface_hub.errors.HfHubHTTPError`]: The repo could not be created or reached (e.g. no or a wrong
            token, or no write access to the namespace): nothing was sent.

    Example:

    ```python
    >>> info = push_output_folder_to_hub("outputs/demo", "me/demo-classifier", private=True)  # doctest: +SKIP
    >>> info.commit_url  # doctest: +SKIP
    ```
    """
    folder = _checked_model_folder(folder)
    model = MultimodalForSequenceClassification.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    card = model_card_from_output_folder(
        folder, repo_id=repo_id, license=license, base_model=base_model, processor=processor
    )
    with tempfile.TemporaryDirectory() as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        card.save(os.path.join(staging, "README.md"))
        for name in EXTRA_FILES:
            if (folder / name).is_file():
                shutil.copyfile(folder / name, os.path.join(staging, name))
        previous_commit = None
        try:
            previous_commit = api.repo_info(repo_id).sha
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=staging,
                commit_message=commit_message or f"Upload {folder.name}: model, processor, code and model card",
                delete_patterns=["*.safetensors", "*.safetensors.index.json", "*.py"],  # no stale shards or code
                parent_commit=previous_commit,
            )
        except Exception as error:
            failure = _hub_failure(error)
            if failure is None:
                raise
            raise _push_error(api, folder, repo_id, previous_commit, error, failure) from error


def _hub_failure(error: BaseException | None) -> HfHubHTTPError | HubTransportError | None:
    """The HTTP error answer or broken connection behind `error` (`huggingface_hub` wraps failed LFS uploads in a
    `RuntimeError`), or None when `error` is no Hub failure."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (HfHubHTTPError, HubTransportError)):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _push_error(
    api: HfApi,
    folder: Path,
    repo_id: str,
    previous_commit: str | None,
    error: BaseException,
    failure: HfHubHTTPError | HubTransportError,
) -> HubPushError:
    """A [`HubPushError`] saying what failed, where `repo_id` stands now (read back from the Hub) and what to do."""
    if isinstance(failure, HfHubHTTPError):
        status, request = failure.response.status_code, failure.response.request
        what = f"the Hub answered {status} {failure.response.reason_phrase}"
        if failure.server_message:
            what += f" ({' '.join(failure.server_message.split())})"
    else:
        status = None
        what = "the request timed out" if isinstance(failure, HubTimeoutError) else "the connection dropped"
        what += f" ({type(failure).__name__}: {failure})"
        try:
            request = failure.request
        except RuntimeError:  # httpx attaches the request to most, not all, transport errors
            request = None
    if request is not None:  # without the query: presigned storage URLs carry signatures there
        what += f" during {request.method} {str(request.url).split('?', 1)[0]}"
    if error is not failure:  # e.g. which file an LFS upload was sending
        what += f" ({' '.join(str(error).split())})"
    try:
        current_commit = api.repo_info(repo_id).sha
    except Exception as check_error:  # the Hub may still be failing: report that, never mask the push's error
        current_commit = None
        state = f"Its commit could not be read back ({type(check_error).__name__})"
        state += f"; it was at commit {previous_commit} when this push started." if previous_commit else "."
    if current_commit is not None and current_commit == previous_commit:
        state = f"The repo is unchanged: {repo_id} is still at commit {previous_commit}."
    elif current_commit is not None:
        state = f"{repo_id} is now at commit {current_commit}, not at the commit this push started from "
        state += f"({previous_commit or 'unknown'}): check it before pushing again."
    if status in (401, 403):
        advice = f"Check that the token in use (token=..., HF_TOKEN or `hf auth login`) may write to {repo_id}."
    elif status == 412:
        advice = "Someone else pushed to the repo meanwhile: rerun the push to commit on top of their commit."
    elif status is None or status in (408, 429) or status >= 500:
        advice = "This looks transient: rerun the push to retry (files the Hub already stored are not sent again)."
    else:
        advice = "Fix the cause above, then rerun the push."
    message = f"Pushing {folder} to {repo_id} failed: {what}. {state} {advice}"
    return HubPushError(message, repo_id, previous_commit, current_commit, status)


__all__ = [
    "HubPushError",
    "ModelCardCallback",
    "TrainingReport",
    "build_model_card",
    "count_parameters",
    "hyperparameters_from_args",
    "model_card_from_output_folder",
    "push_output_folder_to_hub",
    "template_path",
]
