"""`TrainingArguments` of multimodal classifiers: defaults that suit raw multimodal columns, early stopping, and a
pickled form without the Hub token."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainingArguments

from .metrics import LOWER_IS_BETTER
from .model_card import without_local_paths


BF16_CPU_FLAGS: tuple[str, ...] = ("avx512_bf16", "amx_bf16", "bf16")
"""`/proc/cpuinfo` flags of bfloat16 arithmetic in hardware (x86 AVX512-BF16 and AMX, Arm BF16)."""


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str] | None:
    """The feature flags of this CPU (the `flags` / `Features` lines of `cpuinfo`); None where they cannot be read
    (another OS)."""
    try:
        with open(cpuinfo) as file:
            return {flag for line in file if line.startswith(("flags", "Features")) for flag in line.split()}
    except OSError:
        return None


def cpu_has_bf16_units(cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    """Whether this CPU computes bfloat16 in hardware (`BF16_CPU_FLAGS`); None where its flags cannot be read.
    Without such units torch emulates bfloat16 in software: on this project's demo model, inference in bfloat16 took
    7x the CPU time of float32 on an AMD EPYC without them (same accuracy).

    Example:

    ```python
    >>> cpu_has_bf16_units()  # doctest: +SKIP
    False
    ```
    """
    flags = cpu_flags(cpuinfo)
    return None if flags is None else bool(flags & set(BF16_CPU_FLAGS))


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
    accuracy, and `--early_stopping_threshold` for the least improvement that counts. Error metrics (`mse`, `mae`: see
    `metrics.LOWER_IS_BETTER`) are selected with `greater_is_better=False` unless it is given.

    `dataloader_num_workers` keeps `Trainer`'s default, 0. With `--dataloader_num_workers N` the collator (decoding,
    resampling, the processor) runs in N worker processes with one torch thread each, and batches, their order and
    the trained weights stay the same; but on 2 CPU cores workers did not make the demo faster (loading is 13% of a
    step's CPU time there, and every epoch and evaluation pays the workers' start-up): see the README ("Decoding in
    workers"). Use them where cores are spare (more cores than torch threads, or a GPU to feed).

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
        if self.greater_is_better is None and (self.metric_for_best_model or "").removeprefix("eval_") in LOWER_IS_BETTER:
            self.greater_is_better = False  # transformers would take any metric but a "loss" as greater-is-better
        if self.bf16 and (self.use_cpu or not torch.accelerator.is_available()):
            if cpu_has_bf16_units() is False:
                raise ValueError(
                    "--bf16 on a CPU without bfloat16 units (no avx512_bf16 / amx_bf16 flag in /proc/cpuinfo): torch "
                    "would emulate bfloat16 in software, about 7x slower than float32 here. Drop --bf16, or train on "
                    "a GPU or a CPU with AMX / AVX512-BF16."
                )
            # the CPU is all there is: say so, or transformers refuses bf16 without a GPU ("You need to assign use_cpu")
            self.use_cpu = True
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


__all__ = ["MultimodalTrainingArguments", "cpu_flags", "cpu_has_bf16_units"]
