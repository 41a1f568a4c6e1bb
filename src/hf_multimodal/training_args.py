"""`TrainingArguments` of multimodal classifiers: defaults that suit raw multimodal columns, early stopping, and a
pickled form without the Hub token."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainingArguments

from .model_card import without_local_paths


def _training_default(name: str, default: Any) -> Any:
    """A field of `TrainingArguments` with another default, keeping its help text."""
    return field(default=default, metadata=TrainingArguments.__dataclass_fields__[name].metadata)


@dataclass
class MultimodalTrainingArguments(TrainingArguments):
    """`TrainingArguments` with defaults for multimodal training (evaluate and save every epoch, keep the best model
    by validation loss, early stopping, raw columns kept for the collator) and the early-stopping settings.

    Model selection and early stopping follow the validation loss by default: accuracy on a small validation split
    ties often, and `Trainer` keeps the first of tied evaluations (only a strict improvement counts), so a run could
    stop early on a plateau of accuracy while the loss still improves. Pass `--metric_for_best_model accuracy` for
    accuracy, and `--early_stopping_threshold` for the least improvement that counts.

    Example:

    ```python
    >>> args = MultimodalTrainingArguments("outputs/run", num_train_epochs=10, early_stopping_patience=2)
    >>> args.metric_for_best_model, args.greater_is_better, args.remove_unused_columns
    ('loss', False, False)
    ```
    """

    eval_strategy: str = _training_default("eval_strategy", "epoch")
    save_strategy: str = _training_default("save_strategy", "epoch")
    logging_steps: float = _training_default("logging_steps", 20)
    load_best_model_at_end: bool = _training_default("load_best_model_at_end", True)
    metric_for_best_model: str | None = _training_default("metric_for_best_model", "loss")
    save_total_limit: int | None = _training_default("save_total_limit", 2)
    remove_unused_columns: bool = _training_default("remove_unused_columns", False)
    ddp_find_unused_parameters: bool | None = _training_default("ddp_find_unused_parameters", True)
    early_stopping_patience: int = field(
        default=3,
        metadata={"help": "Stop after this many evaluations without improvement of --metric_for_best_model (0: off)."},
    )
    early_stopping_threshold: float = field(
        default=0.0, metadata={"help": "Minimum improvement that resets the early-stopping patience."}
    )

    def __post_init__(self):
        if self.remove_unused_columns:
            raise ValueError(
                "--remove_unused_columns True would drop the raw text / image / audio columns before the collator "
                "turns them into model inputs: leave it False (the default of this script)."
            )
        if self.early_stopping_patience < 0:
            raise ValueError(f"--early_stopping_patience must be >= 0, got {self.early_stopping_patience}.")
        if self.early_stopping_patience and self.eval_strategy == "no":
            raise ValueError(
                "early stopping needs evaluations: set --eval_strategy epoch (or steps), or --early_stopping_patience 0."
            )
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available():
            # `accelerate launch --multi_gpu` (or torchrun) on a machine without GPUs: DDP over gloo on CPU. Without
            # this, every process would train alone as if it were the only one.
            self.use_cpu = True
        super().__post_init__()

    def __getstate__(self) -> dict[str, Any]:
        """Pickled state (`training_args.bin` in the output folder, every checkpoint and Hub upload) without the Hub
        token, which stays in memory only, and without this machine's absolute paths (reduced to their last part)."""
        return {
            name: None if name.endswith("_token") else without_local_paths(value)
            for name, value in self.__dict__.items()
        }


__all__ = ["MultimodalTrainingArguments"]
