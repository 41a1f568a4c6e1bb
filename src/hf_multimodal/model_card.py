"""Model cards of multimodal classifiers: card data from the config and a training run, rendered from the Jinja
template in `model_cards/` (shipped inside the wheel), and a `TrainerCallback` that fills the card while training."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import huggingface_hub
import transformers
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from safetensors import safe_open
from torch import nn
from transformers import AutoProcessor, TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME

from .configuration_multimodal import SUB_CONFIG_KEYS, MultimodalConfig
from .metrics import HEADLINE_METRICS, LOWER_IS_BETTER, METRIC_NAMES, problem_type_metrics, retrieval_recalls
from .modeling_fusion import FUSION_CLASSES
from .modeling_multimodal import ENCODER_ATTRIBUTES, encoder_output_size
from .trainer import checkpoints


DEFAULT_TEMPLATE = "multimodal_classification.jinja"
ALIGNMENT_TEMPLATE = "multimodal_alignment.jinja"
"""Template of aligned models (`MultimodalModel` trained with the contrastive objective)."""
DEFAULT_LICENSE = "apache-2.0"
PIPELINE_TAG = "other"
"""The Hub accepts only its own task ids as `pipeline_tag` and none of them is multimodal classification; the task
name of `pipeline("multimodal-classification")` goes into the tags."""

LIBRARY_NAME = "transformers"
METRICS_FILE = "metrics.json"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"

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


def parse_backbones(pairs: Sequence[str], option: str = "--backbones") -> dict[str, str]:
    """`["text=sentence-transformers/all-MiniLM-L6-v2", ...]` (a command line's `modality=hub_id` pairs) as
    `{modality: hub_id}`; ValueError naming `option` for a malformed pair.

    Example:

    ```python
    >>> parse_backbones(["text=sentence-transformers/all-MiniLM-L6-v2"])
    {'text': 'sentence-transformers/all-MiniLM-L6-v2'}
    ```
    """
    backbones = {}
    for pair in pairs:
        modality, _, hub_id = pair.partition("=")
        if modality not in SUB_CONFIG_KEYS or not looks_like_hub_id(hub_id):
            raise ValueError(
                f"{option} entry {pair!r} is not modality=hub_id with a modality among {', '.join(SUB_CONFIG_KEYS)} and "
                "a Hub repo id (e.g. text=sentence-transformers/all-MiniLM-L6-v2)."
            )
        backbones[modality] = hub_id
    return backbones


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
        dataset (`str`, *optional*): Hub id or name of the training data.
        dataset_local (`bool`, *optional*): Whether `dataset` names local data (not a Hub dataset); inferred from
            its form when not given.
        test (`dict`, *optional*): Test metrics of the model's problem type (`metrics.PROBLEM_TYPE_METRICS`: e.g.
            `accuracy`, `precision`, `recall`, `f1` (macro)) and `num_examples`.
        ablation (`dict`, *optional*): Test metrics with one modality removed, keyed `without_text`, ...
        hyperparameters (`dict`, *optional*): Training hyper-parameters, shown as a table.
        log_history (`list[dict]`, *optional*): `TrainerState.log_history` (training loss and validation metrics).
        backbones (`dict[str, str]`, *optional*): Hub ids of the pretrained encoders, by modality, where the config
            only knows local folders (the card's `base_model`).
        limitations (`list[str]`, *optional*): Extra limitations to state in the card.
        objective (`str`, *optional*, defaults to `"classification"`): `"contrastive"` for an aligned model (retrieval
            and zero-shot results, the alignment card).
        extra_tests (`dict`, *optional*): Results on more test splits, keyed by split.
        hpo (`dict`, *optional*): The hyper-parameter search that chose the settings (`scripts/train.py
            --hpo_trials`): `trials` (`number`, `state`, `params`, `objective`), `best`, `objective`.

    Example:

    ```python
    >>> report = TrainingReport(dataset="my-org/my-dataset", test={"accuracy": 0.91, "f1": 0.9, "num_examples": 200})
    >>> report.test["accuracy"]
    0.91
    ```
    """

    objective: str = "classification"
    dataset: str | None = None
    dataset_local: bool | None = None
    test: dict[str, Any] | None = None
    ablation: dict[str, dict[str, Any]] | None = None
    hyperparameters: dict[str, Any] | None = None
    log_history: list[dict[str, Any]] = field(default_factory=list)
    backbones: dict[str, str] | None = None
    limitations: list[str] = field(default_factory=list)
    extra_tests: dict[str, dict[str, Any]] | None = None
    hpo: dict[str, Any] | None = None

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
        for key, kind in (("test", dict), ("ablation", dict), ("hyperparameters", dict), ("backbones", dict)):
            if metrics.get(key) is not None and not isinstance(metrics[key], kind):
                raise ValueError(f"{metrics_file}: '{key}' must be a JSON object, got {type(metrics[key]).__name__}.")
        for name, value in (metrics.get("test") or {}).items():
            if name in METRIC_NAMES and not isinstance(value, (int, float)):
                raise ValueError(f"{metrics_file}: test metric '{name}' must be a number, got {value!r}.")
        report.dataset = metrics.get("dataset")
        report.dataset_local = metrics.get("dataset_local")
        report.test = metrics.get("test")
        report.ablation = metrics.get("ablation")
        report.hyperparameters = metrics.get("hyperparameters")
        report.backbones = metrics.get("backbones")
        report.objective = metrics.get("objective") or "classification"
        report.extra_tests = metrics.get("extra_tests")
        report.hpo = metrics.get("hpo")
        report.limitations = list(metrics.get("limitations") or [])
        return report


def _read_log_history(folder: Path) -> list[dict[str, Any]]:
    """`log_history` of the folder's `trainer_state.json`, or of its latest checkpoint's; empty when there is none."""
    candidates = [folder / TRAINER_STATE_NAME]
    candidates += [checkpoint / TRAINER_STATE_NAME for checkpoint in reversed(checkpoints(folder))]
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
    backbones: dict[str, str] | None = None,
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
        repo_id (`str`, *optional*): The model's Hub repo (title and usage snippet). Without it the card says the
            model is local, and the snippet loads it from its folder.
        model_name (`str`, *optional*): Title of the card; defaults to the repo's name, or for a local model to a
            description ("Local multimodal classifier of text, image").
        license (`str`, *optional*, defaults to `"apache-2.0"`): Hub license id.
        backbones (`dict[str, str]`, *optional*): Hub ids of pretrained encoders by modality (the card's
            `base_model`), overriding those found in `config.backbones` and the report.
        parameter_counts (`dict[str, int]`, *optional*): As returned by [`count_parameters`].
        processor ([`MultimodalProcessor`], *optional*): Its settings (text length, sampling rate) are stated.
        confusion_matrix (`str`, *optional*): Relative path of a confusion-matrix image shipped with the card.
        template (`str` or `os.PathLike`, *optional*): Another Jinja template to render.

    Example:

    ```python
    >>> from hf_multimodal import MultimodalConfig
    >>> from hf_multimodal.model_card import TrainingReport, build_model_card
    >>> config = MultimodalConfig(id2label={0: "neg", 1: "pos"})
    >>> card = build_model_card(config, TrainingReport(test={"accuracy": 0.9, "f1": 0.89}), repo_id="me/my-model")
    >>> card.data.model_name, card.data.eval_results[0].metric_value
    ('my-model', 0.9)
    ```
    """
    report = report or TrainingReport()
    aligned = report.objective == "contrastive" or (config.architectures or [None])[0] == "MultimodalModel"
    local = not looks_like_hub_id(repo_id)
    if local:  # a local folder: say so, and show where the folder goes in the usage snippet
        kind = "aligned multimodal model" if aligned else "multimodal classifier"
        model_name = model_name or f"Local {kind} of {', '.join(config.modalities)}"
        repo_id = "path/to/this/folder"
    model_name = model_name or repo_id.split("/")[-1]
    modalities = list(config.modalities)
    labels = [str(config.id2label[index]) for index in sorted(config.id2label)]
    base_models = _base_models(config, report, backbones)
    dataset = _dataset_info(report)
    counts = parameter_counts or {}
    started_from = (report.hyperparameters or {}).get("model_name_or_path")

    card_data = ModelCardData(
        model_name=model_name,
        library_name=LIBRARY_NAME,
        pipeline_tag=PIPELINE_TAG,
        license=license,
        base_model=[base_models[m] for m in modalities if m in base_models] or None,
        datasets=[dataset["id"]] if dataset and dataset["id"] else None,
        metrics=[name for name in METRIC_NAMES if name in (report.test or {})] or None,
        tags=[
            "hf_multimodal",
            "multimodal",
            *(("multimodal-retrieval", "zero-shot") if aligned else ("multimodal-classification",)),
            *modalities,
            f"fusion-{config.fusion_type}",
        ],
        eval_results=None if aligned else _eval_results(report, dataset) or None,
    )
    sampling_rate = getattr(getattr(processor, "feature_extractor", None), "sampling_rate", None) or 16000
    context = {
        "model_name": model_name,
        "repo_id": repo_id,
        "local": local,
        "modalities": modalities,
        "labels": labels,
        "problem_type": config.problem_type or "single_label_classification",
        "fusion": {
            "name": config.fusion_type,
            "description": FUSION_CLASSES[config.fusion_type].description,
            "hidden_size": config.fusion_hidden_size,
            "modality_dropout": config.modality_dropout,
        },
        "encoders": [_encoder_row(config, m, base_models, counts, started_from) for m in modalities],
        "num_parameters": _format_count(counts["total"]) if "total" in counts else None,
        "input_notes": _input_notes(modalities, processor),
        "sampling_rate": sampling_rate,
        "dataset": dataset,
        "hyperparameters": {
            str(name): _format_value(value)
            for name, value in (report.hyperparameters or {}).items()
            if value is not None and value != [] and value != {}
        },
        "limitations": _limitations(config, report, processor, dataset, aligned),
        "alignment_rows": _alignment_rows(report) if aligned else [],
        "confusion_matrix": confusion_matrix,
        "versions": {
            "hf_multimodal": _package_version(),
            "transformers": transformers.__version__,
            "huggingface_hub": huggingface_hub.__version__,
        },
        **_results_context(report, modalities, config.problem_type),
        **_training_log_context(report.log_history),
        **_search_context(report.hpo),
    }
    path = Path(template) if template is not None else template_path(ALIGNMENT_TEMPLATE if aligned else DEFAULT_TEMPLATE)
    return ModelCard.from_template(card_data, template_path=str(path), **context)


def _package_version() -> str:
    from . import __version__

    return __version__


def _base_models(config: MultimodalConfig, report: TrainingReport, overrides: dict[str, str] | None) -> dict[str, str]:
    # `from_backbones` records a local encoder folder by its name, which may look like a bare Hub id: only
    # `namespace/name` sources of the config count (the Hub keeps every model under a namespace); the report's and the
    # caller's backbones name Hub ids on purpose.
    found = {m: source for m, source in (config.backbones or {}).items() if looks_like_hub_id(source) and "/" in source}
    for extra in (report.backbones, overrides):
        for modality, repo in (extra or {}).items():
            if modality not in SUB_CONFIG_KEYS:
                raise ValueError(f"backbones has unknown modality {modality!r}: use text, image or audio.")
            if not looks_like_hub_id(repo):
                raise ValueError(f"backbones[{modality!r}] = {repo!r} is not a Hub repo id (namespace/name).")
            found[modality] = repo
    return found


def _dataset_info(report: TrainingReport) -> dict[str, Any] | None:
    if not report.dataset:
        return None
    is_hub = looks_like_hub_id(report.dataset) if report.dataset_local is None else not report.dataset_local
    return {
        "id": report.dataset if is_hub else None,
        "name": report.dataset if is_hub else Path(report.dataset).name,
        "num_test": (report.test or {}).get("num_examples"),
    }


_AVERAGES: dict[str, str] = {"precision": "macro", "recall": "macro", "f1": "macro", "f1_macro": "macro", "f1_micro": "micro"}
"""How the averaged metrics of `METRIC_NAMES` average over labels (the model-index's `metric_args`)."""


def _eval_results(report: TrainingReport, dataset: dict[str, Any] | None) -> list[EvalResult]:
    dataset_type = (dataset or {}).get("id") or "custom"  # a Hub dataset id; never a local folder's name
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
            metric_args={"average": _AVERAGES[name]} if name in _AVERAGES else None,
        )
        for name, pretty in METRIC_NAMES.items()
        if name in (report.test or {})
    ]


