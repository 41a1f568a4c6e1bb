"""Multi-label classification and regression through the whole path: metrics, collator labels, label-column reading,
model selection, model card, and (slow) scripts/train.py runs that train, evaluate, ablate, reload, predict through
the pipeline and push."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, EvalPrediction, pipeline

from hf_multimodal.data_collator import MultimodalDataCollator
from hf_multimodal.metrics import (
    METRIC_NAMES,
    PROBLEM_TYPE_METRICS,
    metrics_function,
    multi_label_metrics,
    regression_metrics,
)
from hf_multimodal.model_card import TrainingReport, build_model_card
from hf_multimodal.trainer import MultimodalTrainer
from hf_multimodal.training_args import MultimodalTrainingArguments

from conftest import AUDIO_DIR, HUB_TOKENS, tiny_model
from make_demo_dataset import build_digit_value_dataset, build_digits_present_dataset, save_demo_dataset
from test_training import TRAIN_SCRIPT, run, tiny_arguments
from train import _label_names, format_results_table


MULTI_LABEL, REGRESSION = "multi_label_classification", "regression"


def test_multi_label_metrics_threshold_and_map():
    references = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    scores = np.array([[0.9, 0.4, 0.1], [0.2, 0.6, 0.3], [0.7, 0.45, 0.2]])
    result = multi_label_metrics(scores, references)  # threshold 0.5: the second label of the last example is missed
    assert result["f1_micro"] == pytest.approx(2 * 3 / (2 * 3 + 0 + 1))
    assert result["f1_macro"] == pytest.approx((1.0 + 2 / 3 + 0.0) / 3)  # a label never present nor predicted: 0
    assert result["map"] == pytest.approx(1.0)  # every positive outranks every negative; label 3 has no positive
    assert multi_label_metrics(scores, references, threshold=0.45)["f1_micro"] == pytest.approx(1.0)
    assert math.isnan(multi_label_metrics(scores, np.zeros_like(references))["map"])


def test_regression_metrics_match_their_definitions():
    predictions, references = np.array([0.5, 2.0, 2.5, 5.0]), np.array([1.0, 2.0, 3.0, 4.0])
    errors = predictions - references
    result = regression_metrics(predictions, references)
    assert result["mse"] == pytest.approx(np.mean(errors**2)) and result["mae"] == pytest.approx(np.mean(abs(errors)))
    assert result["r2"] == pytest.approx(1 - np.sum(errors**2) / np.sum((references - references.mean()) ** 2))
    assert result["pearson"] == pytest.approx(np.corrcoef(predictions, references)[0, 1])
    assert math.isnan(regression_metrics(np.ones(4), references)["pearson"])  # constant predictions: undefined


@pytest.mark.parametrize("problem_type", list(PROBLEM_TYPE_METRICS))
def test_metrics_function_reports_the_metrics_of_its_problem_type(problem_type):
    logits = np.array([[2.0, -1.0, -3.0], [-2.0, 1.5, -1.0], [1.0, 0.5, -2.0]], dtype=np.float32)
    labels = {
        "single_label_classification": np.array([0, 1, 1]),
        MULTI_LABEL: np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]]),
        REGRESSION: np.array([2.5, -1.5, 1.0]),
    }[problem_type]
    if problem_type == REGRESSION:
        logits = logits[:, :1]
    result = metrics_function(3, problem_type)(EvalPrediction(predictions=logits, label_ids=labels))
    assert set(result) == set(PROBLEM_TYPE_METRICS[problem_type])
    if problem_type == MULTI_LABEL:  # sigmoid >= 0.5 is logit >= 0
        assert result == multi_label_metrics(1 / (1 + np.exp(-logits)), labels)
    if problem_type == REGRESSION:
        assert result["mse"] == pytest.approx(np.mean((logits[:, 0] - labels) ** 2))
    with pytest.raises(ValueError, match="problem_type must be one of"):
        metrics_function(3, "ranking")


def test_collator_labels_per_problem_type(processor):
    multi = MultimodalDataCollator(processor, ["text"], problem_type=MULTI_LABEL, num_labels=3)
    labels = multi.labels_tensor([[0, 2], [], [0.0, 1.0, 0.0], [True, False, True]])
    assert labels.dtype == torch.float32
    assert labels.tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0], [1, 0, 1]]
    named = MultimodalDataCollator(
        processor, ["text"], problem_type=MULTI_LABEL, num_labels=2, label_to_id={"cat": 0, "dog": 1}
    )
    assert named.labels_tensor([["dog"], ["cat", "dog"]]).tolist() == [[0, 1], [1, 1]]
    regression = MultimodalDataCollator(processor, ["text"], problem_type=REGRESSION)
    batch = regression([{"text": "seven", "label": 7}, {"text": "two", "label": 2.5}])
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == [7.0, 2.5]
    single = MultimodalDataCollator(processor, ["text"])
    assert single.labels_tensor([3, 1]).dtype == torch.long
    with pytest.raises(ValueError, match="outside 0..2"):
        multi.labels_tensor([[3]])
    with pytest.raises(ValueError, match="multi-hot label of 2 values, not 3"):
        multi.labels_tensor([[0.0, 1.0]])
    with pytest.raises(TypeError, match="give a list of classes"):
        multi.labels_tensor(["cat"])
    with pytest.raises(ValueError, match="problem_type must be one of"):
        MultimodalDataCollator(processor, ["text"], problem_type="ranking")


@pytest.mark.parametrize(
    ("values", "feature", "forced", "expected"),
    [
        ([[0, 2], [1]], datasets.List(datasets.ClassLabel(names=["a", "b", "c"])), None, (["a", "b", "c"], MULTI_LABEL)),
        ([["x"], ["y", "x"]], None, None, (["x", "y"], MULTI_LABEL)),
        ([[0, 3], [1]], None, None, (["0", "1", "2", "3"], MULTI_LABEL)),
        ([[0.0, 1.0], [1.0, 1.0]], None, None, (["0", "1"], MULTI_LABEL)),  # multi-hot
        ([0.5, 2.0], None, None, (["label"], REGRESSION)),
        ([1, 4], None, REGRESSION, (["label"], REGRESSION)),
        ([1, 4], None, None, (["0", "1", "2", "3", "4"], "single_label_classification")),
    ],
)
def test_the_problem_type_is_read_from_the_label_column(values, feature, forced, expected):
    features = datasets.Features({"label": feature}) if feature is not None else None
    train = datasets.Dataset.from_dict({"label": values}, features=features)
    labels, _, problem_type = _label_names(train, "label", forced)
    assert (labels, problem_type) == expected


def test_wrong_label_columns_for_a_problem_type_are_refused():
    with pytest.raises(TypeError, match="needs a column of label lists or multi-hot lists"):
        _label_names(datasets.Dataset.from_dict({"label": [1, 2]}), "label", MULTI_LABEL)
    with pytest.raises(TypeError, match="needs a column of numbers"):
        _label_names(datasets.Dataset.from_dict({"label": ["a", "b"]}), "label", REGRESSION)


def test_error_metrics_select_the_best_model_by_their_minimum(tmp_path):
    assert MultimodalTrainingArguments(str(tmp_path), metric_for_best_model="mse").greater_is_better is False
    assert MultimodalTrainingArguments(str(tmp_path), metric_for_best_model="eval_mae").greater_is_better is False
    assert MultimodalTrainingArguments(str(tmp_path), metric_for_best_model="f1_macro").greater_is_better is True
    assert MultimodalTrainingArguments(str(tmp_path), metric_for_best_model="loss").greater_is_better is False


@pytest.mark.parametrize(
    ("problem_type", "prior", "expected"),
    [
        (MULTI_LABEL, torch.tensor([0.5, 0.2, 0.9]), [0.0, math.log(0.2 / 0.8), math.log(0.9 / 0.1)]),
        (REGRESSION, torch.tensor([4.5]), [4.5]),
    ],
)
def test_examples_without_input_get_the_training_prior(tmp_path, problem_type, prior, expected):
    num_labels = 1 if problem_type == REGRESSION else 3
    model = tiny_model(modalities=("text",), num_labels=num_labels, problem_type=problem_type)
    args = MultimodalTrainingArguments(
        str(tmp_path), report_to="none", use_cpu=True, eval_strategy="no", save_strategy="no", early_stopping_patience=0,
        load_best_model_at_end=False,
    )
    trainer = MultimodalTrainer(model=model, args=args, label_prior=prior)
    assert trainer.fallback_logits.tolist() == pytest.approx(expected, abs=1e-6)


def card_for(problem_type: str, test: dict, ablation: dict) -> str:
    id2label = {0: "value"} if problem_type == REGRESSION else {0: "a", 1: "b", 2: "c"}
    model = tiny_model(id2label=id2label, problem_type=problem_type)
    report = TrainingReport(test=test, ablation=ablation, hyperparameters={"multi_label_threshold": 0.5})
    return build_model_card(model.config, report).text


def test_the_model_card_reports_the_metrics_of_the_problem_type():
    test = {"mse": 0.5, "mae": 0.4, "r2": 0.9, "pearson": 0.95, "num_examples": 20}
    worse = {f"without_{m}": {**test, "mse": 0.5 + drop, "r2": 0.9 - drop} for m, drop in (("text", 0.25), ("image", 2.0))}
    text = card_for(REGRESSION, test, worse)
    assert "predicts a number (value)" in text and "| MSE | 0.5 |" in text and "| Pearson r | 0.95 |" in text
    assert "| Inputs | MSE | R^2 | MSE change |" in text and "| without image | 2.5 | -1.1 | +2.000 |" in text
    assert "Without image its test MSE changes by +2.000, the largest drop of the ablation" in text
    assert "the pipeline's score is the predicted value itself" in text

    test = {"f1_macro": 0.8, "f1_micro": 0.85, "map": 0.9, "num_examples": 20}
    text = card_for(MULTI_LABEL, test, {"without_audio": {**test, "f1_macro": 0.6, "map": 0.7}})
    assert "into 3 classes\n(a, b, c), any number of them per example" in text
    assert "| F1 (micro) | 0.85 |" in text and "| mAP (mean average precision) | 0.9 |" in text
    assert "| Inputs | F1 (macro) | mAP (mean average precision) | F1 (macro) change (points) |" in text
    assert "| without audio | 0.6 | 0.7 | -20.0 |" in text and "`multi_label_threshold`" in text


def test_results_table_columns_follow_the_problem_type():
    test = {"mse": 0.5, "mae": 0.4, "r2": 0.9, "pearson": 0.95, "num_examples": 20}
    results = {"modalities": ["image", "audio"], "fusion_type": "gated", "problem_type": REGRESSION, "test": test,
               "ablation": {"without_image": test}}
    table = format_results_table(results)
    assert "| evaluation | MSE | MAE | R^2 | Pearson r |" in table and "| without image | 0.500 | 0.400 |" in table


BUILDERS = {MULTI_LABEL: build_digits_present_dataset, REGRESSION: build_digit_value_dataset}


@pytest.mark.parametrize("problem_type", list(BUILDERS))
def test_demo_variants_are_deterministic_and_labelled_by_their_digits(problem_type):
    first, again = (BUILDERS[problem_type](AUDIO_DIR, num_train=20, num_validation=10, num_test=10) for _ in range(2))
    for split, part in first.items():
        assert part.data.table.equals(again[split].data.table)  # same arguments, same bytes
        assert all(part["image"]) and all(part["audio"]) and not any(part["text"])
        assert sorted(part["image_digit"]) == sorted(index % 10 for index in range(len(part)))  # balanced scans
        digits = zip(part["image_digit"], part["audio_digit"], part["label"])
        if problem_type == MULTI_LABEL:
            assert part.features["label"].feature.names[7] == "seven"
            assert all(label == sorted({image, audio}) for image, audio, label in digits)
        else:
            assert all(image == audio == label for image, audio, label in digits)
    if problem_type == MULTI_LABEL:  # two digits in most examples, one in some
        assert {len(label) for part in first.values() for label in part["label"]} == {1, 2}


# --- scripts/train.py end to end ------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=list(BUILDERS))
def problem_data(request, tmp_path_factory) -> tuple[str, Path]:
    """A tiny demo dataset of the problem type (64 train, 16 validation, 24 test) whose test split lacks the image of
    every third example: without audio, those have no input left and get the training prior."""
    dataset = BUILDERS[request.param](AUDIO_DIR, num_train=64, num_validation=16, num_test=24)
    dataset["test"] = dataset["test"].map(
        lambda row, index: {"image": None if index % 3 == 0 else row["image"]}, with_indices=True
    )
    return request.param, save_demo_dataset(dataset, tmp_path_factory.mktemp(request.param) / "data")


@pytest.mark.slow
def test_train_evaluate_reload_predict_and_push(problem_data, tmp_path, hub_server):
    """Each new problem type through scripts/train.py (2 epochs, gated head, in a subprocess pushing to the local Hub):
    finite metrics of its type with every modality and in the ablation, the best model reloaded with
    AutoModelForSequenceClassification, predictions through the pipeline, and a model card with the type's metrics."""
    problem_type, data = problem_data
    token, user = next(iter(HUB_TOKENS.items()))
    output, repo = tmp_path / "run", f"{user}/{problem_type.replace('_', '-')}"
    arguments = tiny_arguments(
        data, output, modalities=["image", "audio"], num_train_epochs=2, eval_strategy="epoch", save_strategy="epoch",
        learning_rate=1e-3, push_to_hub=True, hub_model_id=repo, hub_token=token,
    )
    env = {"HF_ENDPOINT": hub_server.endpoint, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0",
           "HF_HOME": str(tmp_path / "hf_home")}
    result = run([sys.executable, str(TRAIN_SCRIPT), *arguments], env)
    names = PROBLEM_TYPE_METRICS[problem_type]

    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["problem_type"] == problem_type and metrics["test"]["num_examples"] == 24
    for evaluation in (metrics["test"], metrics["ablation"]["without_image"], metrics["ablation"]["without_audio"]):
        assert set(names) <= set(evaluation) and all(math.isfinite(evaluation[name]) for name in names)
    assert metrics["ablation"]["without_audio"] != metrics["test"]  # 8 of its examples fell back on the prior
    assert "confusion_matrix" not in metrics and not (output / "confusion_matrix.png").exists()
    assert "| evaluation | " + " | ".join(METRIC_NAMES[name] for name in names) + " |" in result.stdout

    model = AutoModelForSequenceClassification.from_pretrained(output)
    assert model.config.problem_type == problem_type
    classifier = pipeline("multimodal-classification", model=str(output))
    example = datasets.load_from_disk(str(data))["test"][1]
    inputs = {"image": example["image"]["bytes"], "audio": example["audio"]["bytes"]}
    predictions = classifier(inputs)
    if problem_type == REGRESSION:  # the value itself: the raw output, no sigmoid
        assert [p["label"] for p in predictions] == ["label"]
        value = classifier(inputs, function_to_apply="none")[0]["score"]
        assert predictions[0]["score"] == value and classifier(inputs, function_to_apply="sigmoid")[0]["score"] != value
    else:
        assert len(predictions) == 10 and all(0.0 < p["score"] < 1.0 for p in predictions)
        assert sum(p["score"] for p in predictions) != pytest.approx(1.0)  # independent sigmoids, not a softmax

    card = (output / "README.md").read_text()
    first = {MULTI_LABEL: "| F1 (macro) |", REGRESSION: "| MSE |"}[problem_type]
    assert first in card and "| Inputs | " in card and "| without audio |" in card and "| Accuracy |" not in card

    listing = run([sys.executable, "-c", f"import huggingface_hub as h; print(*h.list_repo_files('{repo}'))"],
                  {**env, "HF_TOKEN": token})
    assert {"model.safetensors", "config.json", "README.md", "metrics.json"} <= set(listing.stdout.split())
