"""Metrics of every problem type (single-label, multi-label, regression) and the `compute_metrics` function `Trainer`
calls; single-label metrics also as an `evaluate.Metric` (offline).

Needs the `[train]` extra (evaluate, datasets, scikit-learn).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import datasets
import evaluate
import numpy as np
import torch

from .modeling_multimodal import scores_from_logits


METRIC_NAMES: dict[str, str] = {
    "accuracy": "Accuracy",
    "precision": "Precision (macro)",
    "recall": "Recall (macro)",
    "f1": "F1 (macro)",
    "f1_macro": "F1 (macro)",
    "f1_micro": "F1 (micro)",
    "map": "mAP (mean average precision)",
    "mse": "MSE",
    "mae": "MAE",
    "r2": "R^2",
    "pearson": "Pearson r",
}
"""Every metric the package reports (in `metrics.json`, results tables and model cards), with its display name."""

PROBLEM_TYPE_METRICS: dict[str, tuple[str, ...]] = {
    "single_label_classification": ("accuracy", "precision", "recall", "f1"),
    "multi_label_classification": ("f1_macro", "f1_micro", "map"),
    "regression": ("mse", "mae", "r2", "pearson"),
}
"""The metrics of each `config.problem_type`."""

HEADLINE_METRICS: dict[str, tuple[str, str]] = {
    "single_label_classification": ("accuracy", "f1"),
    "multi_label_classification": ("f1_macro", "map"),
    "regression": ("mse", "r2"),
}
"""The two metrics of each problem type that summarise a result (per-modality ablation of the model card), the
first one leading."""

LOWER_IS_BETTER: frozenset[str] = frozenset({"loss", "mse", "mae"})
"""Metrics where smaller is better (`greater_is_better=False` when one selects the best model)."""

RETRIEVAL_RANKINGS: dict[str, str] = {"retrieval": "", "retrieval_query_bank": ", query bank"}
"""The rankings an aligned model's evaluation reports in `metrics.json` (by cosine similarity; with a query bank, see
`GalleryIndex.search`), each with the suffix its rows of a results table carry."""


def retrieval_recalls(results: Mapping[str, Any]) -> Iterator[tuple[str, float, float | None]]:
    """
    The retrieval rows of one split of an aligned model's `metrics.json`, every ranking of `RETRIEVAL_RANKINGS`:
    `(name, recall@1, wider recall)`, the name a direction with its ranking's suffix, the wider recall recall@5 (or
    recall@k of a gallery of k < 5 items; None without one).

    Example:

    ```python
    >>> list(retrieval_recalls({"retrieval_query_bank": {"audio_to_image": {"recall@1": 0.9, "recall@5": 0.97}}}))
    [('audio_to_image, query bank', 0.9, 0.97)]
    ```
    """
    for ranking, suffix in RETRIEVAL_RANKINGS.items():
        for direction, scores in (results.get(ranking) or {}).items():
            wider = (value for key, value in scores.items() if key.startswith("recall@") and key != "recall@1")
            yield direction + suffix, scores["recall@1"], next(wider, None)


DEFAULT_MULTI_LABEL_THRESHOLD = 0.5
"""A multi-label prediction holds every label whose sigmoid score is at least this."""


def problem_type_metrics(problem_type: str | None) -> tuple[str, ...]:
    """The metric names of `problem_type` (`None`: single-label classification, as transformers infers it)."""
    problem_type = problem_type or "single_label_classification"
    if problem_type not in PROBLEM_TYPE_METRICS:
        raise ValueError(f"problem_type must be one of {', '.join(PROBLEM_TYPE_METRICS)}; got {problem_type!r}.")
    return PROBLEM_TYPE_METRICS[problem_type]


class ClassificationMetrics(evaluate.Metric):
    """Accuracy and macro-averaged precision, recall and F1 of single-label predictions, as an `evaluate` metric
    that runs offline (`evaluate.load("accuracy")` would fetch a script from the Hub).

    Example:

    ```python
    >>> ClassificationMetrics(keep_in_memory=True).compute(predictions=[0, 1, 1], references=[0, 1, 0], num_labels=2)
    {'accuracy': 0.666..., 'precision': 0.75, 'recall': 0.75, 'f1': 0.666...}
    ```
    """

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Accuracy and macro-averaged precision, recall and F1 (scikit-learn).",
            citation="",
            inputs_description="predictions and references: class indices; num_labels: number of classes.",
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, num_labels: int | None = None) -> dict[str, float]:
        from sklearn.metrics import accuracy_score, precision_recall_fscore_support

        classes = list(range(num_labels)) if num_labels else sorted(set(references) | set(predictions))
        precision, recall, f1, _ = precision_recall_fscore_support(
            references, predictions, labels=classes, average="macro", zero_division=0
        )
        return {
            "accuracy": float(accuracy_score(references, predictions)),
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
        }


def multi_label_metrics(
    scores: np.ndarray, references: np.ndarray, threshold: float = DEFAULT_MULTI_LABEL_THRESHOLD
) -> dict[str, float]:
    """Micro and macro F1 of the labels whose score is at least `threshold`, and the mean average precision (mAP:
    scikit-learn's `average_precision_score` per label, averaged over the labels that have a positive example; NaN
    when none has one), of multi-label predictions.

    Args:
        scores (`np.ndarray` of shape `(num_examples, num_labels)`): Sigmoid scores.
        references (`np.ndarray` of shape `(num_examples, num_labels)`): Multi-hot targets (0 / 1).
        threshold (`float`, *optional*, defaults to 0.5): Score from which a label counts as predicted.

    Example:

    ```python
    >>> multi_label_metrics(np.array([[0.9, 0.2], [0.6, 0.7]]), np.array([[1, 0], [0, 1]]))
    {'f1_macro': 0.833..., 'f1_micro': 0.8, 'map': 1.0}
    ```
    """
    from sklearn.metrics import average_precision_score, f1_score

    references = np.asarray(references) >= 0.5
    predicted = np.asarray(scores) >= threshold
    with_positives = references.any(axis=0)
    average_precision = (
        average_precision_score(references[:, with_positives], np.asarray(scores)[:, with_positives], average="macro")
        if with_positives.any()
        else float("nan")
    )
    return {
        "f1_macro": float(f1_score(references, predicted, average="macro", zero_division=0)),
        "f1_micro": float(f1_score(references, predicted, average="micro", zero_division=0)),
        "map": float(average_precision),
    }


def regression_metrics(predictions: np.ndarray, references: np.ndarray) -> dict[str, float]:
    """Mean squared error, mean absolute error, coefficient of determination (R^2) and Pearson correlation of
    regression predictions (Pearson r is NaN when either side is constant).

    Example:

    ```python
    >>> regression_metrics(np.array([1.0, 2.0, 4.0]), np.array([1.0, 3.0, 4.0]))
    {'mse': 0.333..., 'mae': 0.333..., 'r2': 0.785..., 'pearson': 0.928...}
    ```
    """
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    predictions, references = np.asarray(predictions, dtype=np.float64), np.asarray(references, dtype=np.float64)
    constant = predictions.std() == 0 or references.std() == 0
    return {
        "mse": float(mean_squared_error(references, predictions)),
        "mae": float(mean_absolute_error(references, predictions)),
        "r2": float(r2_score(references, predictions)),
        "pearson": float("nan") if constant else float(np.corrcoef(predictions, references)[0, 1]),
    }


def metrics_function(
    num_labels: int,
    problem_type: str | None = None,
    multi_label_threshold: float = DEFAULT_MULTI_LABEL_THRESHOLD,
) -> Callable:
    """A `compute_metrics` for `Trainer` that reports the metrics of `problem_type` (`PROBLEM_TYPE_METRICS`):
    [`ClassificationMetrics`] of the argmax of the logits for single-label classification,
    [`multi_label_metrics`] of their sigmoid for multi-label classification, [`regression_metrics`] of the logits
    themselves for regression.

    Example:

    ```python
    >>> trainer = Trainer(..., compute_metrics=metrics_function(num_labels=10))  # doctest: +SKIP
    >>> trainer = Trainer(..., compute_metrics=metrics_function(10, "multi_label_classification", 0.4))  # doctest: +SKIP
    ```
    """
    problem_type = problem_type or "single_label_classification"
    problem_type_metrics(problem_type)  # checks the name
    if not 0.0 < multi_label_threshold < 1.0:
        raise ValueError(f"the multi-label threshold must be in (0, 1), got {multi_label_threshold}.")
    metric = ClassificationMetrics(keep_in_memory=True)

    def compute_metrics(eval_prediction) -> dict[str, float]:
        predictions = eval_prediction.predictions
        logits = np.asarray(predictions[0] if isinstance(predictions, tuple) else predictions)
        references = np.asarray(eval_prediction.label_ids)
        if problem_type == "regression":
            return regression_metrics(logits.reshape(-1), references.reshape(-1))
        if problem_type == "multi_label_classification":
            scores = scores_from_logits(torch.from_numpy(logits.astype(np.float32)), "sigmoid").numpy()
            return multi_label_metrics(scores, references, multi_label_threshold)
        return metric.compute(predictions=logits.argmax(-1), references=references, num_labels=num_labels)

    return compute_metrics


__all__ = [
    "DEFAULT_MULTI_LABEL_THRESHOLD",
    "HEADLINE_METRICS",
    "LOWER_IS_BETTER",
    "METRIC_NAMES",
    "PROBLEM_TYPE_METRICS",
    "ClassificationMetrics",
    "metrics_function",
    "multi_label_metrics",
    "problem_type_metrics",
    "regression_metrics",
]