def _encoder_row(
    config: MultimodalConfig, modality: str, base_models: dict, counts: dict, started_from: str | None = None
) -> dict[str, str]:
    """One row of the card's encoder table. `started_from`: the saved model a training run started from
    (`--model_name_or_path`), whose weights every encoder took, whatever their first origin."""
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
        origin = None  # trained from random weights, unless a saved model's run trained it first
    if started_from:
        checkpoint = f"`{Path(started_from).name}`, the model its training started from"
        origin = f"{origin}, through {checkpoint}" if origin else checkpoint
    return {
        "modality": modality,
        "architecture": f"{sub_config.model_type} ({', '.join(details)})",
        "source": origin or "random weights",
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


def _limitations(
    config: MultimodalConfig, report: TrainingReport, processor: Any, dataset: dict | None, aligned: bool
) -> list[str]:
    items = []
    if aligned:
        items.append(
            "It aligns what its training pairs share: modalities that agree on something the pairs never showed "
            "(other labels, other domains) may not land close together. Cosine similarities compare items; they are "
            "not probabilities."
        )
    if dataset:
        items.append(
            f"It was trained and evaluated on {dataset['name']} only: expect lower accuracy on data from another "
            "distribution (other domains, vocabulary, image styles or recording conditions)."
        )
    ablation = _ablation_rows(report, list(config.modalities), config.problem_type)
    if ablation:
        row = max(ablation, key=lambda item: item["worse_by"])
        metric = _headline_metrics(config.problem_type)[0]
        name = METRIC_NAMES[metric] if metric in LOWER_IS_BETTER else METRIC_NAMES[metric].lower()
        if row["worse_by"] > 0:
            items.append(
                f"Without {row['modality']} its test {name} changes by {row['delta']}{_delta_unit(metric)}, the "
                f"largest drop of the ablation: the model relies most on {row['modality']}, so examples lacking it "
                "are the least reliable."
            )
        else:
            items.append(
                f"Removing any one modality from the test examples {'raised' if metric in LOWER_IS_BETTER else 'lowered'} "
                f"no {name} in the ablation: the test set does not show which modality the model relies on."
            )
    if config.problem_type == "multi_label_classification":
        items.append("It is a multi-label model: each label gets an independent sigmoid score.")
    if config.problem_type == "regression":
        items.append("It is a regression model: the pipeline's score is the predicted value itself.")
    items.append(
        "Scores are the model's confidences, not calibrated probabilities. It has not been evaluated for fairness "
        "or for safety-critical use: validate it on your own data before relying on its predictions."
    )
    return items + [str(item) for item in report.limitations]


def _alignment_rows(report: TrainingReport) -> list[dict[str, str]]:
    """Rows of the alignment card's evaluation table: retrieval recall per direction and zero-shot accuracy, per
    test split."""
    rows = []
    for split, results in {"test": report.test or {}, **(report.extra_tests or {})}.items():
        for name, first, wider in retrieval_recalls(results):
            rows.append(
                {
                    "split": split,
                    "evaluation": name.replace("_to_", " → "),
                    "first": _format_value(first),
                    "second": "-" if wider is None else _format_value(wider),
                }
            )
        for modality, scores in (results.get("zero_shot") or {}).items():
            rows.append(
                {"split": split, "evaluation": f"zero-shot, {modality}", "first": _format_value(scores["accuracy"]), "second": ""}
            )
    return rows


def _headline_metrics(problem_type: str | None) -> tuple[str, str]:
    problem_type_metrics(problem_type)  # checks the name
    return HEADLINE_METRICS[problem_type or "single_label_classification"]


def _delta_unit(metric: str) -> str:
    """The unit of a change of `metric` in the ablation: points (hundredths) for scores, none for errors."""
    return "" if metric in LOWER_IS_BETTER else " points"


def _ablation_rows(report: TrainingReport, modalities: list[str], problem_type: str | None) -> list[dict[str, Any]]:
    """One row per modality removed at test time: the headline and second metric of `problem_type`, the headline's
    change (in points for scores, as is for errors) and `worse_by`, that change counted positive when it is a loss."""
    first, second = _headline_metrics(problem_type)
    test, ablation = report.test or {}, report.ablation or {}
    if first not in test:
        return []
    lower_is_better = first in LOWER_IS_BETTER
    rows = []
    for modality in modalities:
        metrics = ablation.get(f"without_{modality}")
        if not isinstance(metrics, dict) or first not in metrics:
            continue
        delta = (1.0 if lower_is_better else 100.0) * (float(metrics[first]) - float(test[first]))
        rows.append(
            {
                "modality": modality,
                "first": _format_value(metrics[first]),
                "second": _format_value(metrics.get(second, "-")),
                "delta": f"{delta:+.3f}" if lower_is_better else f"{delta:+.1f}",
                "worse_by": delta if lower_is_better else -delta,
            }
        )
    return rows


def _results_context(report: TrainingReport, modalities: list[str], problem_type: str | None) -> dict[str, Any]:
    test = report.test or {}
    first, second = _headline_metrics(problem_type)
    return {
        "test": test or None,
        "test_metrics": [
            {"name": METRIC_NAMES.get(name, name), "value": _format_value(value)}
            for name, value in test.items()
            if name != "num_examples" and isinstance(value, (int, float))
        ],
        "ablation_metrics": {
            "first": METRIC_NAMES[first],
            "second": METRIC_NAMES[second],
            "change": f"{METRIC_NAMES[first]} change" + (" (points)" if _delta_unit(first) else ""),
            "test": [_format_value(test.get(first, "-")), _format_value(test.get(second, "-"))],
        },
        "ablation": _ablation_rows(report, modalities, problem_type),
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


def _search_context(hpo: dict[str, Any] | None) -> dict[str, Any]:
    """The hyper-parameter search's trial table: one row per trial (its settings, state and objective)."""
    if not hpo or not hpo.get("trials"):
        return {"search": None}
    names = list(dict.fromkeys(name for trial in hpo["trials"] for name in trial.get("params", {})))
    best = (hpo.get("best") or {}).get("number")
    rows = [
        {
            "number": f"**{trial['number']}** (best)" if trial["number"] == best else trial["number"],
            "state": trial.get("state", "-"),
            "params": [_format_value(trial["params"].get(name, "-")) for name in names],
            "objective": _format_value(trial["objective"]) if trial.get("objective") is not None else "-",
        }
        for trial in hpo["trials"]
    ]
    return {"search": {"objective": hpo.get("objective", "objective"), "names": names, "rows": rows}}


def _format_value(value: Any) -> str:
    """A value for a card table; absolute local paths are reduced to their last part (they say nothing to readers
    of a Hub card and may expose a user's folders)."""
    value = without_local_paths(value)
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 and value != 0 else f"{value:.4f}".rstrip("0").rstrip(".")
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    return str(value)


def without_local_paths(value: Any) -> Any:
    """`value` (a string, or a dict / list of them, at any depth) with absolute local paths reduced to their last
    part: what a training run writes (metrics, cards) travels to the Hub and must not expose a machine's folders.

    Example:

    ```python
    >>> without_local_paths({"text_model": "/home/me/.venv/minilm", "dataset": "outputs/data"})
    {'text_model': 'minilm', 'dataset': 'outputs/data'}
    ```
    """
    if isinstance(value, str) and os.path.isabs(value):
        return Path(value).name
    if isinstance(value, dict):
        return {key: without_local_paths(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_local_paths(item) for item in value]
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
    backbones: dict[str, str] | None = None,
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
    folder = checked_model_folder(folder)
    config = MultimodalConfig.from_pretrained(folder)
    return build_model_card(
        config,
        TrainingReport.from_folder(folder),
        repo_id=repo_id,
        license=license,
        backbones=backbones,
        parameter_counts=count_parameters(folder),
        processor=processor if processor is not None else AutoProcessor.from_pretrained(folder),
        confusion_matrix=CONFUSION_MATRIX_FILE if (folder / CONFUSION_MATRIX_FILE).is_file() else None,
    )


def checked_model_folder(folder: str | os.PathLike) -> Path:
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
        backbones (`dict[str, str]`, *optional*): Hub ids of pretrained encoders by modality.

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
        backbones: dict[str, str] | None = None,
    ):
        self.dataset = dataset
        self.repo_id = repo_id
        self.license = license
        self.backbones = backbones

    def on_evaluate(self, args, state, control, model=None, processing_class=None, **kwargs):
        self._write_card(args, state, model, processing_class)

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if state.is_world_process_zero:
            os.makedirs(args.output_dir, exist_ok=True)
            # the output folder's copy names the best checkpoint by its folder only (no local path)
            best = state.best_model_checkpoint and Path(state.best_model_checkpoint).name
            dataclasses.replace(state, best_model_checkpoint=best).save_to_json(
                os.path.join(args.output_dir, TRAINER_STATE_NAME)
            )
        self._write_card(args, state, model, processing_class)

    def _write_card(self, args, state, model, processing_class) -> None:
        if not state.is_world_process_zero or model is None:
            return
        report = TrainingReport(
            objective="classification" if hasattr(model, "classifier") else "contrastive",
            dataset=self.dataset,
            hyperparameters=hyperparameters_from_args(args),
            log_history=list(state.log_history),
        )
        card = build_model_card(
            model.config,
            report,
            repo_id=self.repo_id or args.hub_model_id,
            license=self.license,
            backbones=self.backbones,
            parameter_counts=count_parameters(model),
            processor=processing_class,
        )
        os.makedirs(args.output_dir, exist_ok=True)
        card.save(os.path.join(args.output_dir, "README.md"))


__all__ = [
    "ModelCardCallback",
    "TrainingReport",
    "build_model_card",
    "count_parameters",
    "hyperparameters_from_args",
    "model_card_from_output_folder",
    "parse_backbones",
    "without_local_paths",
    "template_path",
]
