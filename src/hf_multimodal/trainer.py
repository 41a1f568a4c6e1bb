"""`Trainer` for multimodal classifiers: a learning rate per encoder, frozen encoders kept in eval mode, predictions
for examples without any modality the model reads, and resumption from the last *complete* checkpoint."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from .data_collator import UNAVAILABLE_KEY
from .modeling_multimodal import allow_compiling_recurrent_layers


logger = logging.get_logger(__name__)

FUSION_PART = "fusion"
"""Name of the parameter group of everything outside the encoders: projections, fusion head and classifier."""

def is_complete_checkpoint(folder: str | os.PathLike) -> bool:
    """Whether `folder` is a checkpoint that `Trainer` finished writing.

    `Trainer._save_checkpoint` writes the model, the optimizer and scheduler, the RNG states and, last,
    `trainer_state.json`; a checkpoint whose `trainer_state.json` is there and parses is whole. A run killed while
    saving leaves a folder without it (tests/test_training.py kills a run there and resumes bitwise-identically).
    """
    try:
        json.loads((Path(folder) / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return True


def checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The `checkpoint-<step>` folders of `output_dir`, oldest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [path for path in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if path.is_dir()]
    steps = {path: path.name.rpartition("-")[2] for path in found}
    return sorted((path for path, step in steps.items() if step.isdigit()), key=lambda path: int(steps[path]))


def last_complete_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of `output_dir` (see `is_complete_checkpoint`), or None."""
    complete = [path for path in checkpoints(output_dir) if is_complete_checkpoint(path)]
    return complete[-1] if complete else None


