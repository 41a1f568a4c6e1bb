"""Classification metrics as an `evaluate.Metric` (offline), and the `compute_metrics` function `Trainer` calls.

Needs the `[train]` extra (evaluate, datasets, scikit-learn).
"""

from __future__ import annotations

from collections.abc import Callable

import datasets
import evaluate
import numpy as np


METRIC_NAMES: dict[str, str] = {
    "accuracy": "Accuracy",
    "precision": "Precision (macro)",
    "recall": "Recall (macro)",
    "f1": "F1 (macro)",
}
"""Every metric the package reports (in `metrics.json`, results tables and model cards), with its display name."""


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


def metrics_function(num_labels: int) -> Callable:
    """A `compute_metrics` for `Trainer`: argmax of the logits, then [`ClassificationMetrics`].

    Example:

    ```python
    >>> trainer = Trainer(..., compute_metrics=metrics_function(num_labels=10))  # doctest: +SKIP
    ```
    """
    metric = ClassificationMetrics(keep_in_memory=True)

    def compute_metrics(eval_prediction) -> dict[str, float]:
        predictions = eval_prediction.predictions
        logits = predictions[0] if isinstance(predictions, tuple) else predictions
        return metric.compute(
            predictions=np.asarray(logits).argmax(-1), references=eval_prediction.label_ids, num_labels=num_labels
        )

    return compute_metrics


__all__ = ["METRIC_NAMES", "ClassificationMetrics", "metrics_function"]