def remove_incomplete_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Delete the checkpoints of `output_dir` that a killed run left half-written; returns them."""
    removed = [path for path in checkpoints(output_dir) if not is_complete_checkpoint(path)]
    for path in removed:
        logger.warning(f"Removing {path}: an interrupted run left it half-written (it has no {TRAINER_STATE_NAME}).")
        shutil.rmtree(path)
    return removed


class SamplerLengthsCallback(TrainerCallback):
    r"""
    Hands the length-grouped sampler (`train_sampling_strategy="group_by_length"`) its lengths as a list. `Trainer`
    gives it `train_dataset[args.length_column_name]`, which `datasets` 4 returns as a lazy `Column`; the sampler
    indexes it row by row every epoch (0.08 ms a row: 0.19 s an epoch on 2,400 examples, where a list takes 0.02 s).
    The lengths are read once, in one pass over the column, when training begins. [`MultimodalTrainer`] adds it.

    Example:

    ```python
    >>> trainer.add_callback(SamplerLengthsCallback())  # doctest: +SKIP
    ```
    """

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        batch_sampler = getattr(train_dataloader, "batch_sampler", None)
        samplers = [
            getattr(train_dataloader, "sampler", None),
            getattr(batch_sampler, "sampler", None),
            getattr(getattr(batch_sampler, "batch_sampler", None), "sampler", None),  # accelerate's shard of it
        ]
        for sampler in samplers:
            lengths = getattr(sampler, "lengths", None)
            if isinstance(lengths, Sequence) and not isinstance(lengths, list):
                sampler.lengths = list(lengths)


class ProgressLineCallback(TrainerCallback):
    r"""
    One line per evaluation, for logs that are not a terminal (CI, `nohup`, files), where tqdm's bars are unreadable:
    how far training is, the time it took and an estimate of the time left, the last training loss and the
    validation metrics. `scripts/train.py` adds it with `--disable_tqdm True`.

    Example:

    ```
    [progress] epoch 3/12, step 225/900 (25%), 0:03:05 elapsed, about 0:09:15 left; loss 0.812, eval_loss 0.745, eval_accuracy 0.771
    ```
    """

    def __init__(self):
        self.started: float | None = None
        self.first_step = 0
        self.last_loss: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started, self.first_step = time.monotonic(), state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.last_loss = float(logs["loss"])

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not state.is_world_process_zero or self.started is None or not state.max_steps:
            return
        elapsed = time.monotonic() - self.started
        done = max(1, state.global_step - self.first_step)
        left = elapsed / done * (state.max_steps - state.global_step)
        parts = [
            f"epoch {round(state.epoch or 0)}/{round(args.num_train_epochs) if args.max_steps <= 0 else '?'}",
            f"step {state.global_step}/{state.max_steps} ({state.global_step / state.max_steps:.0%})",
            f"{datetime.timedelta(seconds=round(elapsed))} elapsed",
            f"about {datetime.timedelta(seconds=round(left))} left",
        ]
        values = [f"loss {self.last_loss:.3f}"] if self.last_loss is not None else []
        values += [
            f"{name} {value:.3f}" for name, value in (metrics or {}).items()
            if isinstance(value, float) and not name.endswith(("runtime", "per_second"))
        ]
        print(f"[progress] {', '.join(parts)}; {', '.join(values)}", flush=True)


def encoder_part(model: torch.nn.Module, part: str) -> torch.nn.Module:
    """The submodule that a `"<modality>.<submodule>"` key of `MultimodalTrainer`'s `learning_rates` names, e.g.
    `"audio.frontend.feature_encoder"` in the audio encoder; an error naming the encoder's modules otherwise.

    Example:

    ```python
    >>> encoder_part(model, "audio.frontend.feature_encoder")  # the speech_embedding stack  # doctest: +SKIP
    ```"""
    modality, _, path = part.partition(".")
    config = model.config
    if modality not in config.modalities:
        raise ValueError(
            f"learning_rates names {part!r}, but the model reads {list(config.modalities)}: name a part of one of "
            "their encoders or leave it out."
        )
    encoder = model.get_encoder(modality)
    try:
        return encoder.get_submodule(path)
    except AttributeError:
        children = [name for name, _ in encoder.named_children()]
        raise ValueError(
            f"learning_rates names {part!r}, but the {modality} encoder ({type(encoder).__name__}) has no submodule "
            f"{path!r}: its modules are {children} (nested ones as 'frontend.feature_encoder')."
        ) from None


class MultimodalTrainer(Trainer):
    r"""
    `Trainer` with a learning rate per encoder and for the fusion part, frozen encoders kept in eval mode, and
    predictions for examples the model cannot read. It overrides public `Trainer` methods only.

    Its length-grouped sampler reads the lengths from a list ([`SamplerLengthsCallback`]), not row by row.
    `train(resume_from_checkpoint=True)` resumes from the newest *complete* checkpoint and deletes half-written ones
    (a run killed while saving leaves one; `Trainer` alone would pick it and fail, or resume from a partial state).

    Args:
        learning_rates (`Mapping[str, float | None]`, *optional*):
            Learning rate of the `"text"`, `"image"` and `"audio"` encoders and of the `"fusion"` part (projections,
            fusion head, classifier); missing or `None` entries use `args.learning_rate`, for the fusion part of a
            classifier at most its head's `max_learning_rate` (3e-4 for `"transformer"`, no limit for the others).
            A `"<modality>.<submodule>"` entry sets the rate of one part of an encoder, the rest of the encoder keeping
            the modality's (discriminative fine-tuning: e.g. `{"audio": 3e-3, "audio.frontend.feature_encoder": 3e-4}`
            fine-tunes a pretrained stack gently under layers that learn fast); `None` there means the modality's.
        frozen_modalities (`Sequence[str]`, *optional*):
            Encoders that are not trained: their parameters must have `requires_grad=False`; they stay in eval mode
            (no dropout, frozen batch-norm statistics) while the rest trains.
        label_prior (`torch.Tensor`, *optional*):
            What the training set says without any input, as `config.problem_type` reads it: `(num_labels,)` class
            frequencies (single-label), `(num_labels,)` per-label frequencies (multi-label) or `(1,)` the mean target
            (regression). Examples flagged `unavailable` by the collator (none of the model's modalities) get the
            logits of that best guess without input: `log(prior)`, `logit(prior)` or the mean. Defaults to uniform
            class frequencies, frequencies of 0.5 and a mean of 0.
        Other arguments: as `Trainer`.

    Example:

    ```python
    >>> trainer = MultimodalTrainer(
    ...     model=model, args=MultimodalTrainingArguments("out"), train_dataset=train, eval_dataset=validation,
    ...     data_collator=MultimodalDataCollator(processor, model.config.modalities), processing_class=processor,
    ...     learning_rates={"audio": 3e-3}, frozen_modalities=["text"],
    ... )  # doctest: +SKIP
    >>> trainer.train()  # doctest: +SKIP
    ```
    """

    def __init__(
        self,
        *args,
        learning_rates: Mapping[str, float | None] | None = None,
        frozen_modalities: Sequence[str] = (),
        label_prior: torch.Tensor | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.add_callback(SamplerLengthsCallback())
        if self.args.torch_compile and self.model is not None:
            allow_compiling_recurrent_layers(self.model)
        self.learning_rates = dict(learning_rates or {})
        self.frozen_modalities = tuple(m for m in frozen_modalities if m in self.model.config.modalities)
        for part in self.learning_rates:  # checked here, before training
            if "." in part:
                encoder_part(self.model, part)
        config = self.model.config
        if config.problem_type == "regression":
            self.fallback_logits = (label_prior if label_prior is not None else torch.zeros(config.num_labels)).float()
        elif config.problem_type == "multi_label_classification":
            prior = label_prior if label_prior is not None else torch.full((config.num_labels,), 0.5)
            self.fallback_logits = torch.logit(prior.double(), eps=1e-12).float()
        else:
            prior = label_prior if label_prior is not None else torch.full((config.num_labels,), 1.0 / config.num_labels)
            self.fallback_logits = torch.log(prior.clamp(min=1e-12)).float()

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """`Trainer.train`; `resume_from_checkpoint=True` takes the newest complete checkpoint of `args.output_dir`
        and removes half-written ones."""
        if resume_from_checkpoint is True:
            if self.args.should_save:
                remove_incomplete_checkpoints(self.args.output_dir)
            self.accelerator.wait_for_everyone()
            last = last_complete_checkpoint(self.args.output_dir)
            if last is None:
                raise ValueError(f"resume_from_checkpoint=True: {self.args.output_dir} holds no complete checkpoint.")
            resume_from_checkpoint = str(last)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """The optimizer of `args.optim` with one parameter group per encoder and one for the fusion part (each split
        into weight-decay and no-decay parameters as `Trainer` does)."""
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            unwrapped = self.accelerator.unwrap_model(opt_model)
            owner = {id(p): m for m in unwrapped.config.modalities for p in unwrapped.get_encoder(m).parameters()}
            for part in (part for part in self.learning_rates if "." in part):  # a part's rate wins over its encoder's
                owner.update({id(p): part for p in encoder_part(unwrapped, part).parameters()})
            decay = set(self.get_decay_parameter_names(opt_model))
            groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
            for name, parameter in opt_model.named_parameters():
                if parameter.requires_grad:
                    groups.setdefault((owner.get(id(parameter), FUSION_PART), name in decay), []).append(parameter)
            # the fusion head's limit, where a classifier learns from it (contrastive alignment trains the bare
            # `MultimodalModel`, whose loss reads the projections, not the head)
            fusion = getattr(unwrapped.base_model, "fusion", None) if unwrapped.base_model is not unwrapped else None
            head_limit = getattr(fusion, "max_learning_rate", None) or self.args.learning_rate
            fusion_default = min(self.args.learning_rate, head_limit)
            param_groups = [
                {
                    "params": parameters,
                    "weight_decay": self.args.weight_decay if decays else 0.0,
                    "lr": self.learning_rates.get(part)
                    or self.learning_rates.get(part.partition(".")[0])
                    or (fusion_default if part == FUSION_PART else self.args.learning_rate),
                }
                for (part, decays), parameters in groups.items()
            ]
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return super().create_optimizer(model)

    def create_model_card(self, *args, **kwargs) -> None:
        """Keeps the card of this package in `output_dir/README.md` (written by [`ModelCardCallback`] during training
        and with the test results at the end of `scripts/train.py`) instead of transformers' generic one."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        unavailable = inputs.pop(UNAVAILABLE_KEY, None)
        if unavailable is not None and bool(unavailable.any()):
            raise ValueError(
                "a training batch holds examples with none of the model's modalities: drop them from the training "
                "set (scripts/train.py does) or add a modality they have."
            )
        if model.training:
            unwrapped = self.accelerator.unwrap_model(model)
            for modality in self.frozen_modalities:
                unwrapped.get_encoder(modality).eval()
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """`Trainer.prediction_step`, where examples flagged `unavailable` get the label-prior logits and the loss is
        the model's loss (cross-entropy, binary cross-entropy or MSE) over the whole batch."""
        unavailable = inputs.pop(UNAVAILABLE_KEY, None)
        if unavailable is None:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        labels = inputs.pop("labels")
        logits = self.fallback_logits.to(labels.device).expand(len(labels), -1).clone()
        keep = ~unavailable.to(labels.device)
        if bool(keep.any()):  # the collator gave model inputs for the kept rows only
            _, kept_logits, _ = super().prediction_step(
                model, {**inputs, "labels": labels[keep]}, False, ignore_keys=ignore_keys
            )
            logits[keep] = kept_logits.to(labels.device, logits.dtype)
        unwrapped = self.accelerator.unwrap_model(model)
        loss = unwrapped.loss_function(labels, logits, unwrapped.config)
        return (loss, None, None) if prediction_loss_only else (loss, logits, labels)


__all__ = [
    "FUSION_PART",
    "MultimodalTrainer",
    "ProgressLineCallback",
    "SamplerLengthsCallback",
    "encoder_part",
    "is_complete_checkpoint",
    "last_complete_checkpoint",
    "remove_incomplete_checkpoints",
]
